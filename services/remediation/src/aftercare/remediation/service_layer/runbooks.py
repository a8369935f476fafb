"""Use cases of runbooks: save a new version (validated), seed from the repo's files, dry-run."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from aftercare.events.tenant_copy import TenantCopy
from aftercare.remediation.adapters.store import RemediationStore
from aftercare.remediation.domain.runbook import IncidentFacts, Runbook, RunbookInvalid, dry_run, parse_runbook

log = structlog.stdlib.get_logger("aftercare.remediation.runbooks")


class RunbookLibrary:
    def __init__(self, store: RemediationStore, tenants: TenantCopy, clock: Callable[[], datetime]) -> None:
        self._store = store
        self._tenants = tenants
        self._clock = clock

    async def save(self, source: str | dict[str, Any], by: str, name: str | None = None) -> tuple[Runbook, int | None]:
        """Validate and store; the version stored, or None when nothing changed.

        Raises :class:`RunbookInvalid` saying what is wrong.
        """
        runbook = parse_runbook(source)
        if name is not None and runbook.name != name:
            raise RunbookInvalid(
                [{"field": "name", "message": f"the runbook is named {runbook.name!r} but was sent to {name!r}"}]
            )
        text = source if isinstance(source, str) else json.dumps(source, indent=2, default=str)
        version = await self._store.save_runbook(runbook, text, by, self._clock())
        if version is not None:
            log.info("runbook stored", runbook=runbook.name, version=version, by=by)
        return runbook, version

    async def seed(self, directory: Path) -> int:
        """Store each ``*.yaml``/``*.json`` runbook of ``directory`` that differs from the stored one."""
        stored = 0
        files = await asyncio.to_thread(
            lambda: sorted(
                (p, p.read_text()) for pattern in ("*.yaml", "*.yml", "*.json") for p in directory.glob(pattern)
            )
        )
        for path, text in files:
            try:
                _, version = await self.save(text, by=f"seed:{path.name}")
            except RunbookInvalid as error:
                log.error("seed runbook refused", file=str(path), errors=error.errors)
                continue
            stored += version is not None
        return stored

    async def dry_run(self, name: str, incident: IncidentFacts) -> dict[str, Any] | None:
        found = await self._store.current_runbook(name)
        if found is None:
            return None
        runbook, version, _ = found
        tenant = await self._tenants.get(incident.tenant_id)
        system = next((s for s in (tenant.systems if tenant else []) if s.name == incident.system), None)
        probe = system.diagnostic_target.address if system and system.diagnostic_target else None
        plan = dry_run(runbook, incident, system.admin_endpoint if system else None, probe)
        return plan | {"version": version, "dry_run": True}
