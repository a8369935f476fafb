"""``require_role`` and the operator directory on the real store: each role against each kind of
endpoint, order-safe copies, browser-login passwords.

A small app (viewer, responder and admin endpoints) checks operators against an
``OperatorDirectory`` fed with the same events intake publishes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import httpx
import pytest
import pytest_asyncio
from fastapi import Depends, FastAPI
from pymongo.asynchronous.database import AsyncDatabase

from aftercare.events.envelope import Envelope, envelope_for
from aftercare.events.operators import (
    OPERATOR_EVENTS_TENANT,
    Operator,
    OperatorDirectory,
    OperatorRemoved,
    OperatorUpserted,
    hash_password,
    new_operator_token,
    require_role,
    token_digest,
)
from aftercare.events.web import PROBLEM_JSON, install_problem_handlers

pytestmark = pytest.mark.integration

Database = AsyncDatabase[dict[str, Any]]
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def endpoints_app(directory: OperatorDirectory) -> FastAPI:
    """One endpoint per kind: reading (viewer), acting on incidents (responder), configuring (admin)."""
    app = FastAPI()
    install_problem_handlers(app, service="The test service")
    app.state.operator_directory = directory

    @app.get("/incidents")
    async def watch(operator: Annotated[Operator, Depends(require_role("viewer"))]) -> dict[str, str]:
        return {"seen_by": operator.operator_id}

    @app.post("/approvals/run-1/grant")
    async def approve(operator: Annotated[Operator, Depends(require_role("responder"))]) -> dict[str, str]:
        return {"granted_by": operator.operator_id}

    @app.put("/rules/p1")
    async def configure(operator: Annotated[Operator, Depends(require_role("admin"))]) -> dict[str, str]:
        return {"changed_by": operator.operator_id}

    return app


ENDPOINTS = {
    "viewer": ("GET", "/incidents"),
    "responder": ("POST", "/approvals/run-1/grant"),
    "admin": ("PUT", "/rules/p1"),
}
RANK = {"viewer": 0, "responder": 1, "admin": 2}


def upserted(operator_id: str, role: str, *tokens: str, at: datetime = T0, **changes: Any) -> Envelope[Any]:
    event = OperatorUpserted.model_validate(
        {
            "operator_id": operator_id,
            "name": operator_id.title(),
            "email": f"{operator_id}@support.example",
            "role": role,
            "token_digests": [token_digest(token) for token in tokens],
        }
        | changes
    )
    return envelope_for(event, source="intake", tenant_id=OPERATOR_EVENTS_TENANT, time=at)


def removed(operator_id: str, at: datetime) -> Envelope[Any]:
    return envelope_for(
        OperatorRemoved(operator_id=operator_id), source="intake", tenant_id=OPERATOR_EVENTS_TENANT, time=at
    )


@pytest_asyncio.fixture(loop_scope="session")
async def directory(mongo_db: Database) -> OperatorDirectory:
    copy = OperatorDirectory(mongo_db)
    await copy.ensure_indexes()
    return copy


@pytest_asyncio.fixture(loop_scope="session")
async def http(directory: OperatorDirectory) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=endpoints_app(directory))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_each_role_against_each_kind_of_endpoint(directory: OperatorDirectory, http: httpx.AsyncClient) -> None:
    tokens = {role: new_operator_token() for role in RANK}
    for role, token in tokens.items():
        await directory.apply_upserted(upserted(f"op-{role}", role, token))

    for role, token in tokens.items():
        for needed, (method, path) in ENDPOINTS.items():
            answer = await http.request(method, path, headers=bearer(token))
            if RANK[role] >= RANK[needed]:
                assert answer.status_code == 200, (role, needed, answer.text)
                assert list(answer.json().values()) == [f"op-{role}"]
            else:
                assert answer.status_code == 403, (role, needed, answer.text)
                assert answer.headers["content-type"] == PROBLEM_JSON
                problem = answer.json()
                assert problem["type"].endswith("/role-too-low")
                assert problem["required_role"] == needed and problem["operator_role"] == role
                assert f"needs the {needed} role" in problem["detail"]


@pytest.mark.parametrize(
    ("headers", "title"),
    [
        ({}, "Operator token required"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "Operator token required"),
        ({"Authorization": "Bearer "}, "Operator token required"),
        ({"Authorization": "Bearer op_nobody_has_this_token"}, "Unknown operator token"),
    ],
)
async def test_no_or_unknown_credential_is_401_on_every_kind_of_endpoint(
    http: httpx.AsyncClient, headers: dict[str, str], title: str
) -> None:
    for method, path in ENDPOINTS.values():
        answer = await http.request(method, path, headers=headers)
        assert answer.status_code == 401
        assert answer.headers["content-type"] == PROBLEM_JSON
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert answer.json()["title"] == title


async def test_a_revoked_token_a_deactivated_and_a_removed_operator_are_refused(
    directory: OperatorDirectory, http: httpx.AsyncClient
) -> None:
    kept, revoked = new_operator_token(), new_operator_token()
    await directory.apply_upserted(upserted("op-grace", "admin", kept, revoked, at=T0))
    assert (await http.get("/incidents", headers=bearer(revoked))).status_code == 200

    await directory.apply_upserted(upserted("op-grace", "admin", kept, at=T0 + timedelta(seconds=1)))
    assert (await http.get("/incidents", headers=bearer(revoked))).status_code == 401
    assert (await http.get("/incidents", headers=bearer(kept))).status_code == 200

    await directory.apply_upserted(upserted("op-grace", "admin", kept, at=T0 + timedelta(seconds=2), active=False))
    answer = await http.get("/incidents", headers=bearer(kept))
    assert answer.status_code == 403 and answer.json()["type"].endswith("/operator-deactivated")

    await directory.apply_removed(removed("op-grace", T0 + timedelta(seconds=3)))
    for method, path in ENDPOINTS.values():
        assert (await http.request(method, path, headers=bearer(kept))).status_code == 401


async def test_a_late_older_event_neither_resurrects_nor_downgrades_an_operator(directory: OperatorDirectory) -> None:
    token = new_operator_token()
    first = upserted("op-linus", "viewer", token, at=T0)
    promoted = upserted("op-linus", "admin", token, at=T0 + timedelta(seconds=5))
    await directory.apply_upserted(promoted)
    await directory.apply_upserted(first)  # redelivered late
    operator = await directory.by_token(token)
    assert operator is not None and operator.role == "admin"

    await directory.apply_removed(removed("op-linus", T0 + timedelta(seconds=10)))
    await directory.apply_upserted(promoted)  # a replay of an older upsert after the removal
    assert await directory.by_token(token) is None
    assert await directory.get("op-linus") is None

    # Registered again later (same id): a newer upsert wins over the removal.
    await directory.apply_upserted(upserted("op-linus", "responder", token, at=T0 + timedelta(seconds=20)))
    operator = await directory.by_token(token)
    assert operator is not None and operator.role == "responder"


async def test_browser_login_checks_the_argon2_password_of_the_copy(directory: OperatorDirectory) -> None:
    await directory.apply_upserted(
        upserted("op-ada", "responder", password_hash=hash_password("correct horse battery staple"), at=T0)
    )
    operator = await directory.verify_login(" OP-Ada@Support.example ", "correct horse battery staple")
    assert operator is not None and operator.operator_id == "op-ada" and operator.active
    assert await directory.verify_login("op-ada@support.example", "correct horse battery staple") is not None
    assert await directory.verify_login("op-ada@support.example", "wrong horse") is None
    assert await directory.verify_login("nobody@support.example", "correct horse battery staple") is None

    # A changed email moves the login; the old one stops working.
    await directory.apply_upserted(
        upserted(
            "op-ada",
            "responder",
            email="ada.l@support.example",
            password_hash=hash_password("correct horse battery staple"),
            at=T0 + timedelta(seconds=1),
        )
    )
    assert await directory.verify_login("op-ada@support.example", "correct horse battery staple") is None
    assert await directory.verify_login("ada.l@support.example", "correct horse battery staple") is not None
