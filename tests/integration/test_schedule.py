"""Single-instance work on the real store: leases, jobs run once per interval per deployment,
stored due times fired at least once (and, without crashes, exactly once).

The first tests drive ``Leases`` and ``DueTimes`` in this process with ``now`` passed in. The
last ones run two real service processes (``scheduled_process.py``) on one store and kill
them with SIGKILL.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self

import pytest
import pytest_asyncio
from prometheus_client import REGISTRY
from pymongo.asynchronous.database import AsyncDatabase

from aftercare.events import cli
from aftercare.events.schedule import (
    DUE_TIMES,
    LEASE_CLAIMS,
    LEASES,
    DueItem,
    DueTimes,
    DueTimeScheduledAgain,
    Jobs,
    Leases,
)

from kafka_helpers import Infrastructure, wait_until
from service_process import ScriptProcess

pytestmark = pytest.mark.integration

Database = AsyncDatabase[dict[str, Any]]
SCHEDULED_PROCESS = Path(__file__).with_name("scheduled_process.py")
T0 = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
PERIOD = timedelta(seconds=15)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# --- leases, with now passed in ------------------------------------------------------------


async def test_one_holder_at_a_time_and_another_takes_over_only_once_it_expired(mongo_db: Database) -> None:
    first, second = Leases(mongo_db, "first", period=PERIOD), Leases(mongo_db, "second", period=PERIOD)

    ours, _ = await first.acquire("every:chores", at(0))
    assert ours is not None and ours.holder == "first" and ours.expires_at == at(15)

    theirs, current = await second.acquire("every:chores", at(14.999))
    assert theirs is None and current is not None and current.holder == "first"

    renewed, _ = await first.acquire("every:chores", at(10))
    assert renewed is not None and renewed.expires_at == at(25)
    assert (await second.acquire("every:chores", at(24)))[0] is None

    taken, _ = await second.acquire("every:chores", at(25))
    assert taken is not None and taken.holder == "second" and taken.term == ours.term + 1

    # The old holder finds out at its next renewal and must stop.
    assert await first.renew("every:chores", at(26)) is None
    assert (await first.acquire("every:chores", at(26)))[0] is None


async def test_a_lease_taken_by_one_of_two_racing_instances_is_held_by_exactly_one(mongo_db: Database) -> None:
    contenders = [Leases(mongo_db, f"instance-{n}", period=PERIOD) for n in range(8)]
    results = await asyncio.gather(*(lease.acquire("every:race", at(0)) for lease in contenders))
    winners = [ours.holder for ours, _ in results if ours is not None]
    assert len(winners) == 1
    # And again when the winner's lease has expired: exactly one takes it over.
    results = await asyncio.gather(
        *(lease.acquire("every:race", at(20)) for lease in contenders if lease.holder not in winners)
    )
    takers = [ours.holder for ours, _ in results if ours is not None]
    assert len(takers) == 1
    stored = await mongo_db[LEASES].find_one({"_id": "every:race"})
    assert stored is not None and stored["holder"] == takers[0]


async def test_a_released_lease_is_taken_at_once_without_waiting_for_expiry(mongo_db: Database) -> None:
    first, second = Leases(mongo_db, "first", period=PERIOD), Leases(mongo_db, "second", period=PERIOD)
    await first.acquire("every:chores", at(0))
    await first.release("every:chores", at(1))
    taken, _ = await second.acquire("every:chores", at(1))
    assert taken is not None and taken.holder == "second"


# --- due times, with now passed in ---------------------------------------------------------


class Recorder:
    """A due handler that records what it was given, and fails while told to."""

    def __init__(self) -> None:
        self.fired: list[DueItem] = []
        self.failures_left = 0

    async def __call__(self, item: DueItem) -> None:
        self.fired.append(item)
        if self.failures_left > 0:
            self.failures_left -= 1
            raise ConnectionError("the customer's webhook did not answer")


async def test_a_due_item_fires_once_after_its_time_and_is_then_removed(mongo_db: Database) -> None:
    due = DueTimes(mongo_db)
    await due.ensure_indexes()
    recorder = Recorder()
    due.on_due("sla-breach", recorder)
    await due.schedule("sla-breach:inc-1", at(60), "sla-breach", {"incident_id": "inc-1", "priority": "P1"})

    assert (await due.poll(at(59.999))).handled == []
    report = await due.poll(at(60))
    assert report.handled == ["sla-breach:inc-1"]
    assert [(item.key, item.payload, item.due_at) for item in recorder.fired] == [
        ("sla-breach:inc-1", {"incident_id": "inc-1", "priority": "P1"}, at(60))
    ]
    assert await due.get("sla-breach:inc-1") is None
    assert (await due.poll(at(600))).handled == []
    assert len(recorder.fired) == 1


async def test_rescheduling_replaces_the_due_time_and_cancel_removes_it(mongo_db: Database) -> None:
    due = DueTimes(mongo_db)
    recorder = Recorder()
    due.on_due("approval-expiry", recorder)
    await due.schedule("approval:run-7", at(60), "approval-expiry", {"run": 7})
    await due.schedule("approval:run-7", at(120), "approval-expiry", {"run": 7, "step": 2})
    await due.schedule("approval:run-8", at(30), "approval-expiry", {"run": 8})
    assert await due.cancel("approval:run-8") is True
    assert await due.cancel("approval:run-8") is False

    assert (await due.poll(at(100))).handled == []
    assert (await due.poll(at(120))).handled == ["approval:run-7"]
    assert [item.payload for item in recorder.fired] == [{"run": 7, "step": 2}]


async def test_items_fire_in_due_order_across_batches(mongo_db: Database) -> None:
    due = DueTimes(mongo_db, batch_size=7, concurrency=1)
    recorder = Recorder()
    due.on_due("digest", recorder)
    for n in reversed(range(25)):
        await due.schedule(f"digest:{n:02d}", at(n), "digest", {"n": n})
    report = await due.poll(at(100))
    assert sorted(report.handled) == [f"digest:{n:02d}" for n in range(25)]
    assert [item.payload["n"] for item in recorder.fired] == list(range(25))
    assert await mongo_db[DUE_TIMES].count_documents({}) == 0


async def test_a_failing_handler_is_retried_with_backoff_and_never_lost(mongo_db: Database) -> None:
    due = DueTimes(mongo_db, retry_base=timedelta(seconds=10), full_scan_every=timedelta(0))
    recorder = Recorder()
    recorder.failures_left = 3
    due.on_due("notification-retry", recorder)
    await due.schedule("send:n-1", at(0), "notification-retry", {"notification": "n-1"})

    assert (await due.poll(at(0))).failed == ["send:n-1"]
    stored = await due.get("send:n-1")
    assert stored is not None and stored.attempts == 1 and stored.due_at == at(10)
    assert stored.last_error == "ConnectionError: the customer's webhook did not answer"
    assert stored.first_due_at == at(0)

    assert (await due.poll(at(9))).failed == []  # waits out its backoff
    assert (await due.poll(at(10))).failed == ["send:n-1"]
    assert (await due.get("send:n-1")).due_at == at(30)  # type: ignore[union-attr]
    assert (await due.poll(at(30))).failed == ["send:n-1"]
    assert (await due.get("send:n-1")).due_at == at(70)  # type: ignore[union-attr]
    assert (await due.poll(at(70))).handled == ["send:n-1"]
    assert [item.attempts for item in recorder.fired] == [0, 1, 2, 3]
    assert await due.get("send:n-1") is None


def deaths(kind: str) -> float:
    return REGISTRY.get_sample_value("aftercare_due_items_total", {"kind": kind, "outcome": "dead"}) or 0.0


def dead_now(kind: str) -> float | None:
    return REGISTRY.get_sample_value("aftercare_due_items_dead", {"kind": kind})


async def test_an_item_failing_every_allowed_attempt_goes_dead_is_listed_and_fires_again_when_replayed(
    mongo_db: Database, infrastructure: Infrastructure
) -> None:
    due = DueTimes(mongo_db, retry_base=timedelta(seconds=10), full_scan_every=timedelta(0), max_attempts=3)
    recorder = Recorder()
    recorder.failures_left = 1_000  # the customer's webhook is down until the test says otherwise
    due.on_due("escalation-step", recorder)
    await due.schedule("escalate:inc-7:level-2", at(0), "escalation-step", {"incident_id": "inc-7", "level": 2})
    deaths_before = deaths("escalation-step")

    assert (await due.poll(at(0))).failed == ["escalate:inc-7:level-2"]
    assert (await due.poll(at(10))).failed == ["escalate:inc-7:level-2"]  # backoff 10 s, then 20 s
    third = await due.poll(at(30))
    assert third.failed == [] and third.dead == ["escalate:inc-7:level-2"]

    # Dead: no longer fired, however much later the poller looks; visible in the metrics.
    assert await due.get("escalate:inc-7:level-2") is None
    assert (await due.poll(at(3600))).dead == [] and len(recorder.fired) == 3
    assert deaths("escalation-step") == deaths_before + 1
    assert dead_now("escalation-step") == 1
    (dead,) = await due.dead_items()
    assert (dead.key, dead.attempts) == ("escalate:inc-7:level-2", 3)
    assert (dead.first_due_at, dead.last_due_at) == (at(0), at(30))
    assert dead.last_error == "ConnectionError: the customer's webhook did not answer"
    assert dead.payload == {"incident_id": "inc-7", "level": 2}

    # The operator's command lists it beside the dead letters, shows it, and refuses unknown keys.
    store = ["--mongo-url", infrastructure.mongo_url, "--database", mongo_db.name]
    listing = io.StringIO()
    assert await cli.run(cli.build_parser().parse_args(["dead-due-times", "list", *store]), listing) == 0
    assert "escalate:inc-7:level-2  escalation-step" in listing.getvalue()
    assert "after 3 attempts" in listing.getvalue() and "webhook did not answer" in listing.getvalue()
    shown = io.StringIO()
    await cli.run(cli.build_parser().parse_args(["dead-due-times", "show", *store, "escalate:inc-7:level-2"]), shown)
    assert json.loads(shown.getvalue())["payload"] == {"incident_id": "inc-7", "level": 2}
    with pytest.raises(cli.CommandError, match="no dead due time 'escalate:inc-9:level-1'"):
        await cli.run(
            cli.build_parser().parse_args(["dead-due-times", "replay", *store, "escalate:inc-9:level-1"]), io.StringIO()
        )

    # After the fix: replayed, due at once with its attempts reset, fired once and gone.
    recorder.failures_left = 0
    replayed = io.StringIO()
    assert (
        await cli.run(
            cli.build_parser().parse_args(["dead-due-times", "replay", *store, "escalate:inc-7:level-2"]), replayed
        )
        == 0
    )
    assert "replayed escalate:inc-7:level-2" in replayed.getvalue()
    assert await due.dead_items() == [] and dead_now("escalation-step") == 0
    assert (await due.poll()).handled == ["escalate:inc-7:level-2"]
    assert recorder.fired[-1].attempts == 0 and recorder.fired[-1].payload["level"] == 2
    assert await due.get("escalate:inc-7:level-2") is None


async def test_a_dead_item_is_not_replayed_over_a_due_time_scheduled_again_since(mongo_db: Database) -> None:
    due = DueTimes(mongo_db, full_scan_every=timedelta(0), max_attempts=1)
    recorder = Recorder()
    recorder.failures_left = 1
    due.on_due("sla-breach", recorder)
    await due.schedule("sla:inc-1", at(0), "sla-breach", {"v": 1})
    assert (await due.poll(at(0))).dead == ["sla:inc-1"]
    await due.schedule("sla:inc-1", at(50), "sla-breach", {"v": 2})
    with pytest.raises(DueTimeScheduledAgain):
        await due.revive("sla:inc-1")
    assert (await due.get("sla:inc-1")).payload == {"v": 2}  # type: ignore[union-attr]
    assert [dead.key for dead in await due.dead_items()] == ["sla:inc-1"]


async def test_an_item_of_a_kind_nobody_handles_is_kept_and_retried(mongo_db: Database) -> None:
    due = DueTimes(mongo_db)
    due.on_due("known", Recorder())
    await due.schedule("mystery:1", at(0), "escalation-step", {})
    assert (await due.poll(at(1))).failed == ["mystery:1"]
    stored = await due.get("mystery:1")
    assert stored is not None and "no handler registered for due items of kind 'escalation-step'" in (
        stored.last_error or ""
    )


async def test_an_item_rescheduled_while_its_handler_runs_stays_scheduled(mongo_db: Database) -> None:
    due = DueTimes(mongo_db)

    async def reschedule_meanwhile(item: DueItem) -> None:
        # The escalation step fires while someone moves it: the move must win.
        await due.schedule(item.key, at(500), item.kind, {"step": 2})

    due.on_due("escalation", reschedule_meanwhile)
    await due.schedule("escalation:inc-9", at(0), "escalation", {"step": 1})
    assert (await due.poll(at(1))).handled == ["escalation:inc-9"]
    stored = await due.get("escalation:inc-9")
    assert stored is not None and stored.due_at == at(500) and stored.payload == {"step": 2}


async def test_an_idle_poll_reads_the_hint_only_and_a_new_item_wakes_it(mongo_db: Database) -> None:
    due = DueTimes(mongo_db, full_scan_every=timedelta(minutes=1))
    recorder = Recorder()
    due.on_due("probe", recorder)
    await due.schedule("probe:later", at(3600), "probe", {})
    assert (await due.poll(at(0))).scanned is True  # the first poll of a process always scans
    for second in (1, 2, 30):
        assert (await due.poll(at(second))).scanned is False
    # Another instance schedules something due sooner: the hint wakes the poller.
    await DueTimes(mongo_db).schedule("probe:soon", at(40), "probe", {})
    assert (await due.poll(at(39))).scanned is False
    report = await due.poll(at(40))
    assert report.scanned is True and report.handled == ["probe:soon"]
    assert (await due.poll(at(50))).scanned is False
    # The safety net: a full scan at least every full_scan_every whatever the hint says.
    assert (await due.poll(at(61))).scanned is True


async def test_due_times_scheduled_together_fire_each_and_are_cancelled_together(mongo_db: Database) -> None:
    due = DueTimes(mongo_db, full_scan_every=timedelta(minutes=1))
    recorder = Recorder()
    due.on_due("sla-breach", recorder)
    assert (await due.poll(at(0))).scanned is True  # the first poll scans; later ones read the hint
    await due.schedule_many(
        [
            ("sla:inc-1:response", at(30), "sla-breach", {"deadline": "response"}),
            ("sla:inc-1:resolution", at(240), "sla-breach", {"deadline": "resolution"}),
            ("sla:inc-2:response", at(40), "sla-breach", {"deadline": "response"}),
            ("sla:inc-2:resolution", at(300), "sla-breach", {"deadline": "resolution"}),
        ]
    )
    assert await due.cancel_many(["sla:inc-2:response", "sla:inc-2:resolution", "sla:never"]) == 2

    assert (await due.poll(at(29))).scanned is False
    assert (await due.poll(at(30))).handled == ["sla:inc-1:response"], "the hint woke the poller"
    assert (await due.poll(at(300))).handled == ["sla:inc-1:resolution"]
    assert [item.payload["deadline"] for item in recorder.fired] == ["response", "resolution"]


async def test_concurrent_schedules_share_hint_writes_and_the_soonest_still_wakes_the_poller(
    mongo_db: Database,
) -> None:
    due = DueTimes(mongo_db, full_scan_every=timedelta(minutes=10))
    recorder = Recorder()
    due.on_due("probe", recorder)
    assert (await due.poll(at(0))).scanned is True
    hint_writes = 0
    lower = due._hint.update_one

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal hint_writes
        hint_writes += 1
        return await lower(*args, **kwargs)

    due._hint.update_one = counted  # type: ignore[method-assign]

    # e.g. 16 lanes of triage each watching an incident's deadlines at once
    await asyncio.gather(*(due.schedule(f"probe:{n}", at(100 + n), "probe", {}) for n in range(40)))

    assert hint_writes < 40, f"{hint_writes} hint writes for 40 concurrent schedules"
    assert (await due.poll(at(99))).scanned is False
    assert (await due.poll(at(100))).handled == ["probe:0"]


# --- two real service processes ------------------------------------------------------------


class ScheduledProcess(ScriptProcess):
    """``scheduled_process.py`` in a child process (see its docstring)."""

    def __init__(self, infrastructure: Infrastructure, db: Database, log_file: Path, *options: str) -> None:
        super().__init__(
            [
                sys.executable,
                str(SCHEDULED_PROCESS),
                *("--bootstrap", infrastructure.bootstrap_servers, "--mongo-url", infrastructure.mongo_url),
                *("--database", db.name),
                *options,
            ],
            log_file,
            name="the service process",
        )
        self.holder = ""

    async def start(self) -> Self:
        await super().start()
        self.holder = await self.expect("READY")
        return self

    async def terminate(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            await self.expect("STOPPED", timeout=60)
            await self.process.wait()


@pytest_asyncio.fixture(loop_scope="session")
async def service_processes(
    infrastructure: Infrastructure, mongo_db: Database, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[ScheduledProcess]]]:
    started: list[ScheduledProcess] = []

    async def start(*options: str) -> ScheduledProcess:
        child = ScheduledProcess(infrastructure, mongo_db, tmp_path / f"service-{len(started)}.log", *options)
        started.append(child)
        return await child.start()

    try:
        yield start
    finally:
        for child in started:
            await child.kill()


INTERVAL_S = 2.0
# Generous next to the interval: on a loaded test machine a process can stall for seconds, and a
# stall longer than the lease is a takeover (and an overlapping run) by design.
LEASE_S = 6.0
OPTIONS = ("--interval", str(INTERVAL_S), "--lease", str(LEASE_S), "--poll", "0.2")


async def runs_of(db: Database) -> list[dict[str, Any]]:
    return [document async for document in db["runs"].find({})]


async def lease_of(db: Database) -> dict[str, Any]:
    document = await db[LEASES].find_one({"_id": Jobs.lease_name("tick")})
    assert document is not None
    return document


async def test_two_processes_run_the_job_exactly_once_per_interval_and_each_due_item_once(
    mongo_db: Database, service_processes: Callable[..., Awaitable[ScheduledProcess]]
) -> None:
    first, second = await asyncio.gather(service_processes(*OPTIONS), service_processes(*OPTIONS))
    due = DueTimes(mongo_db)
    soon = datetime.now(UTC) + timedelta(seconds=1)
    for n in range(20):
        await due.schedule(f"reminder:{n}", soon + timedelta(milliseconds=100 * n), "test-reminder", {"n": n})

    runs = await wait_until(lambda: _at_least(runs_of(mongo_db), 6), timeout=60, message="6 runs of the job")
    await wait_until(lambda: _count(mongo_db, "fired", 20), timeout=30, message="20 due items fired")

    assert await mongo_db["double_runs"].count_documents({}) == 0
    occurrences = sorted(datetime.fromisoformat(run["_id"]) for run in runs if run["_id"] != "first")
    # One run per grid point of the interval, none skipped while both processes live.
    assert [b - a for a, b in itertools.pairwise(occurrences)] == [timedelta(seconds=INTERVAL_S)] * (
        len(occurrences) - 1
    )
    assert {run["holder"] for run in runs} <= {first.holder, second.holder}
    fired = [document async for document in mongo_db["fired"].find({})]
    assert sorted(document["count"] for document in fired) == [1] * 20
    assert await mongo_db[DUE_TIMES].count_documents({}) == 0


async def test_killing_the_holder_hands_the_job_to_the_other_within_one_lease_period(
    mongo_db: Database, service_processes: Callable[..., Awaitable[ScheduledProcess]]
) -> None:
    first, second = await asyncio.gather(service_processes(*OPTIONS), service_processes(*OPTIONS))
    processes = {first.holder: first, second.holder: second}
    await wait_until(lambda: _at_least(runs_of(mongo_db), 2), timeout=60, message="2 runs of the job")

    # Kill the holder while it is between runs (its last run recorded, the next one not begun):
    # the test is about takeover, not about a run cut in half (which would run again, by design).
    async def idle_holder() -> dict[str, Any] | None:
        lease = await lease_of(mongo_db)
        next_run = lease.get("next_run_at")
        if next_run is None or next_run.astimezone(UTC) - datetime.now(UTC) < timedelta(seconds=0.8):
            return None
        return lease

    lease = await wait_until(idle_holder, timeout=30, interval=0.05, message="the holder between two runs")
    victim = processes[lease["holder"]]
    survivor = second if victim is first else first
    runs_before = len(await runs_of(mongo_db))
    await victim.kill()
    killed_at = datetime.now(UTC)
    dead_lease = await lease_of(mongo_db)
    assert dead_lease["holder"] == victim.holder

    async def taken_over() -> dict[str, Any] | None:
        current = await lease_of(mongo_db)
        return current if current["holder"] == survivor.holder else None

    taken = await wait_until(taken_over, timeout=30, interval=0.1, message="the survivor holding the lease")
    # The dead holder's last renewal was at most one lease period before it was killed, and the
    # survivor took over as soon as that expired.
    assert dead_lease["expires_at"].astimezone(UTC) <= killed_at + timedelta(seconds=LEASE_S)
    assert taken["acquired_at"].astimezone(UTC) - killed_at <= timedelta(seconds=LEASE_S)
    assert taken["term"] == dead_lease["term"] + 1

    await wait_until(lambda: _at_least(runs_of(mongo_db), runs_before + 2), timeout=30, message="runs after takeover")
    runs = await runs_of(mongo_db)
    assert {run["holder"] for run in runs[runs_before:]} == {survivor.holder}
    assert await mongo_db["double_runs"].count_documents({}) == 0


async def test_a_due_item_fires_once_after_a_restart(
    mongo_db: Database, service_processes: Callable[..., Awaitable[ScheduledProcess]]
) -> None:
    first, second = await asyncio.gather(service_processes(*OPTIONS), service_processes(*OPTIONS))
    due = DueTimes(mongo_db)
    keys = [f"after-restart:{n}" for n in range(5)]
    when = datetime.now(UTC) + timedelta(seconds=4)
    for key in keys:
        await due.schedule(key, when, "test-reminder", {})
    # Both die before the time comes; nothing of the schedule lives in a process.
    await asyncio.gather(first.kill(), second.kill())
    assert await mongo_db["fired"].count_documents({}) == 0

    await service_processes(*OPTIONS)
    await wait_until(lambda: _count(mongo_db, "fired", 5), timeout=60, message="5 due items fired after the restart")
    await wait_until(lambda: _count(mongo_db, DUE_TIMES, 0), timeout=30, message="fired items removed")
    fired = {document["_id"]: document["count"] async for document in mongo_db["fired"].find({})}
    assert fired == dict.fromkeys(keys, 1)


async def _at_least(found: Awaitable[list[dict[str, Any]]], count: int) -> list[dict[str, Any]] | None:
    documents = await found
    return documents if len(documents) >= count else None


async def _count(db: Database, collection: str, expected: int) -> bool:
    return await db[collection].count_documents({}) == expected


async def test_a_claimer_that_died_between_its_claim_and_the_takeover_does_not_block_the_lease(
    mongo_db: Database,
) -> None:
    first = Leases(mongo_db, "first", period=PERIOD)
    await first.acquire("every:chores", at(0))
    # "ghost" claimed term 2 at expiry and died before moving the lease.
    await mongo_db[LEASE_CLAIMS].insert_one({"_id": "every:chores#2", "holder": "ghost", "at": at(15)})
    second = Leases(mongo_db, "second", period=PERIOD)
    assert (await second.acquire("every:chores", at(16)))[0] is None  # the claim is young: wait
    assert (await second.acquire("every:chores", at(30)))[0] is None  # stale now: dropped
    taken, _ = await second.acquire("every:chores", at(30.5))
    assert taken is not None and taken.holder == "second" and taken.term == 2
