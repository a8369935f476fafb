"""Seeds for a tenant's remediation set-up, read at start-up like the runbooks: escalation policies
(``infra/seed/escalation-policies/<tenant_id>.yaml``) and the credentials of the tenants' systems.

A seed fills a gap and never overwrites: a tenant whose policy (or a system whose credential) an
operator stored through the API keeps it, and every instance may seed at once (the first insert
wins, the others find it stored).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aftercare.remediation.adapters.credentials import CredentialKeyMissing, CredentialVault
from aftercare.remediation.adapters.store import RemediationStore
from aftercare.remediation.domain.escalation import EscalationPolicy

log = structlog.stdlib.get_logger("aftercare.remediation.seeds")


class SeededCredential(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant_id: str = Field(min_length=1)
    system: str = Field(min_length=1)
    bearer_token: str = Field(min_length=1)


def _read_files(directory: Path) -> list[tuple[Path, str]]:
    return sorted((p, p.read_text()) for pattern in ("*.yaml", "*.yml", "*.json") for p in directory.glob(pattern))


async def seed_escalation_policies(store: RemediationStore, directory: Path, now: Callable[[], datetime]) -> int:
    """Store each ``<tenant_id>.yaml|.json`` policy of ``directory`` for a tenant without one."""
    stored = 0
    for path, text in await asyncio.to_thread(_read_files, directory):
        try:
            policy = EscalationPolicy.model_validate(yaml.safe_load(text))
        except (yaml.YAMLError, ValidationError) as error:
            log.error("seed escalation policy refused", file=str(path), error=str(error))
            continue
        if await store.add_policy_if_none(path.stem, policy, f"seed:{path.name}", now()):
            log.info("escalation policy seeded", tenant_id=path.stem, levels=len(policy.levels))
            stored += 1
    return stored


async def seed_credentials(vault: CredentialVault, file: Path, now: Callable[[], datetime]) -> int:
    """Store each credential of ``file`` (a JSON list) for a system without one."""
    try:
        entries: Any = json.loads(await asyncio.to_thread(file.read_text))
        credentials = [SeededCredential.model_validate(entry) for entry in entries]
    except (OSError, ValueError, TypeError) as error:
        log.error("seed credentials refused", file=str(file), error=str(error))
        return 0
    stored = 0
    for credential in credentials:
        try:
            added = await vault.store_if_none(
                credential.tenant_id, credential.system, credential.bearer_token, f"seed:{file.name}", now()
            )
        except CredentialKeyMissing as error:
            log.error("seed credentials not stored", file=str(file), error=str(error))
            return stored
        if added:
            log.info("system credential seeded", tenant_id=credential.tenant_id, system=credential.system)
            stored += 1
    return stored
