"""Use case: diagnose an incident's system, and probe every registered target on its schedule.

Incident diagnosis: after triage, when the affected system has a diagnostic target, its probe
runs (outside the consumer's turn, so a slow probe never stalls the stream) and
DiagnosisCompleted is published from the incident's outbox, with a verdict.

Regular diagnostics: each target is due once per period (its interval, default 60 s, with a
fixed offset per target so targets spread over the period). The period number is the claim:
whoever inserts ``<target>|<period>`` first probes it, so two instances never probe a target
twice in a period, and a restart probes a period it missed at once. After each probe the
target's health moves on (``domain.diagnosis.observe``); a problem to open becomes
ProblemDetected (intake opens an incident, source ``diagnostics``), a cleared one ProblemCleared.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from aftercare.events.envelope import Envelope, envelope_for
from aftercare.events.incidents import Severity
from aftercare.events.tenants import DiagnosticTarget, SupportedSystem, TenantUpserted
from aftercare.events.triage import DiagnosisCompleted, ProbeResult, ProblemCleared, ProblemDetected, TargetProbed
from aftercare.triage.adapters.probes import Prober
from aftercare.triage.adapters.store import TriageIncidents
from aftercare.triage.adapters.targets import TargetStore, health_of
from aftercare.triage.domain.addresses import AllowListError, parse_allowlist
from aftercare.triage.domain.decision import Decision
from aftercare.triage.domain.diagnosis import Clear, Detect, observe, verdict_of
from aftercare.triage.service_layer.triage_incident import SOURCE, derived_id

log = structlog.stdlib.get_logger("aftercare.triage.diagnostics")


def allowlist_of(entries: list[str]) -> list[Any]:
    try:
        return parse_allowlist(entries)
    except AllowListError as error:
        log.warning("tenant probe allow-list unusable; nothing is probed", error=str(error))
        return []


class IncidentDiagnosis:
    def __init__(self, incidents: TriageIncidents, prober: Prober, spawn: Callable[[Awaitable[Any], str], Any]) -> None:
        self.incidents = incidents
        self.prober = prober
        self._spawn = spawn

    async def after_triage(self, tenant: TenantUpserted, document: dict[str, Any], decision: Decision) -> None:
        system = next((s for s in tenant.systems if s.name == decision.system), None)
        if system is None or system.diagnostic_target is None:
            return
        await self.incidents.save(document["_id"], {"$set": {"diagnosis_state": "pending"}})
        self._spawn(self.diagnose(tenant, document["_id"], system, decision.runbook), f"diagnose-{document['_id']}")

    async def diagnose(
        self, tenant: TenantUpserted, incident_id: str, system: SupportedSystem, runbook: str | None
    ) -> None:
        target = system.diagnostic_target
        assert target is not None
        try:
            result = await self.prober.probe(target, allowlist_of(tenant.probe_allowlist))
            verdict, conclusion = verdict_of([result])
            event = DiagnosisCompleted(
                incident_id=incident_id,
                diagnosis_id=derived_id(incident_id, "diagnosis"),
                results=[result],
                conclusion=conclusion,
                suspected_cause=result.detail if verdict == "confirmed_down" else None,
                recommended_runbook=runbook if verdict != "healthy" else None,
                verdict=verdict,
                system=system.name,
            )
            envelope = envelope_for(
                event,
                source=SOURCE,
                tenant_id=tenant.tenant_id,
                incident_id=incident_id,
                event_id=derived_id(incident_id, "diagnosis"),
            )
            await self.incidents.save(incident_id, {"$set": {"diagnosis_state": "done", "verdict": verdict}}, envelope)
            log.info("incident diagnosed", incident_id=incident_id, verdict=verdict)
        except Exception:
            log.exception("diagnosis failed; the recovery pass retries it", incident_id=incident_id)


def phase_of(identifier: str, interval_s: int) -> float:
    """A fixed offset per target inside its period, so 1,000 targets do not all fire at :00."""
    digest = hashlib.sha256(identifier.encode()).digest()
    return (int.from_bytes(digest[:8], "big") % (interval_s * 1000)) / 1000


class RegularDiagnostics:
    def __init__(
        self,
        targets: TargetStore,
        prober: Prober,
        *,
        instance: str | None = None,
        concurrency: int = 200,
        refresh_every_s: float = 5.0,
    ) -> None:
        self.targets = targets
        self.prober = prober
        self.instance = instance or f"{socket.gethostname()}-{id(self):x}"
        self._limit = asyncio.Semaphore(concurrency)
        self._refresh_every_s = refresh_every_s
        self._known: list[dict[str, Any]] = []
        self._loaded = 0.0
        self._next_period: dict[str, int] = {}
        self._running: set[asyncio.Task[None]] = set()
        # For the bench and /metrics: how late probes started against their due time.
        self.drift_s: list[float] = []
        self.probes_run = 0

    async def tick(self, now: datetime | None = None) -> int:
        """Start every probe that is due (each claims its period first); returns how many."""
        clock = time.monotonic()
        if clock - self._loaded >= self._refresh_every_s or not self._known:
            self._known = await self.targets.all()
            self._loaded = clock
        moment = now or datetime.now(UTC)
        epoch = moment.timestamp()
        started = 0
        for document in self._known:
            identifier = document["_id"]
            interval = int(document.get("interval_s") or 60)
            phase = phase_of(identifier, interval)
            period = int((epoch - phase) // interval)
            if self._next_period.get(identifier, period) > period:
                continue
            self._next_period[identifier] = period + 1
            due = period * interval + phase
            # The claim is taken inside the task: a tick never waits on the store, so one slow
            # write cannot delay every other target's start.
            started += 1
            task = asyncio.create_task(self._probe(document, period, due))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        return started

    async def _probe(self, document: dict[str, Any], period: int, due: float) -> None:
        async with self._limit:
            identifier = document["_id"]
            try:
                if not await self.targets.claim(identifier, period, self.instance, datetime.now(UTC)):
                    return  # another instance (or this one before a restart) has this period
                self.drift_s.append(max(0.0, time.time() - due))
                target = DiagnosticTarget.model_validate(document["target"])
                result = await self.prober.probe(target, allowlist_of(document.get("allowlist") or []))
                self.probes_run += 1
                await self.observe(identifier, result)
            except Exception:
                log.exception("scheduled probe failed", target=identifier)

    async def observe(self, identifier: str, result: ProbeResult) -> None:
        document = await self.targets.get(identifier)
        if document is None:
            return
        now = result.at or datetime.now(UTC)
        health, action = observe(health_of(document), result, identifier, now)
        events: list[Envelope[Any]] = []
        if isinstance(action, Detect):
            problem = action.problem
            what = "is down" if problem.kind == "down" else "is much slower than usual"
            event: ProblemDetected | ProblemCleared = ProblemDetected(
                incident_id=problem.incident_id,
                system=document["system"],
                kind=problem.kind,
                title=f"{document['system']} {what}",
                description=f"Regular diagnostics: {action.detail}.",
                severity=Severity.CRITICAL if problem.kind == "down" else Severity.WARNING,
                target=result.target,
                dedup_key=f"diagnostics:{document['system']}:{problem.kind}",
                evidence=[result],
                detected_at=now,
            )
            events.append(self._envelope(event, document, problem.incident_id, "detected"))
            log.warning("problem detected", target=identifier, kind=problem.kind, incident_id=problem.incident_id)
        elif isinstance(action, Clear):
            problem = action.problem
            event = ProblemCleared(
                incident_id=problem.incident_id,
                system=document["system"],
                kind=problem.kind,
                target=result.target,
                detail=f"Regular diagnostics: {action.detail}.",
                cleared_at=now,
            )
            events.append(self._envelope(event, document, problem.incident_id, "cleared"))
            log.info("problem cleared", target=identifier, kind=problem.kind, incident_id=problem.incident_id)
        # Every probe is also a latency sample for the operators' dashboard (its sparkline). It
        # rides in the same write as the new health, and only a detected or cleared problem makes
        # the outbox go out at once: the samples wait for the periodic sweep.
        urgent = bool(events)
        sample = TargetProbed(
            system=document["system"],
            target=result.target,
            probe=result.probe,
            status=result.status,
            latency_ms=result.latency_ms,
            probed_at=now,
        )
        events.append(envelope_for(sample, source=SOURCE, tenant_id=document["tenant_id"]))
        await self.targets.record(identifier, health, result, *events, flush_now=urgent)

    @staticmethod
    def _envelope(event: Any, document: dict[str, Any], incident_id: str, what: str) -> Envelope[Any]:
        return envelope_for(
            event,
            source=SOURCE,
            tenant_id=document["tenant_id"],
            incident_id=incident_id,
            event_id=derived_id(incident_id, what),
        )

    async def drain(self) -> None:
        if self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)

    async def purge_old_claims(self, now: datetime) -> None:
        await self.targets.purge_claims(now - timedelta(hours=2))
