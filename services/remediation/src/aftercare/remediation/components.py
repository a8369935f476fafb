"""Everything the remediation service's entrypoints use, built once the store and Kafka answer."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from aftercare.events.outbox import OutboxRelay
from aftercare.events.runtime import ServiceRuntime
from aftercare.events.tenant_copy import TenantCopy
from aftercare.remediation.adapters.credentials import CredentialVault
from aftercare.remediation.adapters.executor import SystemCaller
from aftercare.remediation.adapters.store import RemediationStore
from aftercare.remediation.service_layer.escalations import EscalationDesk
from aftercare.remediation.service_layer.runbooks import RunbookLibrary
from aftercare.remediation.service_layer.runs import RunEngine
from aftercare.remediation.service_layer.turns import Turns
from aftercare.remediation.settings import RemediationSettings

log = structlog.stdlib.get_logger("aftercare.remediation")


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class RemediationComponents:
    settings: RemediationSettings
    store: RemediationStore
    tenants: TenantCopy
    vault: CredentialVault
    caller: SystemCaller
    relay: OutboxRelay
    turns: Turns
    escalations: EscalationDesk
    engine: RunEngine
    runbooks: RunbookLibrary

    @classmethod
    def build(cls, runtime: ServiceRuntime, settings: RemediationSettings) -> RemediationComponents:
        store = RemediationStore(runtime.db)
        tenants = TenantCopy(runtime.db)
        vault = CredentialVault(runtime.db, settings.credential_key)
        caller = SystemCaller()
        turns = Turns()
        relay = OutboxRelay(runtime.require_producer(), turn=turns)
        secret_text = settings.link_secret or settings.credential_key
        if secret_text is None:
            log.warning(
                "no AFTERCARE_REMEDIATION_LINK_SECRET or CREDENTIAL_KEY: "
                "acknowledge links work only until this process stops"
            )
            secret_text = secrets.token_hex(32)
        link_secret = hashlib.sha256(b"acknowledge-links:" + secret_text.encode()).digest()
        escalations = EscalationDesk(
            store, relay, turns, utc_now, link_secret, settings.public_base_url, runtime.due_times
        )
        engine = RunEngine(
            store,
            tenants,
            vault,
            caller,
            escalations,
            relay,
            turns,
            utc_now,
            settings.lease_margin_seconds,
            settings.max_concurrent_runs,
        )
        runbooks = RunbookLibrary(store, tenants, utc_now)
        return cls(settings, store, tenants, vault, caller, relay, turns, escalations, engine, runbooks)

    async def close(self) -> None:
        await self.engine.stop()
        await self.caller.close()
