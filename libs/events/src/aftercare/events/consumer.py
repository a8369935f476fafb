"""The consumer runner: the loop every service uses to handle events from Kafka.

What it promises:

* events of different keys (incidents) are handled concurrently, at most ``concurrency`` at
  once; events of one key are handled strictly one after the other, in partition order;
* offsets are committed manually, only below the lowest unfinished event of each partition,
  and only after the processed-event records of everything below it are written (at least once);
* each (event, handler) pair has its effect once: a processed-event record in the service's own
  database, checked before the handler and written after it (in bulk, before the commit that
  covers it; see ``processed.py``), and checked again just before the handler when the event
  may have been handled meanwhile (a redelivery or a second copy);
* a handler that raises does not hold anyone else up: its event moves to the **retry stage**,
  and the key's later events wait behind it there, in order, while other keys flow; it is
  retried at a due time with exponential backoff, and after ``RetryPolicy.max_attempts`` it goes
  to the dead-letter topic with the error, its origin and its original headers;
* a message of unknown type or one that fails validation (including a version newer than this
  code knows) goes straight to the dead-letter topic;
* an unreachable store or broker is not the message's fault: the runner waits and retries
  without counting attempts, so an outage never fills the dead-letter topic;
* ``stop()`` (wired to SIGTERM by the service runtime) finishes the events in hand, commits, and
  closes the consumer; partitions taken away by a rebalance are finished and committed the same
  way before they are given up.

Why the retry stage is a due time in the service's store, not retry topics with delays:

* Order per key. A retry topic moves a failed event out of its partition, so the key's next
  event would overtake it; keeping them in order would need a "this key is blocked" record
  somewhere durable anyway, which is the store. The stage keeps the failed event *and* the key's
  later events in one document, in order, so order per key holds across retries and restarts.
* The partition moves on. Events in the stage count as finished for the commit, so one failing
  customer webhook neither pins its partition's offset (a restart would re-read everything after
  it) nor fills the runner's memory with its backlog, however long it fails.
* No extra topics or consumers. Retry topics need a topic per delay and a consumer per topic in
  every group; the stage is one collection in a database the service has anyway, with
  single-document writes only (no transactions on the embedded store).
* Single instance per key. A key's document is only touched by the runner that owns the key's
  partition, so retries run exactly where the key's next events arrive, and a rebalance hands
  both over together (the new owner loads the stage's keys for its partitions).

The price: a failing event costs a few store writes, and a key's events in the stage are read
back from the store when their turn comes. The first attempt is made as soon as the event
arrives; only a failure involves the stage.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaConnectionError, KafkaError, KafkaTimeoutError
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from pymongo.errors import ConnectionFailure

from aftercare.events.catalog import EventRejected, parse_envelope
from aftercare.events.envelope import Envelope, Event
from aftercare.events.metrics import CONSUMER_LAG, DEAD_LETTERS, EVENTS_CONSUMED, HANDLER_FAILURES, HANDLER_SECONDS
from aftercare.events.processed import ProcessedEventLog, record_id
from aftercare.events.producer import EventProducer
from aftercare.events.retry_stage import ParkedKey, RetryStage, StagedEvent
from aftercare.events.topics import dead_letter_topic
from aftercare.events.tracing import context_with_trace, extract_trace_context, spans_recorded, tracer

log = structlog.stdlib.get_logger("aftercare.events.consumer")

Handler = Callable[[Envelope[Any]], Awaitable[None]]
HandlerTable = Mapping[type[Event], Sequence[Handler]]

# Failures of the infrastructure rather than of the message: wait, never dead-letter.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionFailure,
    KafkaConnectionError,
    KafkaTimeoutError,
)

# Headers added to a dead letter, beside the original ones.
DLQ_ERROR = "dead_letter.error"
DLQ_ERROR_TYPE = "dead_letter.error_type"
DLQ_ATTEMPTS = "dead_letter.attempts"
DLQ_GROUP = "dead_letter.consumer_group"
DLQ_HANDLER = "dead_letter.handler"
DLQ_ORIGIN = "dead_letter.origin"  # topic/partition/offset of the original message

DEFAULT_CONCURRENCY = 16


@dataclass(frozen=True)
class RetryPolicy:
    """How often a failing handler is tried before its message is dead-lettered.

    Attempt 1 is made when the event arrives; attempt ``n + 1`` is due ``backoff(n)`` seconds
    after attempt ``n`` failed. Only the failing key waits meanwhile.
    """

    max_attempts: int = 5
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 10.0
    multiplier: float = 2.0

    def backoff(self, attempt: int) -> float:
        return min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))


def handler_name(handler: Handler) -> str:
    """Stable name of a handler, part of its processed-event records: do not rename lightly."""
    return getattr(handler, "handler_name", None) or f"{handler.__module__}.{handler.__qualname__}"


Record: TypeAlias = ConsumerRecord[bytes, bytes]
LaneId = tuple[str, int, bytes | str]  # topic, partition, key (or a stand-in for a record without one)


@dataclass
class _Message:
    """A fetched record on its way through a lane."""

    partition: TopicPartition
    record: Record
    envelope: Envelope[Event] | EventRejected
    generation: int
    skip: set[str] = field(default_factory=set)  # record ids processed before this delivery
    recheck: set[str] = field(default_factory=set)  # record ids that may have been processed meanwhile


@dataclass
class _RetryDue:
    """The key's first event in the retry stage is due for another attempt."""


