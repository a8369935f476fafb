"""Single-instance scheduled work: leases, jobs that run once per interval, stored due times.

Several instances of a service run at once, so anything timed must be done by one of them
only, and must not be forgotten when that one dies. Three parts, all in the service's own store:

* ``Leases`` (collection ``leases``): a named lease document (``holder``, ``expires_at``,
  ``term``) created by one insert or taken over with one conditional single-document write,
  renewed by its holder while it works and taken over by another instance once it has expired
  (the holder died or stalled).
* ``Jobs``, used as ``runtime.every(name, interval_s, job)``: ``job()`` runs once per interval
  per deployment, in whichever instance holds the lease ``every:<name>``. The time of the next
  run is kept in the lease document, so a new holder neither repeats a run nor skips one. A
  job that outlives its lease (the holder stalled and another took over) is cancelled.
* ``DueTimes`` (collection ``due_times``), used as ``runtime.due_times.schedule(key, due_at,
  kind, payload)`` plus ``runtime.on_due(kind, handler)``: stored due times (SLA breaches,
  approval expiry, escalation steps, retries of a failed send). One leased poller fires the items
  whose time has come.

Guarantees and what they ask of the code that uses them:

* A job runs at most once at a time across the deployment while holders renew in time (a
  lease period is 15 s by default, renewed every third of it); after a crash it runs again
  at the latest one lease period after its due time.
* A due item fires **at least once** after its due time, and is removed only after its handler
  returned. A crash between the handler's effect and the removal, or a takeover while a
  stalled holder is still working, fires it again: **due handlers must be idempotent** (check
  the state they act on, e.g. "is the approval still pending?", or key their writes by the item
  key). A handler that raises is retried with exponential backoff (logged, counted in
  ``aftercare_due_items_total{outcome="failed"}``); after ``max_attempts`` failed attempts
  (default 12: about 20 minutes of backoff) the item is **dead**: moved to ``due_times_dead``,
  counted in ``aftercare_due_items_total{outcome="dead"}`` and ``aftercare_due_items_dead``, and
  listed by ``aftercare dead-due-times list`` beside the dead letters; ``aftercare dead-due-times
  replay KEY`` (``DueTimes.revive``) schedules it again, due at once, after the fix. Nothing is
  dropped: a dead item waits for an operator instead of failing every five minutes forever.
* Rescheduling a key replaces its due time, kind and payload; an item that is being fired while
  it is rescheduled stays (its removal is conditional on the version it fired).

Store notes: no TTL or partial indexes (the embedded FerretDB has neither). Leases and due items
are looked up by ``_id``, the one filter every store answers from an index. Looking for due
items needs ``due_at``; to keep an idle poll to a single ``_id`` read, every ``schedule`` lowers a
"next due" hint document (``$min``) and the poller scans only when the hint says something is
due, plus every five minutes as a safety net (a crash between an item's write and its hint).
Without an index on ``due_at`` (the embedded store answers only ``_id`` from an index) each such
scan reads every stored item: measured in ``bench/due_times_poll.py``.

Taking over an expired lease is decided by a unique insert (a claim document ``<lease>#<term>``
in ``lease_claims``), so exactly one of several instances wins even on a store whose conditional
updates are not atomic; renewals and the job's bookkeeping are conditional single-document
writes on the holder. Times are compared with each
instance's own clock: keep the lease period well above the clock skew between instances.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import structlog
from prometheus_client import Counter, Gauge
from pymongo import ASCENDING, ReplaceOne, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

log = structlog.stdlib.get_logger("aftercare.events.schedule")

LEASES = "leases"
LEASE_CLAIMS = "lease_claims"
DUE_TIMES = "due_times"
DUE_HINT = "due_times_next"
DUE_TIMES_DEAD = "due_times_dead"
_HINT_ID = "next"

JOB_RUNS = Counter(
    "aftercare_scheduled_job_runs_total",
    "Runs of single-instance jobs, by outcome (succeeded, failed, lease_lost).",
    ["job", "outcome"],
)
LEASES_HELD = Gauge("aftercare_leases_held", "1 while this process holds the lease.", ["lease"])
DUE_ITEMS = Counter(
    "aftercare_due_items_total",
    "Due items fired, by kind and outcome (handled, failed, dead: failed for the last allowed time).",
    ["kind", "outcome"],
)
DEAD_DUE_ITEMS = Gauge(
    "aftercare_due_items_dead",
    "Due items that failed every allowed attempt and wait for an operator (aftercare dead-due-times), by kind.",
    ["kind"],
)
DEFAULT_MAX_ATTEMPTS = 12
_DEAD_KINDS_SHOWN: set[str] = set()

Clock = Callable[[], datetime]
Job = Callable[[], Awaitable[Any]]


def utc_now() -> datetime:
    return datetime.now(UTC)


def _store_time(moment: datetime) -> datetime:
    """The store keeps milliseconds; compare and write what it will give back."""
    moment = moment.astimezone(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def new_holder_id() -> str:
    """An id for one process: host and pid for people reading the store, a random part for uniqueness."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


