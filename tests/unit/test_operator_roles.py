"""Operators as pure code: role order, tenant scope, password and token handling, event keys."""

from __future__ import annotations

import pytest

from aftercare.events.envelope import envelope_for
from aftercare.events.operators import (
    OPERATOR_EVENTS_TENANT,
    Operator,
    OperatorRemoved,
    OperatorUpserted,
    Role,
    hash_password,
    new_operator_token,
    password_matches,
    token_digest,
)


@pytest.mark.parametrize(
    ("role", "allowed"),
    [
        (Role.VIEWER, {Role.VIEWER}),
        (Role.RESPONDER, {Role.VIEWER, Role.RESPONDER}),
        (Role.ADMIN, {Role.VIEWER, Role.RESPONDER, Role.ADMIN}),
    ],
)
def test_each_role_includes_exactly_the_roles_below_it(role: Role, allowed: set[Role]) -> None:
    assert {needed for needed in Role if role.includes(needed)} == allowed
    assert role.includes(role.value)  # plain strings work as in require_role("responder")


def test_an_unknown_role_name_is_an_error_not_a_silent_refusal() -> None:
    with pytest.raises(ValueError, match="superuser"):
        Role.ADMIN.includes("superuser")


def upserted(**changes: object) -> OperatorUpserted:
    fields: dict[str, object] = {
        "operator_id": "op-ada",
        "name": "Ada Lovelace",
        "email": "ada@support.example",
        "role": "responder",
    } | changes
    return OperatorUpserted.model_validate(fields)


def test_an_operator_sees_every_tenant_or_only_the_listed_ones() -> None:
    everyone = Operator.from_event(upserted())
    assert everyone.tenants is None and everyone.may_see("acme") and everyone.may_see("globex")
    scoped = Operator.from_event(upserted(all_tenants=False, tenants=["acme"]))
    assert scoped.may_see("acme") and not scoped.may_see("globex")
    nobody = Operator.from_event(upserted(all_tenants=False, tenants=[]))
    assert not nobody.may_see("acme")


def test_a_password_matches_its_argon2_hash_only() -> None:
    stored = hash_password("correct horse battery staple")
    assert stored.startswith("$argon2id$")
    assert stored != hash_password("correct horse battery staple")  # salted
    assert password_matches(stored, "correct horse battery staple")
    assert not password_matches(stored, "Correct horse battery staple")
    assert not password_matches(None, "correct horse battery staple")  # no browser login set
    assert not password_matches("not-a-hash", "anything")


def test_tokens_are_random_and_stored_as_sha256_digests() -> None:
    first, second = new_operator_token(), new_operator_token()
    assert first != second and first.startswith("op_") and len(first) > 40
    assert token_digest(first) == token_digest(first) and len(token_digest(first)) == 64
    assert token_digest(first) != token_digest(second)


def test_operator_events_are_keyed_per_operator_on_the_tenants_topic() -> None:
    for event in (upserted(), OperatorRemoved(operator_id="op-ada")):
        envelope = envelope_for(event, source="intake", tenant_id=OPERATOR_EVENTS_TENANT)
        assert envelope.key == "operator:op-ada"
        assert event.TOPIC == "aftercare.tenants"


def test_every_service_keeps_its_own_operator_directory_consumer_group() -> None:
    # A group shared by services splits the tenants topic's partitions between them, and each
    # service would know only the operators keyed to its share (seen in `make run`: 401 for a
    # fresh operator token at remediation while triage knew it).
    from aftercare.events.runtime import ServiceRuntime
    from aftercare.events.settings import ServiceSettings

    groups = []
    for name in ("triage", "remediation", "notifier"):
        runtime = ServiceRuntime(ServiceSettings(service_name=name))
        runtime.keep_operator_directory()
        groups.append(runtime.consumer_group_ids())
    directory_groups = [next(group for group in ids if "operator-directory" in group) for ids in groups]
    assert len(set(directory_groups)) == 3