@dataclass
class _Lane:
    """The events of one key, handled one after the other."""

    items: deque[_Message | _RetryDue] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None


@dataclass
class _PartitionProgress:
    """Which fetched offsets of a partition are finished; the commit stops at the first that is not."""

    generation: int
    fetched: deque[int] = field(default_factory=deque)
    finished: set[int] = field(default_factory=set)
    next_offset: int | None = None  # one past the last fetched
    committed: int = -1

    def fetch(self, offset: int) -> None:
        self.fetched.append(offset)
        self.next_offset = offset + 1

    def finish(self, offset: int) -> None:
        self.finished.add(offset)

    def position(self) -> int | None:
        """The offset to commit: everything below it is finished."""
        while self.fetched and self.fetched[0] in self.finished:
            self.finished.discard(self.fetched.popleft())
        if self.fetched:
            return self.fetched[0]
        return self.next_offset


class ConsumerRunner:
    """Consumes ``topics`` as consumer group ``group_id`` and dispatches to ``handlers``.

    Event types with no handler here are skipped (a topic carries several types; each service
    cares about some). Several instances in the same group share the partitions. Up to
    ``concurrency`` events of different keys are handled at once (1: one at a time); at most
    ``max_buffered`` fetched events wait for their turn before fetching pauses.
    """

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        group_id: str,
        topics: Sequence[str],
        handlers: HandlerTable,
        processed: ProcessedEventLog,
        producer: EventProducer,
        retry: RetryPolicy | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        retry_stage: RetryStage | None = None,
        max_batch: int = 200,
        max_buffered: int = 2000,
        commit_interval_s: float = 0.2,
        processed_retention: timedelta = timedelta(days=14),
        client_id: str | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.group_id = group_id
        self.topics = list(topics)
        self.concurrency = concurrency
        self._handlers = {model.TYPE: list(funcs) for model, funcs in handlers.items()}
        self._processed = processed
        self._stage = retry_stage or RetryStage(processed.database)
        self._producer = producer
        self._retry = retry or RetryPolicy()
        self._max_batch = max_batch
        self._max_buffered = max(max_buffered, max_batch)
        self._commit_interval_s = commit_interval_s
        self._processed_retention = processed_retention
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            group_id=group_id,
            client_id=client_id or group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        self._stopping = asyncio.Event()
        self._last_purge = 0.0
        # Once, not per message: the SDK builds a new tracer on every call. (Made before tracing
        # is configured, it is a proxy that follows the provider installed later.)
        self._tracer = tracer()
        # Decided again when ``run`` starts (tracing is configured after the runner is made).
        self._record_spans = spans_recorded()

        self._slots = asyncio.Semaphore(concurrency)
        self._lanes: dict[LaneId, _Lane] = {}
        self._progress: dict[TopicPartition, _PartitionProgress] = {}
        self._generations: dict[TopicPartition, int] = {}
        self._buffered = 0
        self._paused = False
        self._parked: dict[LaneId, ParkedKey] = {}
        self._retry_queued: set[LaneId] = set()
        self._due_changed = asyncio.Event()
        # Processed records not yet written (written in bulk before each commit), and their ids,
        # so that a second copy of an event handled in the meantime is recognised.
        self._pending_marks: list[tuple[str, str]] = []
        self._unwritten: set[str] = set()
        self._checkpoint_lock = asyncio.Lock()
        self._failure: BaseException | None = None
        self._metric_children: dict[tuple[str, str], Any] = {}
        # Partitions being given away (nothing new starts there) and events in hand per partition.
        self._revoking: set[tuple[str, int]] = set()
        self._in_hand: dict[tuple[str, int], int] = {}

    async def wait_assigned(self, timeout_s: float = 30.0) -> None:
        """Wait until the group gave this consumer its partitions (for tests and start-up)."""
        deadline = time.monotonic() + timeout_s
        while not self._consumer.assignment():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.group_id}: no partitions assigned after {timeout_s}s")
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        """Ask the loop to finish the events in hand, commit and close."""
        self._stopping.set()

    async def run(self) -> None:
        """Consume until ``stop()``; returns after the final commit and close."""
        self._record_spans = spans_recorded()
        await self._consumer.start()
        self._consumer.subscribe(self.topics, listener=_Rebalance(self))
        log.info("consumer started", group=self.group_id, topics=self.topics, concurrency=self.concurrency)
        retry_timer = asyncio.create_task(self._retry_timer(), name=f"{self.group_id}-retry-timer")
        try:
            last_checkpoint = time.monotonic()
            while not self._stopping.is_set():
                self._pause_when_full()
                fetch = asyncio.ensure_future(
                    self._consumer.getmany(timeout_ms=100 if self._paused else 500, max_records=self._max_batch)
                )
                stop_wait = asyncio.ensure_future(self._stopping.wait())
                await asyncio.wait({fetch, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                stop_wait.cancel()
                if not fetch.done():
                    fetch.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await fetch
                    break
                batch: dict[TopicPartition, list[Record]] = fetch.result()
                if batch:
                    try:
                        await self._accept(batch)
                    except _Stopping:
                        break
                if time.monotonic() - last_checkpoint >= self._commit_interval_s:
                    await self._checkpoint()
                    last_checkpoint = time.monotonic()
                    self._record_lag()
                await self._purge_now_and_then()
        finally:
            self._stopping.set()
            retry_timer.cancel()
            # The events in hand finish (each lane stops after its current one), then the commit.
            lanes = [lane.task for lane in self._lanes.values() if lane.task is not None]
            if lanes:
                await asyncio.gather(*lanes, return_exceptions=True)
            with contextlib.suppress(asyncio.CancelledError):
                await retry_timer
            with contextlib.suppress(_Stopping):
                await self._checkpoint(final=True)
            with contextlib.suppress(Exception):
                await self._consumer.stop()
            log.info("consumer stopped", group=self.group_id)
        if self._failure is not None:
            raise self._failure

    # --- fetching and dispatching -------------------------------------------------------------

    def _pause_when_full(self) -> None:
        # Pausing instead of not fetching keeps the consumer polling, so the group does not
        # think it died while slow handlers work through a full buffer.
        if self._buffered >= self._max_buffered and not self._paused:
            self._consumer.pause(*self._consumer.assignment())
            self._paused = True
        elif self._buffered < self._max_buffered // 2 and self._paused:
            self._consumer.resume(*self._consumer.assignment())
            self._paused = False

    async def _accept(self, batch: dict[TopicPartition, list[Record]]) -> None:
        messages: list[_Message] = []
        wanted: dict[str, int] = {}
        for partition, records in batch.items():
            progress = self._progress.get(partition)
            if progress is None:
                continue  # revoked while the fetch was under way
            for record in records:
                try:
                    envelope: Envelope[Event] | EventRejected = parse_envelope(record.value or b"")
                except EventRejected as rejection:
                    envelope = rejection
                messages.append(_Message(partition, record, envelope, progress.generation))
                if not isinstance(envelope, EventRejected):
                    for handler in self._handlers.get(envelope.type, ()):
                        rid = record_id(self.group_id, handler_name(handler), envelope.id)
                        wanted[rid] = wanted.get(rid, 0) + 1

        # One read for the whole batch instead of one per message; see ProcessedEventLog.begin.
        processed = await self._transient_retry(lambda: self._processed.begin(wanted), "store")
        # Several copies in one batch: the first one's record is written later, so the others
        # must look again when their turn comes. A copy in a later batch finds the record, or,
        # until it is written, the id in ``_unwritten`` (one lane handles an event's copies in turn).
        repeated = {rid for rid, count in wanted.items() if count > 1}
        for message in messages:
            if not isinstance(message.envelope, EventRejected):
                for handler in self._handlers.get(message.envelope.type, ()):
                    rid = record_id(self.group_id, handler_name(handler), message.envelope.id)
                    if rid in processed:
                        message.skip.add(rid)
                    elif rid in repeated:
                        message.recheck.add(rid)
            progress = self._progress.get(message.partition)
            if progress is None or progress.generation != message.generation:
                continue  # revoked while the batch was being begun: the next owner reads it
            progress.fetch(message.record.offset)
            self._buffered += 1
            self._enqueue(_lane_id(message.record), message)

    def _enqueue(self, lane_id: LaneId, item: _Message | _RetryDue) -> None:
        lane = self._lanes.get(lane_id)
        if lane is None:
            lane = self._lanes[lane_id] = _Lane()
        lane.items.append(item)
        if lane.task is None and not self._stopping.is_set():
            lane.task = asyncio.create_task(self._drain(lane_id, lane))

    async def _drain(self, lane_id: LaneId, lane: _Lane) -> None:
        try:
            while lane.items and not self._stopping.is_set():
                item = lane.items[0]
                async with self._slots:
                    if self._stopping.is_set():
                        break
                    where = (lane_id[0], lane_id[1])
                    self._in_hand[where] = self._in_hand.get(where, 0) + 1
                    try:
                        if isinstance(item, _RetryDue):
                            self._retry_queued.discard(lane_id)
                            await self._retry_parked(lane_id)
                        else:
                            await self._process(lane_id, item)
                    finally:
                        self._in_hand[where] -= 1
                lane.items.popleft()
        except _Stopping:
            pass
        except Exception as error:  # a bug or a store error that is not an outage: stop loudly
            log.exception("consumer lane failed; stopping the consumer", group=self.group_id)
            self._failure = self._failure or error
            self._stopping.set()
        finally:
            lane.task = None
            if not lane.items and self._lanes.get(lane_id) is lane:
                del self._lanes[lane_id]

    def _finish(self, message: _Message) -> None:
        progress = self._progress.get(message.partition)
        self._buffered -= 1
        if progress is not None and progress.generation == message.generation:
            progress.finish(message.record.offset)

    def _current(self, message: _Message) -> bool:
        progress = self._progress.get(message.partition)
        return (
            progress is not None
            and progress.generation == message.generation
            and (message.partition.topic, message.partition.partition) not in self._revoking
        )

    # --- one event ----------------------------------------------------------------------------

    async def _process(self, lane_id: LaneId, message: _Message) -> None:
        if not self._current(message):
            self._buffered -= 1  # its partition was revoked: the new owner reads it again
            return
        record, envelope = message.record, message.envelope
        if isinstance(envelope, EventRejected):
            await self._dead_letter(_staged(record), envelope, attempts=0)
            self._finish(message)
            return
        handlers = self._handlers.get(envelope.type, ())
        if not handlers:
            self._consumed(record.topic, "ignored").inc()
            self._finish(message)
            return
        parked = self._parked.get(lane_id)
        if parked is not None:
            if record.offset > parked.last_offset:  # else: in the stage already (redelivered)
                await self._transient_retry(lambda: self._stage.append(parked, _staged(record)), "store")
                parked.last_offset = record.offset
                log.info(
                    "event waits behind its key's failing event",
                    event_id=envelope.id,
                    incident_id=envelope.incident_id,
                    key_attempts=parked.attempts,
                )
            self._finish(message)
            return

        outcome = await self._run_handlers(record.topic, record.headers, envelope, message.skip, message.recheck)
        if outcome is _STOPPED:
            return  # not finished: fetched again after the restart
        if isinstance(outcome, _Failed):
            await self._after_failure(lane_id, _staged(record), envelope, outcome, attempts=1, first=True)
        self._finish(message)

    async def _run_handlers(
        self,
        topic: str,
        headers: Sequence[tuple[str, bytes]] | None,
        envelope: Envelope[Event],
        skip: set[str],
        recheck: set[str],
    ) -> object:
        """Run the event's handlers that have not had their effect yet: _HANDLED, _Failed or _STOPPED."""
        context = extract_trace_context(headers)
        if not self._record_spans:
            # No exporter reads spans, so none is made per event (it was about a tenth of the
            # runner's CPU per event). The publisher's context (or a fresh root) becomes current
            # instead: logs and the events the handlers publish carry the same trace id as under
            # a span of our own; those events name the publisher's span as parent instead of an
            # unrecorded one in between.
            token = otel_context.attach(context_with_trace(context))
            try:
                return await self._run_handlers_with_log_context(
                    topic, envelope, skip, recheck, trace.get_current_span()
                )
            finally:
                otel_context.detach(token)
        with self._tracer.start_as_current_span(
            f"handle {envelope.type}",
            context=context,
            kind=SpanKind.CONSUMER,
            # Given at the start, not set one by one: the SDK takes its lock once, not four times.
            attributes={
                "messaging.system": "kafka",
                "messaging.destination.name": topic,
                "messaging.kafka.consumer.group": self.group_id,
                "messaging.message.id": envelope.id,
            },
        ) as span:
            return await self._run_handlers_with_log_context(topic, envelope, skip, recheck, span)

    async def _run_handlers_with_log_context(
        self, topic: str, envelope: Envelope[Event], skip: set[str], recheck: set[str], span: trace.Span
    ) -> object:
        span_context = span.get_span_context()
        # Tokens, not ``bound_contextvars``: that one copies the whole context to save what
        # it overwrites, per event (a tenth of the runner's CPU in a profile).
        tokens = structlog.contextvars.bind_contextvars(
            tenant_id=envelope.tenant_id,
            incident_id=envelope.incident_id,
            event_id=envelope.id,
            event_type=envelope.type,
            trace_id=format(span_context.trace_id, "032x") if span_context.is_valid else None,
        )
        try:
            return await self._run_handlers_in_span(topic, envelope, skip, recheck, span)
        finally:
            structlog.contextvars.reset_contextvars(**tokens)

    async def _run_handlers_in_span(
        self, topic: str, envelope: Envelope[Event], skip: set[str], recheck: set[str], span: trace.Span
    ) -> object:
        started = time.perf_counter()
        outcome = "duplicate"
        ids = [
            (handler, name, record_id(self.group_id, name, envelope.id))
            for handler in self._handlers.get(envelope.type, ())
            for name in (handler_name(handler),)
        ]
        # Records that another copy of this event may have written meanwhile: look again now.
        if recheck:
            unknown = [rid for _, _, rid in ids if rid in recheck and rid not in self._unwritten]
            if unknown:
                skip = skip | await self._transient_retry(lambda: self._processed.already_processed(unknown), "store")
        for handler, name, processed_id in ids:
            if processed_id in skip or processed_id in self._unwritten:
                continue
            result = await self._call(handler, name, envelope)
            if result is _STOPPED:
                return _STOPPED
            if isinstance(result, _Failed):
                span.set_status(trace.Status(trace.StatusCode.ERROR))
                HANDLER_FAILURES.labels(group=self.group_id, type=envelope.type).inc()
                return result
            self._pending_marks.append((name, envelope.id))
            self._unwritten.add(processed_id)
            outcome = "handled"
        self._handler_seconds(envelope.type).observe(time.perf_counter() - started)
        self._consumed(topic, outcome).inc()
        if outcome == "duplicate":
            log.info("event already handled, skipped")
        return _HANDLED

    async def _call(self, handler: Handler, name: str, envelope: Envelope[Event]) -> object:
        """One attempt of one handler; outages of the store or broker are waited out in place."""
        waits = 0
        while True:
            try:
                await handler(envelope)
                return _HANDLED
            except TRANSIENT_ERRORS as error:
                # The store or broker is away: not the message's fault, do not count it.
                waits += 1
                delay = self._retry.backoff(min(waits, 10))
                log.warning(
                    "infrastructure unavailable while handling; waiting",
                    handler=name,
                    error=str(error),
                    retry_in_s=delay,
                )
                if await self._sleep_unless_stopping(delay):
                    return _STOPPED
            except _Stopping:
                return _STOPPED
            except Exception as error:
                return _Failed(name, error)

    # --- the retry stage ----------------------------------------------------------------------

    async def _after_failure(
        self,
        lane_id: LaneId,
        event: StagedEvent,
        envelope: Envelope[Event],
        failure: _Failed,
        *,
        attempts: int,
        first: bool,
    ) -> bool:
        """Dead-letter the event after its last attempt (True), or schedule the next one (False)."""
        if attempts >= self._retry.max_attempts:
            log.error(
                "handler failed for good; dead-lettering",
                handler=failure.handler,
                attempts=attempts,
                error=repr(failure.error),
                event_id=envelope.id,
                incident_id=envelope.incident_id,
            )
            await self._dead_letter(event, failure.error, attempts=attempts, handler=failure.handler)
            return True
        delay = self._retry.backoff(attempts)
        due_at = datetime.now(UTC) + timedelta(seconds=delay)
        error_text = _describe(failure.error)
        if first:
            parked = ParkedKey(
                document_id=self._stage.document_id(self.group_id, event.topic, _key_text(lane_id)),
                topic=event.topic,
                partition=event.partition,
                key=event.key,
                attempts=attempts,
                due_at=due_at,
                last_offset=event.offset,
                last_error=error_text,
            )
            await self._transient_retry(lambda: self._stage.park(self.group_id, parked, event), "store")
            self._parked[lane_id] = parked
        else:
            parked = self._parked[lane_id]
            parked.attempts, parked.due_at, parked.last_error = attempts, due_at, error_text
            await self._transient_retry(lambda: self._stage.reschedule(parked), "store")
        self._due_changed.set()
        log.warning(
            "handler failed; the key's events wait in the retry stage",
            handler=failure.handler,
            attempt=attempts,
            retry_in_s=delay,
            error=repr(failure.error),
            event_id=envelope.id,
            incident_id=envelope.incident_id,
        )
        return False

    async def _retry_parked(self, lane_id: LaneId) -> None:
        """Work through the key's events in the stage, first one first, until one fails again."""
        parked = self._parked.get(lane_id)
        where = (lane_id[0], lane_id[1])
        if parked is None or where in self._revoking or where not in _pairs(self._progress):
            return  # released, or its partition is being given away
        waiting = list(await self._transient_retry(lambda: self._stage.events(parked), "store"))
        while waiting:
            if self._stopping.is_set():
                return  # the due time stays in the store; the next owner or start tries again
            event = waiting[0]
            try:
                envelope = parse_envelope(event.value or b"")
            except EventRejected as rejection:
                await self._dead_letter(event, rejection, attempts=0)
            else:
                ids = {
                    record_id(self.group_id, handler_name(h), envelope.id)
                    for h in self._handlers.get(envelope.type, ())
                }
                outcome = await self._run_handlers(event.topic, event.headers, envelope, set(), ids)
                if outcome is _STOPPED:
                    return
                if isinstance(outcome, _Failed):
                    if not await self._after_failure(
                        lane_id, event, envelope, outcome, attempts=parked.attempts + 1, first=False
                    ):
                        return
                else:
                    # Written now, not with the next commit: the stage forgets the event next.
                    async with self._checkpoint_lock:
                        await self._write_marks()
            parked.attempts, parked.last_error = 0, ""
            await self._transient_retry(lambda: self._stage.remove_first(parked), "store")
            waiting.pop(0)
        await self._transient_retry(lambda: self._stage.release(parked), "store")
        del self._parked[lane_id]
        log.info("key left the retry stage; its events flow again", key=_key_text(lane_id))

    async def _retry_timer(self) -> None:
        """Queue each parked key's retry in its lane when its due time comes."""
        while not self._stopping.is_set():
            self._due_changed.clear()
            now = datetime.now(UTC)
            next_due: datetime | None = None
            for lane_id, parked in list(self._parked.items()):
                if lane_id in self._retry_queued:
                    continue
                if parked.due_at <= now:
                    self._retry_queued.add(lane_id)
                    self._enqueue(lane_id, _RetryDue())
                elif next_due is None or parked.due_at < next_due:
                    next_due = parked.due_at
            wait = 1.0 if next_due is None else max(0.0, min(1.0, (next_due - now).total_seconds()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._due_changed.wait(), timeout=wait)

    # --- rebalances -----------------------------------------------------------------------------

    async def _on_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        partitions = list(assigned)
        for partition in partitions:
            generation = self._generations.get(partition, 0) + 1
            self._generations[partition] = generation
            self._progress[partition] = _PartitionProgress(generation)
        by_topic: dict[str, list[int]] = {}
        for partition in partitions:
            by_topic.setdefault(partition.topic, []).append(partition.partition)
        for topic, numbers in by_topic.items():
            load = functools.partial(self._stage.load, self.group_id, topic, numbers)
            for parked in await self._transient_retry(load, "store"):
                self._parked[_parked_lane_id(parked)] = parked
        if self._parked:
            self._due_changed.set()
        log.info("partitions assigned", group=self.group_id, partitions=[str(p) for p in partitions])

    async def _on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        partitions = set(revoked)
        if not partitions:
            return
        # Nothing new starts on these partitions; the events in hand there finish, so that their
        # offsets can be committed before the next owner starts (queued ones it reads again).
        pairs = _pairs(partitions)
        self._revoking |= pairs
        try:
            deadline = time.monotonic() + 30
            # A short poll: rebalances are rare, and an event per lane would cost on every event.
            while time.monotonic() < deadline and any(self._in_hand.get(pair, 0) for pair in pairs):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            with contextlib.suppress(_Stopping):
                await self._checkpoint(only=partitions)
        finally:
            for partition in partitions:
                self._progress.pop(partition, None)
            for lane_id in [lane_id for lane_id in self._parked if (lane_id[0], lane_id[1]) in pairs]:
                del self._parked[lane_id]
                self._retry_queued.discard(lane_id)
            self._revoking -= pairs
        log.info("partitions revoked", group=self.group_id, partitions=[str(p) for p in partitions])

    # --- commits --------------------------------------------------------------------------------

    async def _write_marks(self) -> None:
        marks, self._pending_marks = self._pending_marks, []
        if not marks:
            return
        try:
            await self._transient_retry(lambda: self._processed.mark_many(self.group_id, marks), "store")
        except _Stopping:
            self._pending_marks[:0] = marks
            raise
        for handler, event_id in marks:
            self._unwritten.discard(record_id(self.group_id, handler, event_id))

    async def _checkpoint(self, *, only: set[TopicPartition] | None = None, final: bool = False) -> None:
        """Write the processed records, then commit every partition up to its first unfinished event."""
        async with self._checkpoint_lock:
            # Positions first: the records of every event finished before this point are in
            # ``_pending_marks`` already (a record is queued before its event is finished).
            positions: dict[TopicPartition, int] = {}
            for partition, progress in self._progress.items():
                if only is not None and partition not in only:
                    continue
                position = progress.position()
                if position is not None and position > progress.committed:
                    positions[partition] = position
            if final:
                # The last chance to write them: a stop was requested, so waits end at once.
                marks = self._pending_marks
                self._pending_marks = []
                if marks:
                    try:
                        await self._processed.mark_many(self.group_id, marks)
                    except TRANSIENT_ERRORS as error:
                        log.warning("store unavailable at stop; not committing", error=str(error))
                        return
            else:
                await self._write_marks()
            if not positions:
                return
            try:
                await self._consumer.commit(positions)
            except (CommitFailedError, KafkaError) as error:
                # The group rebalanced; the new owner gets these messages again and the processed
                # records make that harmless.
                log.warning("commit failed; messages will be redelivered", error=str(error))
                return
            for partition, position in positions.items():
                if partition in self._progress:
                    self._progress[partition].committed = position

    def _record_lag(self) -> None:
        # The high watermark comes with every fetch response; no extra request to the broker.
        for partition, progress in self._progress.items():
            end = self._consumer.highwater(partition)
            if end is None:
                continue
            done = progress.committed if progress.committed >= 0 else (progress.next_offset or 0)
            CONSUMER_LAG.labels(group=self.group_id, topic=partition.topic, partition=str(partition.partition)).set(
                max(0, end - done)
            )

    # --- shared --------------------------------------------------------------------------------

    def _consumed(self, topic: str, outcome: str) -> Any:
        # Children cached: ``labels()`` costs a lock and a dict lookup per call, per event.
        key = (topic, outcome)
        child = self._metric_children.get(key)
        if child is None:
            child = self._metric_children[key] = EVENTS_CONSUMED.labels(
                group=self.group_id, topic=topic, outcome=outcome
            )
        return child

    def _handler_seconds(self, event_type: str) -> Any:
        key = ("seconds", event_type)
        child = self._metric_children.get(key)
        if child is None:
            child = self._metric_children[key] = HANDLER_SECONDS.labels(group=self.group_id, type=event_type)
        return child

    async def _sleep_unless_stopping(self, delay: float) -> bool:
        """Sleep ``delay`` seconds; True if a stop was requested meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=delay)
        return self._stopping.is_set()

    async def _transient_retry(self, operation: Callable[[], Awaitable[Any]], what: str) -> Any:
        waits = 0
        while True:
            try:
                return await operation()
            except TRANSIENT_ERRORS as error:
                waits += 1
                delay = self._retry.backoff(min(waits, 10))
                log.warning(f"{what} unavailable; waiting", error=str(error), retry_in_s=delay)
                if await self._sleep_unless_stopping(delay):
                    raise _Stopping() from error

    async def _dead_letter(
        self, event: StagedEvent, error: BaseException, *, attempts: int, handler: str | None = None
    ) -> None:
        detail = _describe(error)
        origin = f"{event.topic}/{event.partition}/{event.offset}"
        headers = [
            *event.headers,
            (DLQ_ERROR, detail.encode("utf-8", "replace")[:8000]),
            (DLQ_ERROR_TYPE, type(error).__name__.encode()),
            (DLQ_ATTEMPTS, str(attempts).encode()),
            (DLQ_GROUP, self.group_id.encode()),
            (DLQ_ORIGIN, origin.encode()),
        ]
        if handler:
            headers.append((DLQ_HANDLER, handler.encode()))
        target = dead_letter_topic(event.topic)
        await self._transient_retry(lambda: self._producer.send_raw(target, event.value, event.key, headers), "Kafka")
        self._consumed(event.topic, "dead_lettered").inc()
        DEAD_LETTERS.labels(group=self.group_id, topic=event.topic, error_type=type(error).__name__).inc()
        log.error("message dead-lettered", dead_letter_topic=target, origin=origin, error=detail, attempts=attempts)

    async def _purge_now_and_then(self) -> None:
        now = time.monotonic()
        if now - self._last_purge < 3600:
            return
        self._last_purge = now
        with contextlib.suppress(*TRANSIENT_ERRORS):
            await self._processed.purge_older_than(self._processed_retention)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: ConsumerRunner) -> None:
        self._runner = runner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        try:
            await self._runner._on_revoked(revoked)
        except Exception:
            log.exception("finishing revoked partitions failed; their events will be redelivered")

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        with contextlib.suppress(_Stopping):
            await self._runner._on_assigned(assigned)


@dataclass(frozen=True)
class _Failed:
    handler: str
    error: Exception


_HANDLED = object()
_STOPPED = object()


class _Stopping(Exception):
    """Raised inside a wait when the runner was asked to stop."""


def _describe(error: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(error), error)).strip()


def _lane_id(record: Record) -> LaneId:
    # A record without a key has no order to keep: a lane of its own.
    return (record.topic, record.partition, record.key if record.key is not None else f"~{record.offset}")


def _parked_lane_id(parked: ParkedKey) -> LaneId:
    if parked.key is not None:
        return (parked.topic, parked.partition, parked.key)
    return (parked.topic, parked.partition, parked.document_id.rsplit("|", 1)[1])


def _key_text(lane_id: LaneId) -> str:
    key = lane_id[2]
    return key.decode("utf-8", "backslashreplace") if isinstance(key, bytes) else key


def _pairs(partitions: Iterable[TopicPartition]) -> set[tuple[str, int]]:
    return {(partition.topic, partition.partition) for partition in partitions}


def _staged(record: Record) -> StagedEvent:
    return StagedEvent(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        headers=tuple(record.headers or ()),
    )