# --- leases --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lease:
    """A lease document as read from the store."""

    name: str
    holder: str
    expires_at: datetime
    acquired_at: datetime
    term: int
    next_run_at: datetime | None = None

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> Lease:
        return cls(
            name=document["_id"],
            holder=document["holder"],
            expires_at=document["expires_at"].astimezone(UTC),
            acquired_at=document["acquired_at"].astimezone(UTC),
            term=int(document.get("term", 0)),
            next_run_at=document["next_run_at"].astimezone(UTC) if document.get("next_run_at") else None,
        )


class LeaseMove(StrEnum):
    """What an instance does about a lease, given what it read (``decide_lease``)."""

    CREATE = "create"  # nobody ever took it: insert it (the unique _id lets one insert win)
    RENEW = "renew"  # it is ours: push its expiry forward
    TAKE = "take"  # someone else's, expired: take it over
    WAIT = "wait"  # someone else's, still valid: wait until it expires


def decide_lease(lease: Lease | None, holder: str, now: datetime) -> LeaseMove:
    """Pure decision: what ``holder`` should do about ``lease`` at ``now``."""
    if lease is None:
        return LeaseMove.CREATE
    if lease.holder == holder:
        return LeaseMove.RENEW
    if lease.expires_at <= now:
        return LeaseMove.TAKE
    return LeaseMove.WAIT


def next_run_after(due_at: datetime, interval: timedelta, started_at: datetime) -> datetime:
    """When a job whose run due at ``due_at`` started at ``started_at`` is due next.

    Runs stay on their grid (due, due + interval, ...) so they do not drift by the time it took
    to notice; runs missed while no instance was up are not caught up one by one: the next run
    is the first grid point after the start.
    """
    following = due_at + interval
    if following > started_at:
        return following
    missed = (started_at - due_at) // interval
    return due_at + interval * (missed + 1)


