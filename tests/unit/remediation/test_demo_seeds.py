"""The demo tenant's remediation set-up seeded from infra/seed at start-up: acme's escalation
policy and its demo system's credential, stored only where nothing is stored yet."""

from __future__ import annotations

import json
import re
import shlex
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

from aftercare.events.remediation import EscalationContact
from aftercare.events.testing import MemoryDatabase
from aftercare.remediation.adapters.credentials import CredentialVault
from aftercare.remediation.adapters.store import RemediationStore
from aftercare.remediation.domain.escalation import EscalationLevel, EscalationPolicy
from aftercare.remediation.service_layer.tenant_seeds import seed_credentials, seed_escalation_policies

ROOT = Path(__file__).resolve().parents[3]
SEED = ROOT / "infra" / "seed"
T0 = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)


def make_run_exports() -> dict[str, str]:
    text = (ROOT / "Makefile").read_text()
    return dict(re.findall(r"^run: export (\w+) \?= (\S+)$", text, flags=re.MULTILINE))


async def test_acme_gets_the_seeded_policy_paging_a_person_by_email_and_a_stored_one_is_kept() -> None:
    db: Any = MemoryDatabase()
    store = RemediationStore(db)
    directory = ROOT / make_run_exports()["AFTERCARE_REMEDIATION_ESCALATION_POLICY_SEED_DIR"]

    assert await seed_escalation_policies(store, directory, lambda: T0) == 1

    policy = await store.policy("acme")
    assert policy is not None
    first = policy.levels[0]
    assert first.contacts[0].email  # the notifier pages by email: a contact without one is never reached
    assert len(policy.levels) >= 2
    # A second start (or a second instance) changes nothing, and an operator's policy wins.
    assert await seed_escalation_policies(store, directory, lambda: T0) == 0
    mine = EscalationPolicy(levels=[EscalationLevel(contacts=[EscalationContact(name="Me")], ack_timeout_seconds=60)])
    await store.save_policy("acme", mine, "op-admin", T0)
    assert await seed_escalation_policies(store, directory, lambda: T0) == 0
    assert await store.policy("acme") == mine


async def test_the_demo_systems_credential_is_seeded_encrypted_and_matches_the_demo_system() -> None:
    db: Any = MemoryDatabase()
    vault = CredentialVault(db, Fernet.generate_key().decode())
    file = ROOT / make_run_exports()["AFTERCARE_REMEDIATION_CREDENTIAL_SEED_FILE"]
    [seeded] = json.loads(file.read_text())

    assert await seed_credentials(vault, file, lambda: T0) == 1

    stored = await db["system_credentials"].find_one({"_id": "acme|billing-api"})
    assert seeded["bearer_token"] not in json.dumps(stored, default=str)
    assert await vault.bearer_token("acme", "billing-api") == seeded["bearer_token"]
    # The demo customer system `make run` starts wants exactly this token.
    procfile = dict(line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip())
    command = shlex.split(procfile["customer-system"])
    assert command[command.index("--token") + 1] == seeded["bearer_token"]
    # An admin's credential is never overwritten by the seed.
    await vault.store("acme", "billing-api", "rotated", "op-admin", T0)
    assert await seed_credentials(vault, file, lambda: T0) == 0
    assert await vault.bearer_token("acme", "billing-api") == "rotated"
