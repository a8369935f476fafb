"""The consumer runner: the loop every service uses to handle events from Kafka.

What it promises:

* offsets are committed manually, only after the handlers' writes (at least once);
* each (event, handler) pair has its effect once: a processed-event record in the service's own
  database, checked before the handler and written after it (for a whole batch at once, before
  the batch's offsets are committed; see ``processed.py``);
* a handler that raises is retried with exponential backoff; after ``max_attempts`` the message
  goes to the dead-letter topic with the error and its original headers, and the loop goes on;
* a message of unknown type or one that fails validation goes straight to the dead-letter topic;
* an unreachable store or broker is not the message's fault: the runner waits and retries
  without counting attempts, so an outage never fills the dead-letter topic;
* ``stop()`` (wired to SIGTERM by the service runtime) finishes the message in hand, commits,
  and closes the consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaConnectionError, KafkaError, KafkaTimeoutError
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from pymongo.errors import ConnectionFailure

from aftercare.events.catalog import EventRejected, parse_envelope
from aftercare.events.envelope import Envelope, Event
from aftercare.events.metrics import EVENTS_CONSUMED, HANDLER_FAILURES, HANDLER_SECONDS
from aftercare.events.processed import ProcessedEventLog, record_id
from aftercare.events.producer import EventProducer
from aftercare.events.topics import dead_letter_topic
from aftercare.events.tracing import current_trace_id, extract_trace_context, tracer

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
DLQ_ORIGIN = "dead_letter.origin"  # topic/partition/offset of the original message


@dataclass(frozen=True)
class RetryPolicy:
    """How often a failing handler is tried before its message is dead-lettered."""

    max_attempts: int = 5
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 10.0
    multiplier: float = 2.0

    def backoff(self, attempt: int) -> float:
        return min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))


def handler_name(handler: Handler) -> str:
    """Stable name of a handler, part of its processed-event records: do not rename lightly."""
    return getattr(handler, "handler_name", None) or f"{handler.__module__}.{handler.__qualname__}"


class ConsumerRunner:
    """Consumes ``topics`` as consumer group ``group_id`` and dispatches to ``handlers``.

    Event types with no handler here are skipped (a topic carries several types; each service
    cares about some). Several instances in the same group share the partitions.
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
        max_batch: int = 200,
        processed_retention: timedelta = timedelta(days=14),
        client_id: str | None = None,
    ) -> None:
        self.group_id = group_id
        self.topics = list(topics)
        self._handlers = {model.TYPE: list(funcs) for model, funcs in handlers.items()}
        self._processed = processed
        self._producer = producer
        self._retry = retry or RetryPolicy()
        self._max_batch = max_batch
        self._processed_retention = processed_retention
        self._consumer = AIOKafkaConsumer(
            *self.topics,
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

    async def wait_assigned(self, timeout_s: float = 30.0) -> None:
        """Wait until the group gave this consumer its partitions (for tests and start-up)."""
        deadline = time.monotonic() + timeout_s
        while not self._consumer.assignment():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.group_id}: no partitions assigned after {timeout_s}s")
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        """Ask the loop to finish the message in hand, commit and close."""
        self._stopping.set()

    async def run(self) -> None:
        """Consume until ``stop()``; returns after the final commit and close."""
        await self._consumer.start()
        log.info("consumer started", group=self.group_id, topics=self.topics)
        try:
            while not self._stopping.is_set():
                fetch = asyncio.ensure_future(self._consumer.getmany(timeout_ms=500, max_records=self._max_batch))
                stop_wait = asyncio.ensure_future(self._stopping.wait())
                await asyncio.wait({fetch, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                stop_wait.cancel()
                if not fetch.done():
                    fetch.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await fetch
                    break
                batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = fetch.result()
                if batch:
                    try:
                        await self._handle_batch(batch)
                    except _Stopping:
                        break
                await self._purge_now_and_then()
        finally:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
            log.info("consumer stopped", group=self.group_id)

    # ---------------------------------------------------------------------------------------

    async def _handle_batch(self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        parsed: list[tuple[TopicPartition, ConsumerRecord[bytes, bytes], Envelope[Event] | EventRejected]] = []
        wanted_records: list[str] = []
        for partition, records in batch.items():
            for record in records:
                try:
                    accepted = parse_envelope(record.value or b"")
                except EventRejected as rejection:
                    parsed.append((partition, record, rejection))
                    continue
                for handler in self._handlers.get(accepted.type, ()):
                    wanted_records.append(record_id(self.group_id, handler_name(handler), accepted.id))
                parsed.append((partition, record, accepted))

        # One write for the whole batch instead of a query per message; see ProcessedEventLog.begin.
        done = await self._transient_retry(lambda: self._processed.begin(wanted_records), "store")

        handled: dict[TopicPartition, int] = {}
        marks: list[tuple[str, str]] = []  # (handler, event id) pairs handled in this batch
        try:
            for partition, record, envelope in parsed:
                if self._stopping.is_set():
                    # Finish only the message in hand; the rest are fetched again after restart.
                    break
                completed = await self._handle_record(record, envelope, done, marks)
                if not completed:
                    break
                handled[partition] = record.offset + 1
        finally:
            # Processed records for the whole batch in one write, then the commit. One write per
            # event would cost a store round trip each and cap a consumer at a few hundred
            # events/s. The price: after a crash before this write, every handler of the batch
            # runs again on redelivery, not just the one in hand; handlers are idempotent anyway
            # (see processed.py), and a record is still never written before its handler's effect.
            if marks:
                await self._transient_retry(lambda: self._processed.mark_many(self.group_id, marks), "store")
            await self._commit(handled)
        # Messages fetched but not handled (stop requested) must be fetched again by whoever
        # owns the partition next; seeking back makes that true for this consumer too.
        for partition, records in batch.items():
            next_offset = handled.get(partition, records[0].offset)
            if next_offset <= records[-1].offset:
                self._consumer.seek(partition, next_offset)

    async def _handle_record(
        self,
        record: ConsumerRecord[bytes, bytes],
        envelope: Envelope[Event] | EventRejected,
        done: set[str],
        marks: list[tuple[str, str]],
    ) -> bool:
        """Handle one message; False if the runner is stopping and the message was not finished."""
        if isinstance(envelope, EventRejected):
            await self._dead_letter(record, envelope, attempts=0)
            return True
        handlers = self._handlers.get(envelope.type, ())
        if not handlers:
            EVENTS_CONSUMED.labels(group=self.group_id, topic=record.topic, outcome="ignored").inc()
            return True

        context = extract_trace_context(record.headers)
        with (
            self._tracer.start_as_current_span(
                f"handle {envelope.type}", context=context, kind=SpanKind.CONSUMER
            ) as span,
            structlog.contextvars.bound_contextvars(
                tenant_id=envelope.tenant_id,
                incident_id=envelope.incident_id,
                event_id=envelope.id,
                event_type=envelope.type,
                trace_id=current_trace_id(),
            ),
        ):
            span.set_attribute("messaging.system", "kafka")
            span.set_attribute("messaging.destination.name", record.topic)
            span.set_attribute("messaging.kafka.consumer.group", self.group_id)
            span.set_attribute("messaging.message.id", envelope.id)
            started = time.perf_counter()
            outcome = "duplicate"
            for handler in handlers:
                name = handler_name(handler)
                processed_id = record_id(self.group_id, name, envelope.id)
                if processed_id in done:
                    continue
                result = await self._run_with_retries(handler, name, envelope, record)
                if result == "stopped":
                    return False
                if result == "failed":
                    span.set_status(trace.Status(trace.StatusCode.ERROR))
                    return True
                # ``done`` was read from the store before the batch; a second copy of this event
                # later in the same batch must see that it has just been handled.
                done.add(processed_id)
                marks.append((name, envelope.id))
                outcome = "handled"
            HANDLER_SECONDS.labels(group=self.group_id, type=envelope.type).observe(time.perf_counter() - started)
            EVENTS_CONSUMED.labels(group=self.group_id, topic=record.topic, outcome=outcome).inc()
            if outcome == "duplicate":
                log.info("event already handled, skipped")
            return True

    async def _run_with_retries(
        self, handler: Handler, name: str, envelope: Envelope[Event], record: ConsumerRecord[bytes, bytes]
    ) -> str:
        attempt = 0
        transient_waits = 0
        while True:
            attempt += 1
            try:
                await handler(envelope)
                return "handled"
            except TRANSIENT_ERRORS as error:
                # The store or broker is away: not the message's fault, do not count it.
                attempt -= 1
                transient_waits += 1
                delay = self._retry.backoff(min(transient_waits, 10))
                log.warning(
                    "infrastructure unavailable while handling; waiting",
                    handler=name,
                    error=str(error),
                    retry_in_s=delay,
                )
            except _Stopping:
                return "stopped"
            except Exception as error:
                HANDLER_FAILURES.labels(group=self.group_id, type=envelope.type).inc()
                if attempt >= self._retry.max_attempts:
                    log.error(
                        "handler failed for good; dead-lettering", handler=name, attempts=attempt, error=repr(error)
                    )
                    await self._dead_letter(record, error, attempts=attempt, handler=name)
                    return "failed"
                delay = self._retry.backoff(attempt)
                log.warning(
                    "handler failed; will retry", handler=name, attempt=attempt, retry_in_s=delay, error=repr(error)
                )
            if await self._sleep_unless_stopping(delay):
                return "stopped"

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
        self, record: ConsumerRecord[bytes, bytes], error: BaseException, *, attempts: int, handler: str | None = None
    ) -> None:
        detail = "".join(traceback.format_exception_only(type(error), error)).strip()
        headers = [
            *list(record.headers or ()),
            (DLQ_ERROR, detail.encode("utf-8", "replace")[:8000]),
            (DLQ_ERROR_TYPE, type(error).__name__.encode()),
            (DLQ_ATTEMPTS, str(attempts).encode()),
            (DLQ_GROUP, self.group_id.encode()),
            (DLQ_ORIGIN, f"{record.topic}/{record.partition}/{record.offset}".encode()),
        ]
        if handler:
            headers.append(("dead_letter.handler", handler.encode()))
        target = dead_letter_topic(record.topic)
        await self._transient_retry(lambda: self._producer.send_raw(target, record.value, record.key, headers), "Kafka")
        EVENTS_CONSUMED.labels(group=self.group_id, topic=record.topic, outcome="dead_lettered").inc()
        log.error(
            "message dead-lettered",
            dead_letter_topic=target,
            origin=f"{record.topic}/{record.partition}/{record.offset}",
            error=detail,
            attempts=attempts,
        )

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as error:
            # The group rebalanced; the new owner gets these messages again and the processed
            # records make that harmless.
            log.warning("commit failed; messages will be redelivered", error=str(error))

    async def _purge_now_and_then(self) -> None:
        now = time.monotonic()
        if now - self._last_purge < 3600:
            return
        self._last_purge = now
        with contextlib.suppress(*TRANSIENT_ERRORS):
            await self._processed.purge_older_than(self._processed_retention)


class _Stopping(Exception):
    """Raised inside a wait when the runner was asked to stop."""