class Leases:
    """Named leases in the service's store, taken and renewed by one holder (this process)."""

    def __init__(
        self,
        database: AsyncDatabase[dict[str, Any]],
        holder: str,
        *,
        period: timedelta = timedelta(seconds=15),
    ) -> None:
        self._leases = database[LEASES]
        self._claims = database[LEASE_CLAIMS]
        self.holder = holder
        self.period = period

    async def read(self, name: str) -> Lease | None:
        document = await self._leases.find_one({"_id": name})
        return Lease.from_document(document) if document else None

    async def acquire(self, name: str, now: datetime) -> tuple[Lease | None, Lease | None]:
        """Take, renew or (if another holds it) leave the lease ``name``.

        Returns ``(ours, current)``: ``ours`` is the lease when this holder has it now (None
        otherwise); ``current`` is the lease as last read (whoever holds it).
        """
        now = _store_time(now)
        current = await self.read(name)
        move = decide_lease(current, self.holder, now)
        if move is LeaseMove.WAIT:
            return None, current
        if move is LeaseMove.CREATE:
            document = {
                "_id": name,
                "holder": self.holder,
                "expires_at": now + self.period,
                "acquired_at": now,
                "term": 1,
                "next_run_at": None,
            }
            try:
                await self._leases.insert_one(document)
            except DuplicateKeyError:
                return None, await self.read(name)  # another instance created it first
            lease = Lease.from_document(document)
            self._held(name, True)
            log.info("lease taken", lease=name, holder=self.holder, term=1)
            return lease, lease
        assert current is not None
        if move is LeaseMove.RENEW:
            renewed = await self.renew(name, now)
            return renewed, renewed
        # TAKE. Several instances may see the same expired lease. Each first claims the next term
        # with an insert whose _id is that term: the unique _id lets exactly one claim succeed
        # on any store, even where a conditional update is not atomic (the unpatched embedded
        # store). The winner then moves the lease with one conditional write on the term it read.
        claim_id = f"{name}#{current.term + 1}"
        try:
            await self._claims.insert_one({"_id": claim_id, "holder": self.holder, "at": now})
        except DuplicateKeyError:
            await self._drop_stale_claim(claim_id, now)
            return None, await self.read(name)
        taken = await self._leases.find_one_and_update(
            {"_id": name, "term": current.term, "expires_at": {"$lte": now}},
            {
                "$set": {"holder": self.holder, "expires_at": now + self.period, "acquired_at": now},
                "$inc": {"term": 1},
            },
            return_document=ReturnDocument.AFTER,
        )
        with contextlib.suppress(Exception):  # only tidiness: claims of old terms are never read
            await self._claims.delete_one({"_id": f"{name}#{current.term}"})
        if taken is None or taken["holder"] != self.holder:
            return None, await self.read(name)  # renewed late by its holder after all
        lease = Lease.from_document(taken)
        self._held(name, True)
        log.info(
            "lease taken over",
            lease=name,
            holder=self.holder,
            previous_holder=current.holder,
            expired_at=current.expires_at.isoformat(),
            term=lease.term,
        )
        return lease, lease

    async def _drop_stale_claim(self, claim_id: str, now: datetime) -> None:
        # A claim whose lease never moved to its term: its claimer died between the two writes
        # (or lost to a late renewal). Older than a period, it is dropped so the next try can win.
        stale = await self._claims.find_one({"_id": claim_id})
        if stale is not None and stale["at"].astimezone(UTC) + self.period <= now:
            await self._claims.delete_one({"_id": claim_id, "at": stale["at"]})
            log.warning("dropped a stale lease claim", claim=claim_id, claimed_by=stale.get("holder"))

    async def renew(self, name: str, now: datetime) -> Lease | None:
        """Push the expiry of our lease forward; None if it is no longer ours."""
        now = _store_time(now)
        document = await self._leases.find_one_and_update(
            {"_id": name, "holder": self.holder},
            {"$set": {"expires_at": now + self.period}},
            return_document=ReturnDocument.AFTER,
        )
        if document is None:
            self._held(name, False)
            return None
        return Lease.from_document(document)

    async def release(self, name: str, now: datetime) -> None:
        """Let the lease go at once (on shutdown), so another instance need not wait for expiry."""
        await self._leases.update_one({"_id": name, "holder": self.holder}, {"$set": {"expires_at": _store_time(now)}})
        self._held(name, False)

    async def set_next_run(self, name: str, next_run_at: datetime, last_run: dict[str, Any]) -> bool:
        """Record when the job is due next, only while this holder still holds the lease."""
        result = await self._leases.update_one(
            {"_id": name, "holder": self.holder},
            {"$set": {"next_run_at": _store_time(next_run_at), "last_run": last_run}, "$inc": {"runs": 1}},
        )
        return result.matched_count == 1

    @staticmethod
    def _held(name: str, held: bool) -> None:
        LEASES_HELD.labels(lease=name).set(1 if held else 0)


# --- jobs that run once per interval per deployment ----------------------------------------


@dataclass
class _JobSpec:
    name: str
    interval: timedelta
    job: Job


class LeaseLost(Exception):
    """The lease was taken by another instance (or could not be renewed) while a job ran."""


