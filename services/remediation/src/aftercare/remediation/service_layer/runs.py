"""Use cases of a run: start one for a triaged incident, drive it step by step, decide approvals.

Each transition is decided by ``domain.run`` and stored in one write guarded by the run's
``rev`` (with the events it announces in the run's outbox); then the events are flushed. The
run's ``next_at`` is its stored due time: while a process works on it, a lease (now + the
step's timeout + a margin); while it sleeps (wait step, retry, approval, queue), when it should
wake. The poller (``entrypoints/scheduled.py``) drives whatever is due, so a run whose process
died is picked up again when its lease runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from prometheus_client import Histogram

from aftercare.events.envelope import Envelope, envelope_for
from aftercare.events.outbox import OutboxRelay
from aftercare.events.remediation import (
    ApprovalGranted,
    ApprovalRejected,
    ApprovalRequested,
    RemediationFailed,
    RemediationNoteAdded,
    RemediationStarted,
    RemediationStepCompleted,
    RemediationSucceeded,
)
from aftercare.events.tenant_copy import TenantCopy
from aftercare.events.tenants import SupportedSystem, TenantUpserted
from aftercare.remediation.adapters.credentials import CredentialKeyMissing, CredentialVault
from aftercare.remediation.adapters.executor import SystemCaller
from aftercare.remediation.adapters.shared_reads import SharedReads
from aftercare.remediation.adapters.store import RemediationStore
from aftercare.remediation.domain import blast_radius
from aftercare.remediation.domain import run as machine
from aftercare.remediation.domain.run import Run
from aftercare.remediation.domain.runbook import IncidentFacts, ParameterRefused, admin_url, applies, filled_params
from aftercare.remediation.domain.verification import judge
from aftercare.remediation.service_layer.escalations import EscalationDesk
from aftercare.remediation.service_layer.turns import Turns

log = structlog.stdlib.get_logger("aftercare.remediation.runs")

# How often a system whose slots are all taken has its holders checked for runs that ended
# without releasing (a crash, a lost reply): a leaked slot is back within this time.
HOLDERS_CHECK_S = 30.0

SOURCE = "remediation"
LEASE_MARGIN_S = 15.0
# Queued runs are woken when a slot frees; this re-check only covers a wake-up lost to a crash.
QUEUE_RECHECK_S = 30.0
# How often a release that knows of no run waiting here asks the store for another instance's.
STORE_QUEUE_CHECK_S = 1.0
TENANT_RECHECK_S = 2.0
TENANT_CACHE_S = 1.0
# A runbook's head (its current version) is read at most this often per process for new runs; a
# change through this process's API is seen at once, through another instance's within this time.
RUNBOOK_CACHE_S = 1.0

STEP_OVERHEAD = Histogram(
    "aftercare_remediation_step_overhead_seconds",
    "Engine time per step beyond the action itself (store writes, events).",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0),
)


class ApprovalProblem(ValueError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def facts_from(document: dict[str, Any]) -> IncidentFacts:
    return IncidentFacts(
        incident_id=document["_id"],
        tenant_id=document["tenant_id"],
        number=document.get("number") or "",
        system=document.get("system") or document.get("reported_system"),
        category=document.get("category"),
        priority=document.get("priority"),
        severity=document.get("severity"),
        source=document.get("source"),
        labels=document.get("labels") or {},
    )


class _DrivePermit:
    """One of the process's drive permits, held by a drive while it works on the store; handed
    back while the run waits on a customer's system (``away``), so runs that wait on slow systems
    never hold up starting and driving the others (the permits bound the store work only)."""

    def __init__(self, permits: asyncio.Semaphore) -> None:
        self._permits = permits
        self._held = False

    async def __aenter__(self) -> _DrivePermit:
        await self._permits.acquire()
        self._held = True
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._held:
            self._held = False
            self._permits.release()

    @contextlib.asynccontextmanager
    async def away(self) -> AsyncIterator[None]:
        if self._held:
            self._held = False
            self._permits.release()
        try:
            yield
        finally:
            # Cancelled while waiting here: not held, so __aexit__ gives nothing back.
            await self._permits.acquire()
            self._held = True


@dataclass
class _Progress:
    """A run being driven: its state in memory, the rev of its last write (None once another writer
    won), and the events of the moves not yet written."""

    run: Run
    rev: int | None
    pending: list[Envelope[Any]] = field(default_factory=list)
    # Its outbox held events when it was read (not this drive's): the next flush publishes all.
    leftover: bool = False
    permit: _DrivePermit | None = None
    # Its stored due time as of its last write or read.
    next_at: datetime | None = None

    def away(self) -> contextlib.AbstractAsyncContextManager[None]:
        """While waiting on a customer's system: the drive permit goes to another run."""
        return self.permit.away() if self.permit is not None else contextlib.nullcontext()


