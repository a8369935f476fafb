"""The ``aftercare`` command: what an operator runs against a deployment.

    aftercare dead-letters list   [--topic TOPIC]... [--json]
    aftercare dead-letters show   --topic TOPIC PARTITION:OFFSET | --event-id ID
    aftercare dead-letters replay --topic TOPIC PARTITION:OFFSET... | --event-id ID... [--dry-run]
    aftercare dead-due-times list   [--database DB]... [--kind KIND] [--json]
    aftercare dead-due-times show   --database DB KEY
    aftercare dead-due-times replay --database DB KEY... [--dry-run]

Every command reads the broker address from ``--bootstrap-servers`` or
``AFTERCARE_KAFKA_BOOTSTRAP_SERVERS``. ``--topic`` takes a topic or its dead-letter twin
(``aftercare.incidents`` and ``aftercare.incidents.dead-letter`` mean the same here).

Replaying sends the dead letter's value, key and original headers back to the topic it came
from (its ``dead_letter.origin``); the event keeps its id, so consumers that handled it already
skip it (processed-event records) and the one that failed applies it once. Replaying the same
dead letter twice is therefore harmless. Dead letters stay on their topic after a replay (Kafka
topics are append-only); the replayed copy carries ``dead_letter.replayed_from``.

Dead due times are the other thing that waits for an operator: stored due times (SLA breaches,
escalation steps, retries of a send, ...) whose handler failed every allowed attempt. They live
in the owning service's database (collection ``due_times_dead``), so these commands read the
store from ``--mongo-url`` or ``AFTERCARE_MONGO_URL``; ``list`` without ``--database`` looks in
every database that has any. Replaying schedules the item again, due at once, attempts reset;
the service's due poller fires it within a poll interval.

New command groups are added as further subparsers of ``build_parser``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from aftercare.events.consumer import DLQ_ATTEMPTS, DLQ_ERROR, DLQ_ERROR_TYPE, DLQ_GROUP, DLQ_HANDLER, DLQ_ORIGIN
from aftercare.events.producer import EventProducer
from aftercare.events.schedule import DUE_TIMES_DEAD, DeadDueItem, DueTimes, DueTimeScheduledAgain
from aftercare.events.topics import DEAD_LETTER_SUFFIX, dead_letter_topic
from aftercare.events.tracing import incident_trace_id

ENV_BOOTSTRAP = "AFTERCARE_KAFKA_BOOTSTRAP_SERVERS"
ENV_MONGO_URL = "AFTERCARE_MONGO_URL"
DLQ_REPLAYED_FROM = "dead_letter.replayed_from"
DEAD_LETTER_HEADER_PREFIX = "dead_letter."


class CommandError(Exception):
    """A problem the operator can fix; printed without a traceback."""


@dataclass(frozen=True)
class DeadLetter:
    """One message on a dead-letter topic."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    @property
    def where(self) -> str:
        return f"{self.partition}:{self.offset}"

    def header(self, name: str) -> str:
        for header, value in reversed(self.headers):
            if header == name:
                return value.decode("utf-8", "replace")
        return ""

    @property
    def event_id(self) -> str:
        return self.header("event_id") or _from_value(self.value, "id")

    @property
    def event_type(self) -> str:
        return self.header("event_type") or _from_value(self.value, "type")

    @property
    def origin_topic(self) -> str:
        origin = self.header(DLQ_ORIGIN)
        if origin.count("/") >= 2:
            return origin.rsplit("/", 2)[0]
        return self.topic.removesuffix(DEAD_LETTER_SUFFIX)

    @property
    def time(self) -> str:
        return datetime.fromtimestamp(self.timestamp_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")

    def summary(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "time": self.time,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "origin": self.header(DLQ_ORIGIN),
            "consumer_group": self.header(DLQ_GROUP),
            "handler": self.header(DLQ_HANDLER),
            "attempts": self.header(DLQ_ATTEMPTS),
            "error_type": self.header(DLQ_ERROR_TYPE),
            "error": self.header(DLQ_ERROR),
            "replayed_from": self.header(DLQ_REPLAYED_FROM),
        }


def _from_value(value: bytes | None, field: str) -> str:
    try:
        document = json.loads(value or b"")
    except (UnicodeDecodeError, json.JSONDecodeError):
        return ""
    found = document.get(field) if isinstance(document, dict) else None
    return found if isinstance(found, str) else ""


def dead_letter_topic_of(topic: str) -> str:
    """``topic`` or its twin, as the dead-letter twin."""
    return topic if topic.endswith(DEAD_LETTER_SUFFIX) else dead_letter_topic(topic)


async def read_dead_letters(bootstrap_servers: str, topics: Sequence[str] | None = None) -> dict[str, list[DeadLetter]]:
    """Every message on the dead-letter topics (all of them, or the twins of ``topics``)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=10000)
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        if topics:
            wanted = [dead_letter_topic_of(topic) for topic in topics]
            missing = [topic for topic in wanted if topic not in existing]
            if missing:
                raise CommandError(f"no such topic on {bootstrap_servers}: {', '.join(missing)}")
        else:
            wanted = sorted(topic for topic in existing if topic.endswith(DEAD_LETTER_SUFFIX))
        descriptions = await admin.describe_topics(wanted) if wanted else []
    except KafkaError as error:
        raise CommandError(
            f"cannot reach Kafka at {bootstrap_servers}: {error} (give --bootstrap-servers or set {ENV_BOOTSTRAP})"
        ) from None
    finally:
        await admin.close()
    partitions = [
        TopicPartition(description["topic"], int(partition["partition"]))
        for description in descriptions
        for partition in sorted(description["partitions"], key=lambda partition: int(partition["partition"]))
    ]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False, request_timeout_ms=10000)
    try:
        await consumer.start()
    except KafkaError as error:
        await consumer.stop()
        raise CommandError(f"cannot reach Kafka at {bootstrap_servers}: {error}") from None
    try:
        found: dict[str, list[DeadLetter]] = {topic: [] for topic in wanted}
        if not partitions:
            return found
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        remaining = {tp for tp in partitions if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batch.items():
                for record in records:
                    found[tp.topic].append(
                        DeadLetter(
                            topic=tp.topic,
                            partition=tp.partition,
                            offset=record.offset,
                            timestamp_ms=record.timestamp,
                            key=record.key,
                            value=record.value,
                            headers=tuple(record.headers or ()),
                        )
                    )
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return found
    finally:
        await consumer.stop()


def select(found: dict[str, list[DeadLetter]], places: Sequence[str], event_ids: Sequence[str]) -> list[DeadLetter]:
    """The dead letters named by ``PARTITION:OFFSET`` or event id; ``CommandError`` if one is not there."""
    everything = [letter for letters in found.values() for letter in letters]
    chosen: list[DeadLetter] = []
    for place in places:
        try:
            partition, offset = (int(part) for part in place.split(":"))
        except ValueError:
            raise CommandError(f"{place!r} is not PARTITION:OFFSET (e.g. 0:17, as `list` shows it)") from None
        matches = [letter for letter in everything if (letter.partition, letter.offset) == (partition, offset)]
        if not matches:
            raise CommandError(f"no dead letter at {place} on {', '.join(found) or 'any dead-letter topic'}")
        chosen.extend(matches)
    for event_id in event_ids:
        matches = [letter for letter in everything if letter.event_id == event_id]
        if not matches:
            raise CommandError(f"no dead letter with event id {event_id} on {', '.join(found) or 'any topic'}")
        chosen.extend(matches)
    return chosen


async def replay(bootstrap_servers: str, letters: Sequence[DeadLetter]) -> list[tuple[DeadLetter, str]]:
    """Send each dead letter back to its original topic, unchanged but for the dead-letter headers."""
    producer = EventProducer(bootstrap_servers, client_id="aftercare-cli-replay")
    try:
        await producer.start()
    except KafkaError as error:
        await producer.stop()
        raise CommandError(f"cannot reach Kafka at {bootstrap_servers}: {error}") from None
    sent: list[tuple[DeadLetter, str]] = []
    try:
        for letter in letters:
            headers = [
                (name, value) for name, value in letter.headers if not name.startswith(DEAD_LETTER_HEADER_PREFIX)
            ]
            headers.append((DLQ_REPLAYED_FROM, f"{letter.topic}/{letter.partition}/{letter.offset}".encode()))
            await producer.send_raw(letter.origin_topic, letter.value, letter.key, headers)
            sent.append((letter, letter.origin_topic))
    finally:
        await producer.stop()
    return sent


# --- output -------------------------------------------------------------------------------------


def print_list(found: dict[str, list[DeadLetter]], out: TextIO) -> None:
    if not found:
        print("no dead-letter topics on this broker", file=out)
    for topic, letters in found.items():
        print(f"{topic}: {len(letters)} dead letter{'s' if len(letters) != 1 else ''}", file=out)
        for letter in letters:
            error = letter.header(DLQ_ERROR).splitlines()[0] if letter.header(DLQ_ERROR) else "(no error recorded)"
            print(
                f"  {letter.where:<8} {letter.time}  {letter.event_type or '?':<28} {letter.event_id or '?'}\n"
                f"           group {letter.header(DLQ_GROUP) or '?'}, attempts {letter.header(DLQ_ATTEMPTS) or '?'}"
                f"{', replayed from ' + letter.header(DLQ_REPLAYED_FROM) if letter.header(DLQ_REPLAYED_FROM) else ''}"
                f"\n           {error[:300]}",
                file=out,
            )


def print_one(letter: DeadLetter, out: TextIO) -> None:
    print(f"dead letter {letter.topic} {letter.where}  ({letter.time})", file=out)
    print(f"  origin:  {letter.header(DLQ_ORIGIN) or letter.origin_topic}", file=out)
    print(f"  key:     {letter.key.decode('utf-8', 'replace') if letter.key is not None else '(none)'}", file=out)
    print("headers:", file=out)
    for name, value in letter.headers:
        if name != DLQ_ERROR:
            print(f"  {name}: {value.decode('utf-8', 'replace')}", file=out)
    print("error:", file=out)
    for line in (letter.header(DLQ_ERROR) or "(none recorded)").splitlines():
        print(f"  {line}", file=out)
    print("payload:", file=out)
    try:
        payload = json.dumps(json.loads(letter.value or b""), indent=2, ensure_ascii=False)
    except (UnicodeDecodeError, json.JSONDecodeError):
        payload = repr(letter.value)
    for line in payload.splitlines():
        print(f"  {line}", file=out)


# --- the command ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aftercare", description="Operate an Aftercare deployment.")
    parser.add_argument(
        "--bootstrap-servers",
        default=os.environ.get(ENV_BOOTSTRAP),
        help=f"Kafka bootstrap servers (default: ${ENV_BOOTSTRAP})",
    )
    # Also accepted after the subcommand (``aftercare dead-letters list --bootstrap-servers ...``).
    broker = argparse.ArgumentParser(add_help=False)
    broker.add_argument("--bootstrap-servers", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    dead = groups.add_parser("dead-letters", help="list, show and replay dead-lettered events")
    actions = dead.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", parents=[broker], help="dead letters per topic, with their error")
    listing.add_argument("--topic", action="append", help="a topic or its dead-letter twin (repeatable; default all)")
    listing.add_argument("--json", action="store_true", help="one JSON object per dead letter")

    show = actions.add_parser("show", parents=[broker], help="one dead letter: headers, error, payload")
    show.add_argument("--topic", help="a topic or its dead-letter twin (needed with PARTITION:OFFSET)")
    show.add_argument("place", nargs="?", help="PARTITION:OFFSET as `list` shows it")
    show.add_argument("--event-id", help="the event's id instead of PARTITION:OFFSET")

    again = actions.add_parser("replay", parents=[broker], help="send dead letters back to their original topic")
    again.add_argument("--topic", help="a topic or its dead-letter twin (needed with PARTITION:OFFSET)")
    again.add_argument("places", nargs="*", help="PARTITION:OFFSET as `list` shows them")
    again.add_argument("--event-id", action="append", default=[], help="an event id (repeatable)")
    again.add_argument("--dry-run", action="store_true", help="say what would be replayed, send nothing")

    store = argparse.ArgumentParser(add_help=False)
    store.add_argument(
        "--mongo-url", default=os.environ.get(ENV_MONGO_URL), help=f"the store (default: ${ENV_MONGO_URL})"
    )
    due = groups.add_parser("dead-due-times", help="list, show and replay due times that failed every attempt")
    due_actions = due.add_subparsers(dest="action", required=True, metavar="ACTION")
    due_list = due_actions.add_parser("list", parents=[store], help="dead due times per database, with their error")
    due_list.add_argument("--database", action="append", help="a service's database (repeatable; default all)")
    due_list.add_argument("--kind", help="only this kind (e.g. sla-breach)")
    due_list.add_argument("--json", action="store_true", help="one JSON object per dead due time")
    due_show = due_actions.add_parser("show", parents=[store], help="one dead due time: payload, error, times")
    due_show.add_argument("--database", required=True, help="the service's database")
    due_show.add_argument("key", help="the due time's key as `list` shows it")
    due_replay = due_actions.add_parser("replay", parents=[store], help="schedule dead due times again, due now")
    due_replay.add_argument("--database", required=True, help="the service's database")
    due_replay.add_argument("keys", nargs="+", help="keys as `list` shows them")
    due_replay.add_argument("--dry-run", action="store_true", help="say what would be replayed, change nothing")

    trace_id = groups.add_parser("trace-id", help="the trace id of one incident (search logs and traces with it)")
    trace_id.add_argument("incident_id", help="the incident id from intake's 202 or the dashboard")
    return parser


def dead_due_summary(database: str, dead: DeadDueItem) -> dict[str, Any]:
    return {
        "database": database,
        "key": dead.key,
        "kind": dead.kind,
        "attempts": dead.attempts,
        "first_due_at": dead.first_due_at.isoformat(),
        "died_at": dead.died_at.isoformat(),
        "error": dead.last_error,
        "payload": dead.payload,
    }


async def run_dead_due_times(args: argparse.Namespace, out: TextIO) -> int:
    if not args.mongo_url:
        raise CommandError(f"where is the store? give --mongo-url mongodb://HOST:PORT/ or set {ENV_MONGO_URL}")
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(args.mongo_url, serverSelectionTimeoutMS=5000)
    try:
        if args.action == "list":
            names = args.database or [
                name
                for name in await client.list_database_names()
                if DUE_TIMES_DEAD in await client[name].list_collection_names()
            ]
            total = 0
            for name in names:
                found = await DueTimes(client[name]).dead_items(args.kind)
                total += len(found)
                if args.json:
                    for dead in found:
                        print(json.dumps(dead_due_summary(name, dead), ensure_ascii=False), file=out)
                    continue
                print(f"{name}: {len(found)} dead due time(s)", file=out)
                for dead in found:
                    print(
                        f"  {dead.key}  {dead.kind}  died {dead.died_at:%Y-%m-%d %H:%M:%S}Z after {dead.attempts} "
                        f"attempts (first due {dead.first_due_at:%Y-%m-%d %H:%M:%S}Z): {dead.last_error}",
                        file=out,
                    )
            if not names and not args.json:
                print("no dead due times in any database", file=out)
            return 0
        due = DueTimes(client[args.database])
        if args.action == "show":
            one = await due.dead_item(args.key)
            if one is None:
                raise CommandError(
                    f"no dead due time {args.key!r} in {args.database} (see `aftercare dead-due-times list`)"
                )
            print(json.dumps(dead_due_summary(args.database, one), ensure_ascii=False, indent=2), file=out)
            return 0
        missing = [key for key in args.keys if await due.dead_item(key) is None]
        if missing:
            raise CommandError(
                f"no dead due time {', '.join(map(repr, missing))} in {args.database}; nothing replayed "
                "(see `aftercare dead-due-times list`)"
            )
        for key in args.keys:
            if args.dry_run:
                print(f"would replay {key} in {args.database}", file=out)
                continue
            try:
                item = await due.revive(key)
            except DueTimeScheduledAgain as error:
                raise CommandError(str(error)) from error
            print(f"replayed {key} ({item.kind}) in {args.database}: due now, attempts reset", file=out)
        return 0
    except PyMongoError as error:
        raise CommandError(f"the store at {args.mongo_url} did not answer: {error}") from error
    finally:
        await client.close()


async def run(args: argparse.Namespace, out: TextIO) -> int:
    if args.group == "dead-due-times":
        return await run_dead_due_times(args, out)

    if args.group == "trace-id":
        # Derived from the incident id (aftercare.events.tracing): no broker needed.
        print(incident_trace_id(args.incident_id), file=out)
        return 0
    if not args.bootstrap_servers:
        raise CommandError(f"where is Kafka? give --bootstrap-servers HOST:PORT or set {ENV_BOOTSTRAP}")
    if args.action == "list":
        found = await read_dead_letters(args.bootstrap_servers, args.topic)
        if args.json:
            for letters in found.values():
                for letter in letters:
                    print(json.dumps(letter.summary(), ensure_ascii=False), file=out)
        else:
            print_list(found, out)
        return 0

    places = [args.place] if args.action == "show" and args.place else list(getattr(args, "places", []))
    event_ids = (
        [args.event_id] if args.action == "show" and args.event_id else list(getattr(args, "event_id", []) or [])
    )
    if args.action == "show" and args.event_id and args.place:
        raise CommandError("give PARTITION:OFFSET or --event-id, not both")
    if not places and not event_ids:
        raise CommandError("say which dead letter: PARTITION:OFFSET (with --topic) or --event-id ID")
    if places and not args.topic:
        raise CommandError("PARTITION:OFFSET needs --topic (offsets are per topic)")
    found = await read_dead_letters(args.bootstrap_servers, [args.topic] if args.topic else None)
    chosen = select(found, places, event_ids)

    if args.action == "show":
        for letter in chosen:
            print_one(letter, out)
        return 0
    if args.dry_run:
        for letter in chosen:
            print(f"would replay {letter.topic} {letter.where} ({letter.event_id}) to {letter.origin_topic}", file=out)
        return 0
    for letter, target in await replay(args.bootstrap_servers, chosen):
        print(f"replayed {letter.topic} {letter.where} ({letter.event_type} {letter.event_id}) to {target}", file=out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aftercare`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(run(args, sys.stdout))
    except CommandError as error:
        print(f"aftercare: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