class Jobs:
    """Runs each registered job once per interval per deployment (see the module docstring)."""

    def __init__(self, leases: Leases, *, clock: Clock = utc_now) -> None:
        self._leases = leases
        self._clock = clock
        self._specs: dict[str, _JobSpec] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = asyncio.Event()
        self._started = False

    @property
    def holder(self) -> str:
        return self._leases.holder

    def every(self, name: str, interval_s: float, job: Job) -> None:
        """Register ``job`` to run every ``interval_s`` seconds in one instance of the deployment."""
        if name in self._specs:
            raise ValueError(f"a job named {name!r} is registered already")
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self._specs[name] = _JobSpec(name, timedelta(seconds=interval_s), job)
        if self._started:
            self._launch(self._specs[name])

    def start(self) -> None:
        self._started = True
        for spec in self._specs.values():
            self._launch(spec)

    def _launch(self, spec: _JobSpec) -> None:
        self._tasks[spec.name] = asyncio.create_task(self._keep_running(spec), name=f"every-{spec.name}")

    async def stop(self) -> None:
        """Stop every job loop (a running job is cancelled) and release the leases held."""
        self._stopping.set()
        if not self._started:
            return
        for task in self._tasks.values():
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        for name in self._specs:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._leases.release(self.lease_name(name), self._clock()), timeout=2.0)

    @staticmethod
    def lease_name(job_name: str) -> str:
        return f"every:{job_name}"

    async def _pause(self, seconds: float) -> None:
        # Waiting on the stop event rather than sleeping: shutdown does not wait out a pause.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=max(seconds, 0.01))

    async def _keep_running(self, spec: _JobSpec) -> None:
        while not self._stopping.is_set():
            try:
                await self._step(spec)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not end the job for good: say so, go on
                log.exception("job loop failed; continuing", job=spec.name)
                await self._pause(self._leases.period.total_seconds() / 3)

    async def _step(self, spec: _JobSpec) -> None:
        lease_name = self.lease_name(spec.name)
        period_s = self._leases.period.total_seconds()
        renew_every = period_s / 3
        now = self._clock()
        try:
            # Bounded: a store that hangs must not leave this holder believing it still holds.
            ours, current = await asyncio.wait_for(self._leases.acquire(lease_name, now), timeout=period_s)
        except Exception as error:  # the store is away: try again shortly, say so
            log.warning("could not read or take the job's lease", job=spec.name, error=str(error))
            await self._pause(renew_every)
            return
        if ours is None:
            # Someone else holds it: look again when it would expire (it is renewed long before).
            wait = (current.expires_at - now).total_seconds() if current else renew_every
            await self._pause(min(max(wait, 0.05), period_s))
            return
        if self._clock() >= ours.expires_at:
            return  # this process stalled while taking it: take it afresh before working
        due_at = ours.next_run_at or now
        if due_at > now:
            await self._pause(min((due_at - now).total_seconds(), renew_every))
            return
        await self._run_once(spec, lease_name, ours, due_at)

    async def _run_once(self, spec: _JobSpec, lease_name: str, lease: Lease, due_at: datetime) -> None:
        started_at = self._clock()
        log_context = {"job": spec.name, "holder": self.holder, "due_at": due_at.isoformat()}
        run: asyncio.Future[Any] = asyncio.ensure_future(spec.job())
        outcome, error_text = "succeeded", None
        try:
            await self._renew_while(run, lease_name, lease)
            run.result()
        except LeaseLost as lost:
            outcome, error_text = "lease_lost", str(lost)
            log.warning("job cancelled: its lease was lost", error=error_text, **log_context)
        except asyncio.CancelledError:
            run.cancel()
            raise
        except Exception as error:  # the job failed: logged, counted, tried again next interval
            outcome, error_text = "failed", f"{type(error).__name__}: {error}"
            log.exception("scheduled job failed; it runs again next interval", **log_context)
        JOB_RUNS.labels(job=spec.name, outcome=outcome).inc()
        if outcome == "lease_lost":
            return  # the new holder decides about the next run
        finished_at = self._clock()
        next_run = next_run_after(due_at, spec.interval, started_at)
        last_run = {
            "due_at": _store_time(due_at),
            "started_at": _store_time(started_at),
            "finished_at": _store_time(finished_at),
            "outcome": outcome,
            "error": error_text,
            "holder": self.holder,
        }
        try:
            if not await self._leases.set_next_run(lease_name, next_run, last_run):
                log.warning("job ran but its lease was taken meanwhile", **log_context)
        except Exception as error:  # the next holder will run it again: at-least-once, said in the docs
            log.warning("could not record the job's run", error=str(error), **log_context)

    async def _renew_while(self, run: asyncio.Future[Any], lease_name: str, lease: Lease) -> None:
        """Wait for ``run``, renewing the lease meanwhile; cancel it if the lease is lost."""
        renew_every = self._leases.period.total_seconds() / 3
        expires_at = lease.expires_at
        while True:
            done, _ = await asyncio.wait({run}, timeout=renew_every)
            if done:
                return
            now = self._clock()
            try:
                left = max((expires_at - now).total_seconds(), 0.1)
                renewed = await asyncio.wait_for(self._leases.renew(lease_name, now), timeout=left)
            except Exception as error:
                if now < expires_at:
                    log.warning("could not renew the lease; trying again", lease=lease_name, error=str(error))
                    continue
                renewed = None
            if renewed is None:
                run.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await run
                raise LeaseLost(f"lease {lease_name} is no longer held by {self.holder}")
            expires_at = renewed.expires_at