def _slots_key(run: Run) -> str:
    """The key of the run's system's blast-radius slots (and of their turn)."""
    return f"{run.tenant_id}|{run.system or '(no system)'}"


@dataclass
class _SlotMove:
    """A run's admission to (``admit``) or release from its system's slots, waiting to be decided."""

    run: Run
    admit: bool
    answer: asyncio.Future[tuple[Any, datetime]]


class AtMostEvery:
    """Says yes for a key at most once every ``seconds`` (monotonic), for checks too costly to
    make every time they could be made."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._last: dict[str, float] = {}

    def due(self, key: str) -> bool:
        now = time.monotonic()
        if now - self._last.get(key, -self._seconds) < self._seconds:
            return False
        self._last[key] = now
        return True


class RunEngine:
    def __init__(
        self,
        store: RemediationStore,
        tenants: TenantCopy,
        vault: CredentialVault,
        caller: SystemCaller,
        escalations: EscalationDesk,
        relay: OutboxRelay,
        turns: Turns,
        clock: Callable[[], datetime],
        lease_margin_s: float = LEASE_MARGIN_S,
        max_concurrent_drives: int = 64,
        max_admin_calls_in_flight: int = 16,
    ) -> None:
        self._lease_margin_s = lease_margin_s
        # A call to a customer's admin endpoint is recorded as started only once it holds one of
        # these: a call recorded as started is really on its way, not queued behind others. A crash
        # then leaves at most this many not-safe-to-repeat steps that "may have run" (each one
        # escalates to a person); unbounded, 47 runs queued behind one slow system escalated after
        # one kill -9 in the 2,000-incident fault run.
        self._admin_calls = asyncio.Semaphore(max_admin_calls_in_flight)
        # A burst of incidents must not become thousands of runs hammering the store at once.
        self._drives = asyncio.Semaphore(max_concurrent_drives)
        self._store = store
        self._tenants = tenants
        self._vault = vault
        self._caller = caller
        self._escalations = escalations
        self._relay = relay
        self._turns = turns
        self._clock = clock
        self.driving: set[str] = set()
        self._again: set[str] = set()
        # A tenant is kept once known (it may arrive after its first incident: asked again then).
        self._tenant_reads: SharedReads[TenantUpserted | None] = SharedReads(
            tenants.get, keep=lambda tenant: tenant is not None
        )
        self._paused_reads: SharedReads[dict[str, Any] | None] = SharedReads(store.automation_paused)
        # Each system's blast-radius slots as this process last wrote or read them (see _admit).
        self._slots: dict[str, blast_radius.SystemSlots] = {}
        # Slot moves waiting for their system's turn, by tenant|system (see _move_slot).
        self._slot_moves: dict[str, list[_SlotMove]] = {}
        # Whether a system's slot holders still work is asked of the store at most every
        # HOLDERS_CHECK_S: in a burst hundreds of runs wait for a slot, and checking for every one
        # would read every holder's run inside the system's turn, which every admission and
        # release waits for.
        self._holders_check = AtMostEvery(HOLDERS_CHECK_S)
        # Runs whose last drive here ended waiting for a slot: incident id -> (tenant|system,
        # created_at). A release wakes the oldest of its system without asking the store, whose
        # query for queued runs reads every queued run whole (1.7 s each with 400 queued).
        self._waiting: dict[str, tuple[str, datetime]] = {}
        self._store_queue_check = AtMostEvery(STORE_QUEUE_CHECK_S)
        # Runs driven here that may still take a slot (incident id -> tenant|system): created or
        # woken, waiting for a drive permit or the system's turn. A release while one of its
        # system's is among them leaves the freed slot to it without asking the store for
        # another instance's queued runs (in a burst most runs wait for a drive permit, not in
        # ``_waiting``, and the query read every queued run whole, once a second per system).
        self._starting: dict[str, str] = {}
        # The due time of every run this process last wrote (incident id -> next_at): the poller
        # wakes these from memory (``due_here``) and asks the store only now and then, for runs
        # another instance left (killed) or this process wrote before a restart. The store's
        # query reads every open run whole (it cannot use an index for a range on next_at).
        self._due: dict[str, datetime] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # --- starting ------------------------------------------------------------------------

    async def consider(
        self, incident_id: str, caused_by: Envelope[Any] | None = None, document: dict[str, Any] | None = None
    ) -> str:
        """Start the incident's run if triage named a runbook and both halves of the incident are
        known; at most one run per incident, however often this is called. Returns what happened.

        ``document``: the incident as remediation knows it, when the caller has just written it.
        """
        if document is None:
            document = await self._store.incident(incident_id)
        if not document or not document.get("reported") or not document.get("triaged"):
            return "waiting for the incident's other half"
        name = document.get("runbook")
        if not name:
            return "no runbook named"
        facts = facts_from(document)
        # No read of the run first: its insert below refuses a second one. Only before escalating
        # is the run looked for, so that a redelivered triage never pages people about an incident
        # whose run exists (its runbook may have changed since).
        found = await self._store.current_runbook(name, max_age_s=RUNBOOK_CACHE_S)
        if found is None:
            if await self._store.load_run(incident_id) is not None:
                return "run exists"
            await self._escalations.escalate(
                "triage", facts, f"triage named runbook {name!r}, which does not exist", caused_by=caused_by
            )
            return "runbook missing"
        runbook, version, _ = found
        mismatch = applies(runbook, facts)
        if mismatch is not None:
            if await self._store.load_run(incident_id) is not None:
                return "run exists"
            await self._escalations.escalate(
                "triage", facts, f"runbook {name} does not apply to this incident: {mismatch}", caused_by=caused_by
            )
            return "runbook does not apply"
        now = self._clock()
        run = Run(
            run_id=f"run-{uuid.uuid4()}",
            incident=facts,
            runbook=runbook,
            runbook_version=version,
            status="queued",
            created_at=now,
            queued_at=now,
        )
        events: list[Envelope[Any]] = []
        # Driven by this process at once (below): the due time is its lease, so another instance's
        # poller leaves the run alone unless this process dies first.
        next_at = now + timedelta(seconds=self._lease_margin_s)
        if runbook.approval.required:
            run = machine.request_approval(run, str(uuid.uuid4()), now)
            assert run.approval is not None
            next_at = run.approval.expires_at
            events.append(
                self._event(
                    run,
                    ApprovalRequested(
                        incident_id=incident_id,
                        run_id=run.run_id,
                        approval_id=run.approval.approval_id,
                        step=runbook.steps[0].name,
                        reason=f"runbook {runbook.name} needs a person's approval before it runs",
                        expires_at=run.approval.expires_at,
                        runbook=runbook.name,
                        approvers=run.approval.approvers,
                    ),
                    caused_by,
                )
            )
        if not await self._store.insert_run(run, next_at, events):
            return "run exists"
        self._due[incident_id] = next_at
        if events:
            async with self._turns(incident_id):
                await self._relay.flush(self._store.runs, incident_id)
        log.info("run created", incident_id=incident_id, runbook=runbook.name, status=run.status)
        if run.status == "queued":
            # Driven in the background: a handler never waits for a customer's system. From the run
            # as inserted (rev 1): reading it back would only return what we wrote.
            self._starting[incident_id] = _slots_key(run)
            self.spawn_drive(incident_id, now=True, start=(_Progress(run, 1), next_at))
        return "run started" if run.status != "awaiting_approval" else "awaiting approval"

    def _event(self, run: Run, data: Any, caused_by: Envelope[Any] | None = None) -> Envelope[Any]:
        return envelope_for(
            data,
            source=SOURCE,
            tenant_id=run.tenant_id,
            incident_id=run.incident.incident_id,
            caused_by=caused_by,
        )

    # --- driving -------------------------------------------------------------------------

    def spawn_drive(
        self, incident_id: str, *, now: bool = False, start: tuple[_Progress, datetime | None] | None = None
    ) -> None:
        if incident_id in self.driving:
            if now:
                # It is being advanced right now, perhaps from a state read before this wake-up
                # (a slot freed): advance it once more when that ends.
                self._again.add(incident_id)
            return
        task = asyncio.create_task(self.drive(incident_id, now=now, start=start))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def drive(
        self, incident_id: str, *, now: bool = False, start: tuple[_Progress, datetime | None] | None = None
    ) -> None:
        """Advance the run as far as it can go; safe to call any time, from any instance.

        ``now``: do not wait for its due time (a slot was just freed, an approval just given).
        ``start``: the run as this process just wrote it, and its due time (not read again).
        """
        self.driving.add(incident_id)
        woken = self._waiting.pop(incident_id, None)
        if woken is not None:
            self._starting[incident_id] = woken[0]
        try:
            async with _DrivePermit(self._drives) as permit, self._turns(incident_id):
                await self._drive(incident_id, now, start, permit)
        except Exception:
            log.exception("run could not advance; it is retried when due", incident_id=incident_id)
        finally:
            self.driving.discard(incident_id)
            self._starting.pop(incident_id, None)
            if incident_id in self._again:
                self._again.discard(incident_id)
                self.spawn_drive(incident_id, now=True)

    async def _drive(
        self,
        incident_id: str,
        early: bool,
        start: tuple[_Progress, datetime | None] | None = None,
        permit: _DrivePermit | None = None,
    ) -> None:
        if start is not None:
            progress, next_at = start
            progress.next_at = next_at
            run = progress.run
        else:
            loaded = await self._store.load_run_state(incident_id)
            if loaded is None:
                return
            run, rev, next_at, leftover = loaded
            progress = _Progress(run, rev, leftover=leftover, next_at=next_at)
            if run.status == "queued":
                self._starting[incident_id] = _slots_key(run)
        progress.permit = permit
        now = self._clock()
        if run.status in machine.FINAL or next_at is None or (next_at > now and not early):
            # Not ours to wake (another instance moved it on, or it ended): the store's poll
            # finds it if it is ever due and left.
            self._due.pop(incident_id, None)
            return
        # No separate claim write: every write below names the rev it read, and the first one
        # before any outside effect (the 'started' record of an HTTP call) also moves next_at to
        # a lease, so a second instance that loaded the same run can only lose its writes.
        #
        # Moves without an effect outside our store (admission's run change, notes, waits'
        # ends, pages, probes) are not stored one by one: they ride, with their events, in the
        # run's next write, which comes before any HTTP call to the customer's system, when the
        # run sleeps, and when it ends. A crash before that write only repeats those moves
        # (their events were never published), never an outside effect.
        while progress.rev is not None:
            now = self._clock()
            move = machine.decide(progress.run, now)
            if isinstance(move, machine.Done):
                return
            if isinstance(move, machine.Sleep):
                await self._store_progress(progress, move.until)
                return
            if isinstance(move, machine.Admit):
                if not await self._admit(progress, now):
                    return
                continue
            if isinstance(move, machine.Escalate):
                await self._escalate(progress, move)
                return
            if isinstance(move, machine.Probe):
                await self._probe(progress, move)
                continue
            if isinstance(move, machine.Execute):
                if move.phase == "fix":
                    paused = await self._automation_paused(progress.run.tenant_id)
                    if paused:
                        await self._escalate(
                            progress,
                            machine.Escalate(
                                f"automation is paused for this tenant ({paused.get('reason') or 'kill switch'}); "
                                f"step '{move.step.name}' was not run"
                            ),
                        )
                        return
                await self._execute(progress, move)
                continue
            raise AssertionError(f"unknown move {move!r}")

    async def _store_progress(self, progress: _Progress, next_at: datetime | None) -> bool:
        """Write the run as it is now, with the events of the moves since its last write; then
        publish them. False when another writer changed the run meanwhile (this drive stops)."""
        assert progress.rev is not None
        entries = self._store.outbox_entries(progress.pending)
        progress.pending = []
        incident_id = progress.run.incident.incident_id
        progress.rev = await self._store.save_run(progress.run, progress.rev, next_at, entries)
        if progress.rev is None:
            self._due.pop(incident_id, None)  # another writer has it now
            return False
        progress.next_at = next_at
        self._remember_due(incident_id, next_at)
        # The write landed, so the run has moved on: a failed publish (Kafka down) must not stop
        # it. The events stay in the run's outbox and the relay remembers the run for its sweep.
        # Raising here used to end the drive after a run's last write (no due time left), so a
        # verified run never gave its system's slot back and the next run of that system waited
        # for a slot until its queue timeout escalated it (the 2,000-incident fault run, broker
        # kill).
        try:
            if progress.leftover:
                # Events someone else left in the outbox (a crashed instance, a failed publish)
                # go first, in order.
                await self._relay.flush(self._store.runs, progress.run.incident.incident_id)
                progress.leftover = False
            elif entries:
                await self._relay.flush_entries(self._store.runs, progress.run.incident.incident_id, entries)
        except Exception as error:
            # Later writes publish the whole outbox (``flush``), so these go out before them.
            progress.leftover = True
            log.warning(
                "run's events not published yet; its outbox keeps them for the sweep",
                incident_id=progress.run.incident.incident_id,
                error=str(error),
            )
        return True

    async def _set_next_at(self, progress: _Progress, next_at: datetime) -> None:
        """Only move the run's due time (it waits: for a slot, for its tenant)."""
        assert progress.rev is not None
        incident_id = progress.run.incident.incident_id
        progress.rev = await self._store.set_next_at(incident_id, progress.rev, next_at)
        if progress.rev is None:
            self._due.pop(incident_id, None)
        else:
            progress.next_at = next_at
            self._remember_due(incident_id, next_at)

    def _remember_due(self, incident_id: str, next_at: datetime | None) -> None:
        if next_at is None:
            self._due.pop(incident_id, None)  # ended: nothing left to wake
        else:
            self._due[incident_id] = next_at

    def due_here(self, now: datetime, limit: int = 200) -> list[str]:
        """The runs this process last wrote whose due time has come, earliest first, not being
        driven right now: what the poller wakes without asking the store."""
        due = sorted(
            (next_at, incident_id)
            for incident_id, next_at in self._due.items()
            if next_at <= now and incident_id not in self.driving
        )
        return [incident_id for _, incident_id in due[:limit]]

    async def _automation_paused(self, tenant_id: str) -> dict[str, Any] | None:
        # Read at most once a second per tenant (every fix step asks); a switch set through this
        # process's API is seen at once (forget_tenant_settings).
        return await self._paused_reads.get(tenant_id, TENANT_CACHE_S)

    def forget_tenant_settings(self, tenant_id: str) -> None:
        self._paused_reads.forget(tenant_id)

    async def _admit(self, progress: _Progress, now: datetime) -> bool:
        """Ask the system's blast-radius limits for a slot; True when the run may go on."""
        run = progress.run
        assert progress.rev is not None
        paused = await self._automation_paused(run.tenant_id)
        if paused:
            await self._escalate(
                progress,
                machine.Escalate(f"automation is paused for this tenant ({paused.get('reason') or 'kill switch'})"),
            )
            return False
        if await self._tenant(run.tenant_id) is None:
            # Tenants come on their own topic and may arrive after the incident: wait for it (the
            # queue timeout escalates if it never comes).
            await self._set_next_at(progress, now + timedelta(seconds=TENANT_RECHECK_S))
            return False
        decision, now = await self._move_slot(run, admit=True)
        if isinstance(decision, blast_radius.Refuse):
            await self._escalate(progress, machine.Escalate(decision.reason))
            return False
        if isinstance(decision, blast_radius.Hold):
            # Known to wait before anything else may run: a release decided in the same pass as
            # this hold looks for it next (_release).
            self._waiting[run.incident.incident_id] = (_slots_key(run), run.created_at)
            if progress.next_at is not None and progress.next_at > now:
                # Its stored due time (the lease written when it was created, or a re-check) is
                # still ahead: until then no instance takes it, and a release here wakes it
                # sooner. Moved to the re-check only if it still waits then (a write of the whole
                # run each time on the embedded store: a third of a burst's run writes).
                return False
            await self._set_next_at(progress, now + timedelta(seconds=QUEUE_RECHECK_S))
            return False
        if decision is None:
            await self._set_next_at(progress, now + timedelta(seconds=TENANT_RECHECK_S))
            return False
        # The slot is the system's (stored); the run's change rides in its next write. A crash
        # before it finds the slot held by this run and is admitted again.
        self._starting.pop(run.incident.incident_id, None)
        progress.run = run = machine.admit(run, now)
        progress.pending.append(
            self._event(
                run,
                RemediationStarted(
                    incident_id=run.incident.incident_id,
                    run_id=run.run_id,
                    runbook=run.runbook.name,
                    steps=[step.name for step in run.runbook.steps],
                    runbook_version=run.runbook_version,
                    system=run.system,
                ),
            )
        )
        return True

    async def _tenant(self, tenant_id: str) -> TenantUpserted | None:
        # Read at most once a second per tenant: every step of every run needs it.
        return await self._tenant_reads.get(tenant_id, TENANT_CACHE_S)

    async def _system(self, run: Run) -> tuple[TenantUpserted | None, SupportedSystem | None]:
        tenant = await self._tenant(run.tenant_id)
        if tenant is None:
            return None, None
        return tenant, next((system for system in tenant.systems if system.name == run.system), None)

    async def _execute(self, progress: _Progress, move: machine.Execute) -> None:
        run = progress.run
        step = move.step
        started = self._clock()
        wall_started = time.perf_counter()
        action_seconds = 0.0
        params: dict[str, str | int | float] = {}
        target: str | None = None
        events: list[Envelope[Any]] = []
        outside_effect = False
        try:
            params = filled_params(step, run.incident)
        except ParameterRefused as error:
            outcome, output = "failed", f"not run: {error}"
        else:
            tenant, system = await self._system(run)
            allowlist = tenant.probe_allowlist if tenant else []
            if step.action == "http_admin":
                if system is None or not system.admin_endpoint:
                    outcome, output = "failed", f"not run: system {run.system!r} has no registered admin endpoint"
                else:
                    target = admin_url(system.admin_endpoint, str(step.params["path"]))
                    async with progress.away():  # waiting for a call slot holds no drive permit
                        await self._admin_calls.acquire()
                    try:
                        started = self._clock()
                        # Recorded before the call (with whatever rode along so far): a crash during
                        # it must not lead to a second call, nor may a second instance's.
                        progress.run = run = machine.start_step(run, move, params, target, started)
                        lease = started + timedelta(seconds=step.timeout_seconds + self._lease_margin_s)
                        if not await self._store_progress(progress, lease):
                            return
                        outside_effect = True
                        try:
                            token = await self._vault.bearer_token(run.tenant_id, system.name)
                        except CredentialKeyMissing as error:
                            outcome, output = "failed", f"not run: {error}"
                        else:
                            before = time.perf_counter()
                            async with progress.away():
                                result = await self._caller.call_admin(
                                    target,
                                    str(params.get("method", "POST")).upper(),
                                    str(params["query"]) if "query" in params else None,
                                    token,
                                    step.timeout_seconds,
                                    allowlist,
                                )
                            action_seconds = time.perf_counter() - before
                            outcome, output = result.outcome, result.output
                    finally:
                        self._admin_calls.release()
            elif step.action == "wait":
                outcome, output = "succeeded", f"waiting {params['seconds']}s (a stored due time)"
            elif step.action == "rerun_diagnosis":
                probe = system.diagnostic_target if system else None
                if probe is None or probe.kind != "http":
                    outcome, output = "failed", f"system {run.system!r} has no HTTP diagnostic target to probe"
                else:
                    target = probe.address
                    before = time.perf_counter()
                    async with progress.away():
                        answer = await self._caller.probe(probe.address, step.timeout_seconds, allowlist)
                    action_seconds = time.perf_counter() - before
                    outcome, output = "succeeded", f"diagnosis: {answer.describe()}"
            elif step.action == "add_note":
                outcome, output = "succeeded", str(params["text"])
                events.append(
                    self._event(
                        run, RemediationNoteAdded(incident_id=run.incident.incident_id, run_id=run.run_id, note=output)
                    )
                )
            elif step.action == "page_oncall":
                reason = str(params.get("reason") or f"runbook {run.runbook.name} asks for the on-call")
                await self._escalations.escalate(
                    f"page:{run.run_id}:{move.phase}:{move.index}", run.incident, reason, run
                )
                outcome, output = "succeeded", f"paged the on-call: {reason}"
            else:  # pragma: no cover - the runbook model allows no other action
                outcome, output = "failed", f"unknown action {step.action}"
        now = self._clock()
        progress.run = run = machine.finish_step(run, move, outcome, output, started, now, params, target)  # type: ignore[arg-type]
        events.insert(
            0,
            self._event(
                run,
                RemediationStepCompleted(
                    incident_id=run.incident.incident_id,
                    run_id=run.run_id,
                    step_index=move.index,
                    step=step.name,
                    outcome=outcome,
                    output=output[:2000],
                    duration_ms=(now - started).total_seconds() * 1000,
                    phase=move.phase,
                    action=step.action,
                    attempts=move.attempt,
                ),
            ),
        )
        progress.pending += events
        if outside_effect:
            # What the customer's system answered is stored at once: it decides what may follow.
            await self._store_progress(progress, run.resume_at or now + timedelta(seconds=self._lease_margin_s))
        STEP_OVERHEAD.observe(max(0.0, time.perf_counter() - wall_started - action_seconds))

    async def _probe(self, progress: _Progress, move: machine.Probe) -> None:
        run = progress.run
        started = self._clock()
        tenant, system = await self._system(run)
        probe = system.diagnostic_target if system else None
        criteria = run.runbook.verification
        if probe is None or probe.kind != "http":
            healthy, output = False, f"system {run.system!r} has no HTTP diagnostic target to verify with"
        else:
            async with progress.away():
                answer = await self._caller.probe(
                    probe.address, criteria.timeout_seconds, tenant.probe_allowlist if tenant else []
                )
            healthy, output = judge(criteria, answer)
        now = self._clock()
        progress.run = run = machine.finish_probe(run, move.attempt, healthy, output, started, now)
        progress.pending.append(
            self._event(
                run,
                RemediationStepCompleted(
                    incident_id=run.incident.incident_id,
                    run_id=run.run_id,
                    step_index=0,
                    step="verify",
                    outcome="succeeded" if healthy else "failed",
                    output=output,
                    duration_ms=(now - started).total_seconds() * 1000,
                    phase="verification",
                    action="probe",
                    attempts=move.attempt,
                ),
            )
        )
        if run.status != "succeeded":
            return  # a retry sleeps (stored then), a failed verification goes on to the rollback
        progress.pending.append(
            self._event(
                run,
                RemediationSucceeded(
                    incident_id=run.incident.incident_id,
                    run_id=run.run_id,
                    runbook=run.runbook.name,
                    verification=output,
                ),
            )
        )
        if await self._store_progress(progress, None):
            log.info("run verified", incident_id=run.incident.incident_id, runbook=run.runbook.name)
            await self._release(run)

    async def _escalate(self, progress: _Progress, move: machine.Escalate) -> None:
        now = self._clock()
        # Claim the run first (its state so far, at the rev we read, with a lease): another instance
        # may have read the same run, and only the one whose claim lands may page people and free
        # the run's slot. Without it, an instance holding a stale state (a run it thought
        # interrupted, which the other instance had just finished) paged the on-call and freed a
        # slot still in use.
        if not await self._store_progress(progress, now + timedelta(seconds=self._lease_margin_s)):
            return
        run = progress.run
        ended = machine.escalated(run, move, now)
        # The escalation before the run's end: if we die before the run is saved, the run escalates
        # again on resume and the escalation, keyed by incident and purpose, is not duplicated.
        await self._escalations.escalate("run", ended.incident, move.reason, ended)
        failed_step = move.interrupted.name if move.interrupted else None
        progress.run = ended
        progress.pending.append(
            self._event(
                ended,
                RemediationFailed(
                    incident_id=run.incident.incident_id,
                    run_id=run.run_id,
                    runbook=run.runbook.name,
                    failed_step=failed_step,
                    error=move.reason[:2000],
                ),
            )
        )
        if await self._store_progress(progress, None):
            log.warning("run escalated", incident_id=run.incident.incident_id, reason=move.reason)
        await self._release(run)

    async def _move_slot(self, run: Run, *, admit: bool) -> tuple[Any, datetime]:
        """Admit ``run`` to its system's slots (answers Admitted, Hold, Refuse, or None: the slots
        kept changing, try later) or release its slot (answers whether it held one), with the
        time of the decision.

        One pass over a system's slots at a time in this process (its turn): a burst's runs all
        want the same slots document, and racing each other there only made them retry (its
        version guard still decides races with other instances). The moves that wait for the
        turn meanwhile go together in the next pass: one store write for all of them. One write
        per move made the turn the limit of a burst on one system (each write a store round trip,
        two per run, ~14 runs/s in the 500-run bench)."""
        key = _slots_key(run)
        request = _SlotMove(run, admit, asyncio.get_running_loop().create_future())
        self._slot_moves.setdefault(key, []).append(request)
        async with self._turns(f"slots:{key}"):
            if not request.answer.done():
                batch = self._slot_moves.pop(key, [])
                if request not in batch:
                    batch.append(request)  # a pass that took it was cancelled before answering
                try:
                    await self._decide_slot_moves(key, run.tenant_id, run.system or "(no system)", batch)
                except Exception as error:
                    for move in batch:
                        if not move.answer.done():
                            move.answer.set_exception(error)
        return request.answer.result()

    async def _decide_slot_moves(self, key: str, tenant_id: str, system: str, batch: list[_SlotMove]) -> None:
        # The time of an admission is now, inside the turn, not when its run started waiting for
        # the turn: the run it may take the slot from ended meanwhile, and the audit's admitted_at
        # must not come before that run's finished_at.
        now = self._clock()
        # From the slots as this process last wrote them, while its writes land: a write is
        # guarded by the version it was decided on, so a copy another instance has made stale is
        # refused, read again and decided again. Only admissions and releases written from it
        # count; holding, refusing, "already admitted" and "held none" are decided on the stored
        # slots.
        slots: blast_radius.SystemSlots | None = self._slots.pop(key, None)
        fresh = slots is None
        answers: list[Any] = [None if move.admit else False for move in batch]
        for _ in range(10):
            if slots is None:
                slots, fresh = await self._store.load_slots(tenant_id, system), True
            moved, settled = slots, True
            decided: list[Any] = []
            for move in batch:
                if move.admit:
                    decision = blast_radius.admission(
                        moved, move.run.run_id, move.run.runbook.blast_radius, system, now
                    )
                    if isinstance(decision, blast_radius.Admitted) and decision.slots is not moved:
                        moved = decision.slots
                    elif not fresh:
                        settled = False
                    decided.append(decision)
                else:
                    freed = blast_radius.release(moved, move.run.run_id)
                    if freed is not None:
                        moved = freed
                    elif not fresh:
                        settled = False
                    decided.append(freed is not None)
            if not settled:
                slots = None
                continue
            if any(isinstance(decision, blast_radius.Hold) for decision in decided) and self._holders_check.due(key):
                taken_back, slots = await self._take_back_slots_of_ended_runs(batch[0].run, system, slots)
                if taken_back:
                    now = self._clock()  # after the freed runs' ends (their finished_at)
                if taken_back or slots is None:
                    continue
            if moved is slots:  # nothing to write: holds, refusals, already admitted, held none
                self._slots[key] = slots
                answers = decided
                break
            if await self._store.save_slots(tenant_id, system, slots, moved):
                self._slots[key] = moved
                answers = decided
                break
            slots = None
        for move, answer in zip(batch, answers, strict=True):
            move.answer.set_result((answer, now))

    async def _take_back_slots_of_ended_runs(
        self, run: Run, system: str, slots: blast_radius.SystemSlots
    ) -> tuple[bool, blast_radius.SystemSlots | None]:
        """Give back the slots of holders that ended without releasing them (killed between
        their last write and the release, or their last write landed and the store's reply was
        lost): otherwise they block the system until the queue timeout escalates every run
        behind them. Returns whether slots were taken back, and the slots now (None: they
        changed meanwhile, read them again)."""
        # A run this process is still driving gives its slot back itself in a moment (it ended
        # while this admission held the system's turn).
        finished = {
            run_id
            for run_id, incident_id in (await self._store.finished_runs(slots.holders)).items()
            if incident_id not in self.driving
        }
        freed = blast_radius.without_finished(slots, finished)
        if freed is None:
            return False, slots
        if not await self._store.save_slots(run.tenant_id, system, slots, freed):
            return False, None
        log.warning(
            "slots given back for runs that had ended without releasing them",
            system=system,
            tenant_id=run.tenant_id,
            runs=sorted(finished & set(slots.holders)),
        )
        return True, freed

    async def _release(self, run: Run) -> None:
        key = _slots_key(run)
        released, _ = await self._move_slot(run, admit=False)
        if not released:
            return  # it held none (never admitted, or released already): nobody to wake
        # Let the next queued run of this system go now rather than at its next re-check. Not one
        # this process is driving already: a run woken by an earlier release is still "queued" in
        # the store until its next write, and waking it again would wake nobody, leaving the freed
        # slot empty until the re-check (a burst ran at a fraction of its limit).
        waiting = self._oldest_waiting(key)
        starting_here = key in self._starting.values()
        if waiting is None and not starting_here and self._store_queue_check.due(key):
            # None seen waiting here: maybe runs another instance queued. Asked at most every
            # STORE_QUEUE_CHECK_S per system: the query reads every queued run whole, and in a
            # burst most queued runs are this process's, waiting for a drive permit (they take a
            # free slot themselves when they get one).
            waiting = await self._store.next_queued_run(run.tenant_id, run.system, skip=self.driving)
        if waiting is not None:
            self.spawn_drive(waiting, now=True)

    def _oldest_waiting(self, key: str) -> str | None:
        """The run of system ``key`` that has waited here longest for a slot."""
        mine = [
            (created_at, incident_id) for incident_id, (system, created_at) in self._waiting.items() if system == key
        ]
        return min(mine)[1] if mine else None

    # --- people --------------------------------------------------------------------------

    async def decide_approval(
        self, run_id: str, approved: bool, operator_id: str, operator_email: str | None, note: str
    ) -> Run:
        """A responder's yes or no on a run waiting for approval; who and when is recorded."""
        document = await self._store.find_run(run_id)
        if document is None:
            raise ApprovalProblem(404, f"there is no run {run_id}")
        incident_id = str(document["_id"])
        async with self._turns(incident_id):
            loaded = await self._store.load_run(incident_id)
            assert loaded is not None
            run, rev, _ = loaded
            refusal = machine.may_decide(run, operator_id, operator_email)
            if refusal is not None:
                raise ApprovalProblem(409 if "not waiting" in refusal else 403, refusal)
            now = self._clock()
            decided = machine.decide_approval(run, approved, operator_id, note, now)
            assert decided.approval is not None
            events: list[Envelope[Any]] = []
            if approved:
                events.append(
                    self._event(
                        decided,
                        ApprovalGranted(
                            incident_id=incident_id,
                            run_id=run_id,
                            approval_id=decided.approval.approval_id,
                            by=operator_id,
                            note=note,
                        ),
                    )
                )
            else:
                events += [
                    self._event(
                        decided,
                        ApprovalRejected(
                            incident_id=incident_id,
                            run_id=run_id,
                            approval_id=decided.approval.approval_id,
                            by=operator_id,
                            reason=note,
                        ),
                    ),
                    self._event(
                        decided,
                        RemediationFailed(
                            incident_id=incident_id,
                            run_id=run_id,
                            runbook=run.runbook.name,
                            error=decided.outcome or "rejected",
                        ),
                    ),
                ]
            entries = self._store.outbox_entries(events)
            if await self._store.save_run(decided, rev, now if approved else None, entries) is None:
                raise ApprovalProblem(409, "the run changed meanwhile; read it again and retry")
            self._remember_due(incident_id, now if approved else None)
            try:
                await self._relay.flush(self._store.runs, incident_id)
            except Exception as error:
                # The decision is stored: answering the responder with an error would invite a
                # second decision. Its events wait in the run's outbox for the sweep.
                log.warning("approval's events not published yet", incident_id=incident_id, error=str(error))
        if approved:
            self.spawn_drive(incident_id, now=True)
        return decided
