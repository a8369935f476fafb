"""Everything triage's entrypoints use, built once the store and Kafka are connected."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

from aftercare.events.envelope import Envelope
from aftercare.events.outbox import OutboxRelay
from aftercare.events.runtime import ServiceRuntime
from aftercare.events.tenants import TenantUpserted
from aftercare.triage.adapters.probes import Prober
from aftercare.triage.adapters.rule_store import RuleBook, RuleStore, load_seed_file
from aftercare.triage.adapters.store import FlapHistory, GroupingHeads, TenantDirectory, TriageIncidents
from aftercare.triage.adapters.targets import TargetStore
from aftercare.triage.service_layer.diagnose import IncidentDiagnosis, RegularDiagnostics
from aftercare.triage.service_layer.sla_watch import SlaWatch
from aftercare.triage.service_layer.triage_incident import IncidentTriage
from aftercare.triage.settings import TriageSettings

log = structlog.stdlib.get_logger("aftercare.triage")

DEFAULT_RULES = Path(__file__).parent / "data" / "rules.yaml"


@dataclass
class TriageComponents:
    settings: TriageSettings
    runtime: ServiceRuntime
    tenants: TenantDirectory
    incidents: TriageIncidents
    rule_store: RuleStore
    rules: RuleBook
    triage: IncidentTriage
    prober: Prober
    targets: TargetStore
    diagnosis: IncidentDiagnosis
    regular: RegularDiagnostics
    sla: SlaWatch

    @classmethod
    def build(cls, runtime: ServiceRuntime, settings: TriageSettings) -> TriageComponents:
        database = runtime.db
        relay = OutboxRelay(runtime.require_producer())
        tenants = TenantDirectory(database)
        incidents = TriageIncidents(database, relay, runtime.require_producer())
        rule_store = RuleStore(database)
        rules = RuleBook(rule_store)
        prober = Prober(instance=runtime.holder_id)
        diagnosis = IncidentDiagnosis(incidents, prober, runtime.spawn)
        triage = IncidentTriage(
            incidents, tenants, rules, GroupingHeads(database), FlapHistory(database), on_triaged=diagnosis.after_triage
        )
        targets = TargetStore(database, relay)
        regular = RegularDiagnostics(
            targets, prober, instance=runtime.holder_id, concurrency=settings.probe_concurrency
        )
        sla = SlaWatch(incidents, lambda: runtime.due_times)
        return cls(
            settings, runtime, tenants, incidents, rule_store, rules, triage, prober, targets, diagnosis, regular, sla
        )

    async def sync_targets(self, envelope: Envelope[TenantUpserted]) -> None:
        await self.targets.sync_tenant(envelope.data)

    async def prepare(self) -> None:
        await self.incidents.ensure_indexes()
        await self.targets.ensure_indexes()
        seed = self.settings.rules_seed_file or DEFAULT_RULES
        if await self.rule_store.seed(load_seed_file(seed), datetime.now(UTC)):
            log.info("rules seeded", file=str(seed))