# --- stored due times ------------------------------------------------------------------------


@dataclass(frozen=True)
class DueItem:
    """A stored due time as its handler receives it."""

    key: str
    kind: str
    payload: dict[str, Any]
    due_at: datetime
    attempts: int = 0  # failed attempts so far
    version: str = ""
    last_error: str | None = None
    first_due_at: datetime | None = None

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> DueItem:
        first = document.get("first_due_at")
        return cls(
            key=document["_id"],
            kind=document["kind"],
            payload=dict(document.get("payload") or {}),
            due_at=document["due_at"].astimezone(UTC),
            attempts=int(document.get("attempts", 0)),
            version=str(document.get("version", "")),
            last_error=document.get("last_error"),
            first_due_at=first.astimezone(UTC) if first else None,
        )


DueHandler = Callable[[DueItem], Awaitable[Any]]


@dataclass(frozen=True)
class DeadDueItem:
    """A due time whose handler failed every allowed attempt; kept until an operator replays it."""

    key: str
    kind: str
    payload: dict[str, Any]
    first_due_at: datetime
    last_due_at: datetime
    attempts: int
    last_error: str | None
    died_at: datetime

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> DeadDueItem:
        return cls(
            key=document["_id"],
            kind=document["kind"],
            payload=dict(document.get("payload") or {}),
            first_due_at=document["first_due_at"].astimezone(UTC),
            last_due_at=document["last_due_at"].astimezone(UTC),
            attempts=int(document.get("attempts", 0)),
            last_error=document.get("last_error"),
            died_at=document["died_at"].astimezone(UTC),
        )


class DueTimeScheduledAgain(Exception):
    """A dead item cannot be replayed: a due time with its key was scheduled since it died."""


FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)


def retry_delay(attempts: int, base: timedelta, ceiling: timedelta) -> timedelta:
    """Backoff after the ``attempts``-th failure: base, 2 x base, 4 x base, ... up to ``ceiling``."""
    delay: timedelta = base * (2 ** min(max(attempts - 1, 0), 30))
    return min(delay, ceiling)


@dataclass
class PollReport:
    """What one poll did (for logs and tests)."""

    scanned: bool = False
    handled: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)


class DueTimes:
    """Stored due times of one service: ``schedule``/``cancel`` from anywhere, fired by one poller.

    ``schedule(key, due_at, kind, payload)`` upserts by key (rescheduling replaces), ``cancel``
    removes; handlers are registered per kind (``runtime.on_due``). See the module docstring
    for the at-least-once guarantee: handlers must be idempotent.
    """

    def __init__(
        self,
        database: AsyncDatabase[dict[str, Any]],
        *,
        retry_base: timedelta = timedelta(seconds=1),
        retry_ceiling: timedelta = timedelta(minutes=5),
        full_scan_every: timedelta = timedelta(minutes=5),
        batch_size: int = 100,
        concurrency: int = 8,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        self._items = database[DUE_TIMES]
        self._hint = database[DUE_HINT]
        self._dead = database[DUE_TIMES_DEAD]
        self.max_attempts = max_attempts
        self._handlers: dict[str, DueHandler] = {}
        self.retry_base = retry_base
        self.retry_ceiling = retry_ceiling
        self.full_scan_every = full_scan_every
        self.batch_size = batch_size
        self._concurrency = concurrency
        self._last_full_scan: datetime | None = None
        self._hints_waiting: list[tuple[datetime, asyncio.Future[None]]] = []
        self._hint_writer: asyncio.Task[None] | None = None

    async def ensure_indexes(self) -> None:
        await self._items.create_index([("due_at", ASCENDING)])

    # --- what services call ---

    def on_due(self, kind: str, handler: DueHandler) -> None:
        """Register the handler of one kind of due item (one handler per kind)."""
        if kind in self._handlers and self._handlers[kind] is not handler:
            raise ValueError(f"a handler for due items of kind {kind!r} is registered already")
        self._handlers[kind] = handler

    @property
    def kinds(self) -> list[str]:
        return sorted(self._handlers)

    async def schedule(
        self, key: str, due_at: datetime, kind: str, payload: Mapping[str, Any] | None = None
    ) -> DueItem:
        """Store (or replace) the due time ``key``: at ``due_at`` the handler of ``kind`` gets it.

        ``key`` names what the time is for, e.g. ``"sla-breach:<incident id>"``, so scheduling
        again moves it and ``cancel(key)`` removes it. ``payload`` must be storable as a
        document (JSON-like). A time in the past fires at the next poll.
        """
        (item,) = await self.schedule_many([(key, due_at, kind, payload)])
        return item

    async def schedule_many(
        self, items: Sequence[tuple[str, datetime, str, Mapping[str, Any] | None]]
    ) -> list[DueItem]:
        """``schedule`` for several ``(key, due_at, kind, payload)`` at once: one write for the
        items and one for the hint (e.g. an incident's response and resolution deadlines)."""
        documents: list[dict[str, Any]] = []
        lowest: datetime | None = None
        for key, due_at, kind, payload in items:
            if due_at.tzinfo is None:
                raise ValueError("due_at must be timezone-aware (UTC)")
            stored_due = _store_time(due_at)
            lowest = stored_due if lowest is None else min(lowest, stored_due)
            documents.append(
                {
                    "_id": key,
                    "kind": kind,
                    "payload": dict(payload or {}),
                    "due_at": stored_due,
                    "first_due_at": stored_due,
                    "attempts": 0,
                    "version": uuid.uuid4().hex,
                    "last_error": None,
                    "scheduled_at": _store_time(utc_now()),
                }
            )
        if lowest is None:
            return []
        if len(documents) == 1:
            await self._items.replace_one({"_id": documents[0]["_id"]}, documents[0], upsert=True)
        else:
            await self._items.bulk_write(
                [ReplaceOne({"_id": document["_id"]}, document, upsert=True) for document in documents], ordered=False
            )
        # After the items are written (see poll): a poller that reset the hint before this line
        # either saw the items in its scan or sees this lowered hint.
        await self._lower_hint(lowest)
        return [DueItem.from_document(document) for document in documents]

    async def _lower_hint(self, due_at: datetime) -> None:
        """Lower the hint to ``due_at`` (``$min``), in a write that starts after this call.

        Concurrent callers share one write (the lowest of their times): every schedule of a
        process lowered the one hint document in turn, the writes queueing for it."""
        lowered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._hints_waiting.append((due_at, lowered))
        if self._hint_writer is None or self._hint_writer.done():
            self._hint_writer = asyncio.get_running_loop().create_task(self._write_hints())
        await lowered

    async def _write_hints(self) -> None:
        while self._hints_waiting:
            waiting, self._hints_waiting = self._hints_waiting, []
            try:
                lowest = min(due_at for due_at, _ in waiting)
                await self._hint.update_one({"_id": _HINT_ID}, {"$min": {"due_at": lowest}}, upsert=True)
            except BaseException as error:
                for _, lowered in waiting:
                    if not lowered.done():
                        lowered.set_exception(error)
                if not isinstance(error, Exception):
                    raise
                continue
            for _, lowered in waiting:
                if not lowered.done():
                    lowered.set_result(None)

    async def cancel(self, key: str) -> bool:
        """Remove the due time ``key``; False if there was none (already fired or never set)."""
        result = await self._items.delete_one({"_id": key})
        return result.deleted_count == 1

    async def cancel_many(self, keys: Sequence[str]) -> int:
        """Remove the due times ``keys`` in one write; returns how many there were."""
        if not keys:
            return 0
        result = await self._items.delete_many({"_id": {"$in": list(keys)}})
        return result.deleted_count

    async def get(self, key: str) -> DueItem | None:
        document = await self._items.find_one({"_id": key})
        return DueItem.from_document(document) if document else None

    # --- the poller (run by one instance, under a lease: ``Jobs.every``) ---

    async def poll(self, now: datetime | None = None) -> PollReport:
        """Fire every item due at ``now``; cheap (one read by ``_id``) when nothing is due."""
        now = _store_time(now or utc_now())
        report = PollReport()
        full_scan = self._last_full_scan is None or now - self._last_full_scan >= self.full_scan_every
        if not full_scan:
            hint = await self._hint.find_one({"_id": _HINT_ID})
            if hint is not None and hint["due_at"].astimezone(UTC) > now:
                return report
        report.scanned = True
        if full_scan:
            self._last_full_scan = now
            # Other instances' deaths and replays show in this one's gauge too.
            await self.count_dead()
        # Reset the hint before scanning: anything scheduled from here on lowers it again.
        await self._hint.update_one({"_id": _HINT_ID}, {"$set": {"due_at": FAR_FUTURE}}, upsert=True)
        fired: set[tuple[str, str]] = set()
        while True:
            found = [
                DueItem.from_document(document)
                async for document in self._items.find({"due_at": {"$lte": now}})
                .sort("due_at", ASCENDING)
                .limit(self.batch_size)
            ]
            # Each version fires once per poll, even if its removal did not take (store hiccup):
            # the next poll tries it again rather than this one spinning on it.
            batch = [item for item in found if (item.key, item.version) not in fired]
            if not batch:
                break
            fired.update((item.key, item.version) for item in batch)
            await self._fire(batch, now, report)
            if len(found) < self.batch_size:
                break
        earliest = await self._items.find_one({}, sort=[("due_at", ASCENDING)], projection={"due_at": 1})
        if earliest is not None:
            await self._hint.update_one({"_id": _HINT_ID}, {"$min": {"due_at": earliest["due_at"]}}, upsert=True)
        return report

    async def _fire(self, batch: list[DueItem], now: datetime, report: PollReport) -> None:
        slots = asyncio.Semaphore(self._concurrency)

        async def fire(item: DueItem) -> None:
            async with slots:
                await self._fire_one(item, now, report)

        await asyncio.gather(*(fire(item) for item in batch))

    async def _fire_one(self, item: DueItem, now: datetime, report: PollReport) -> None:
        handler = self._handlers.get(item.kind)
        bound = {"due_key": item.key, "due_kind": item.kind, "attempt": item.attempts + 1}
        try:
            if handler is None:
                raise LookupError(
                    f"no handler registered for due items of kind {item.kind!r} "
                    f"(registered: {', '.join(self.kinds) or 'none'}); call runtime.on_due({item.kind!r}, ...)"
                )
            await handler(item)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            attempts = item.attempts + 1
            error_text = f"{type(error).__name__}: {error}"
            if attempts >= self.max_attempts:
                if await self._bury(item, attempts, error_text, now):
                    report.dead.append(item.key)
                    log.error(
                        "due item failed for the last allowed time; it is dead until an operator replays it "
                        "(aftercare dead-due-times list / replay)",
                        error=error_text,
                        **bound,
                    )
                return
            retry_at = now + retry_delay(attempts, self.retry_base, self.retry_ceiling)
            # Conditional on the version fired: a reschedule meanwhile wins over this retry.
            await self._items.update_one(
                {"_id": item.key, "version": item.version},
                {"$set": {"due_at": _store_time(retry_at), "attempts": attempts, "last_error": error_text}},
            )
            DUE_ITEMS.labels(kind=item.kind, outcome="failed").inc()
            report.failed.append(item.key)
            level = log.error if attempts >= self.max_attempts // 2 else log.warning
            level(
                "due item handler failed; retrying later",
                error=error_text,
                retry_at=retry_at.isoformat(),
                attempts_left=self.max_attempts - attempts,
                **bound,
            )
            return
        # Removed only now, and only the version that fired: a reschedule during the handler stays.
        await self._items.delete_one({"_id": item.key, "version": item.version})
        DUE_ITEMS.labels(kind=item.kind, outcome="handled").inc()
        report.handled.append(item.key)
        log.info("due item handled", **bound)

    # --- dead items (failed every allowed attempt) ---

    async def _bury(self, item: DueItem, attempts: int, error_text: str, now: datetime) -> bool:
        """Move the item to the dead ones; False if it was rescheduled meanwhile (that one stays)."""
        dead = {
            "_id": item.key,
            "kind": item.kind,
            "payload": item.payload,
            "first_due_at": _store_time(item.first_due_at or item.due_at),
            "last_due_at": _store_time(item.due_at),
            "attempts": attempts,
            "last_error": error_text,
            "died_at": now,
            "version": item.version,
        }
        # Written before the live item goes, so a crash in between leaves it in both places (it
        # fires again and dies again, replacing this), never in neither.
        await self._dead.replace_one({"_id": item.key}, dead, upsert=True)
        removed = await self._items.delete_one({"_id": item.key, "version": item.version})
        if removed.deleted_count == 0:
            await self._dead.delete_one({"_id": item.key, "version": item.version})
            return False
        DUE_ITEMS.labels(kind=item.kind, outcome="dead").inc()
        await self.count_dead()
        return True

    async def dead_items(self, kind: str | None = None) -> list[DeadDueItem]:
        """The dead items (of ``kind``), oldest death first."""
        query = {} if kind is None else {"kind": kind}
        documents = await self._dead.find(query).to_list()
        return sorted((DeadDueItem.from_document(d) for d in documents), key=lambda dead: (dead.died_at, dead.key))

    async def dead_item(self, key: str) -> DeadDueItem | None:
        document = await self._dead.find_one({"_id": key})
        return DeadDueItem.from_document(document) if document else None

    async def revive(self, key: str, now: datetime | None = None) -> DueItem:
        """Schedule a dead item again, due at ``now`` with its attempts reset (after a fix).

        Raises ``LookupError`` if there is no dead item ``key`` and ``DueTimeScheduledAgain`` if
        a due time with that key was scheduled since it died (the new one is left alone).
        """
        dead = await self._dead.find_one({"_id": key})
        if dead is None:
            raise LookupError(f"no dead due time {key!r}")
        due_at = _store_time(now or utc_now())
        document = {
            "_id": key,
            "kind": dead["kind"],
            "payload": dict(dead.get("payload") or {}),
            "due_at": due_at,
            "first_due_at": dead["first_due_at"],
            "attempts": 0,
            "version": uuid.uuid4().hex,
            "last_error": dead.get("last_error"),
            "scheduled_at": due_at,
            "revived_at": due_at,
        }
        try:
            await self._items.insert_one(document)
        except DuplicateKeyError as error:
            raise DueTimeScheduledAgain(
                f"{key!r} was scheduled again since it died; the new due time stands "
                "(wait for it, or cancel it before replaying the dead one)"
            ) from error
        await self._hint.update_one({"_id": _HINT_ID}, {"$min": {"due_at": due_at}}, upsert=True)
        await self._dead.delete_one({"_id": key})
        await self.count_dead()
        return DueItem.from_document(document)

    async def count_dead(self) -> dict[str, int]:
        """Count the dead items per kind and set ``aftercare_due_items_dead`` from it."""
        counts = {
            str(row["_id"]): int(row["count"])
            async for row in await self._dead.aggregate([{"$group": {"_id": "$kind", "count": {"$sum": 1}}}])
        }
        # Kinds counted before and gone now are set to 0, not left at their last count.
        _DEAD_KINDS_SHOWN.update(counts, self._handlers)
        for kind in _DEAD_KINDS_SHOWN:
            DEAD_DUE_ITEMS.labels(kind=kind).set(counts.get(kind, 0))
        return counts
