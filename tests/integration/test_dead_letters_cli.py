"""`aftercare dead-letters list|show|replay` against the real broker, as an operator uses it.

A notification handler fails for good on one event (the customer's webhook rejects it), so the
runner dead-letters it; the operator lists and shows it, "fixes" the webhook and replays it.
The consumer that failed applies it once; a second consumer group that had handled it already
(an audit log) skips the replayed copy, because it keeps its event id.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from test_consumer_runner import Database, applied, apply_to, other_db, producer, reported, updated

from aftercare.events.consumer import DLQ_ORIGIN, ConsumerRunner, RetryPolicy
from aftercare.events.envelope import Envelope
from aftercare.events.incidents import IncidentReported, IncidentUpdated
from aftercare.events.processed import ProcessedEventLog
from aftercare.events.producer import EventProducer
from aftercare.events.topics import dead_letter_topic

from kafka_helpers import Infrastructure, headers_of, read_all, running, unique_name, wait_until

pytestmark = pytest.mark.integration

__all__ = ["other_db", "producer"]  # fixtures, imported to be found

AFTERCARE = Path(sys.executable).with_name("aftercare")  # the console script of the workspace


async def aftercare(*arguments: str, bootstrap: str | None = None) -> tuple[int, str, str]:
    """Run the ``aftercare`` command; return its exit code, stdout and stderr."""
    env = {k: v for k, v in os.environ.items() if k != "AFTERCARE_KAFKA_BOOTSTRAP_SERVERS"}
    if bootstrap is not None:
        env["AFTERCARE_KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
    process = await asyncio.create_subprocess_exec(
        str(AFTERCARE), *arguments, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def runner(
    infrastructure: Infrastructure,
    producer: EventProducer,
    topic: str,
    group: str,
    handler: Callable[[Envelope[Any]], Awaitable[None]],
    db: Database,
) -> ConsumerRunner:
    return ConsumerRunner(
        bootstrap_servers=infrastructure.bootstrap_servers,
        group_id=group,
        topics=[topic],
        handlers={IncidentReported: [handler], IncidentUpdated: [handler]},
        processed=ProcessedEventLog(db),
        producer=producer,
        retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.05, max_backoff_s=0.1),
    )


@pytest.mark.timeout(600)  # nine runs of the command, each a Python start-up
async def test_an_operator_lists_shows_and_replays_a_dead_letter_which_is_then_applied_once(
    infrastructure: Infrastructure,
    producer: EventProducer,
    mongo_db: Database,
    other_db: Database,
    new_topic: Callable[..., Awaitable[str]],
) -> None:
    bootstrap = infrastructure.bootstrap_servers
    topic = await new_topic("dlq-cli")
    notify_group, audit_group = unique_name("notifier"), unique_name("audit")
    rejected = updated("inc-x", "Bitte um Rückruf")
    events = [reported("inc-x", "Mail relay down"), rejected, updated("inc-x", "back up")]
    webhook_fixed = asyncio.Event()

    async def notify(envelope: Envelope[Any]) -> None:
        if envelope.id == rejected.id and not webhook_fixed.is_set():
            raise ValueError("webhook https://hooks.acme.example answered 422: 'message' too long")
        await apply_to(mongo_db, envelope)

    async def audit(envelope: Envelope[Any]) -> None:
        await apply_to(other_db, envelope)

    notifier = runner(infrastructure, producer, topic, notify_group, notify, mongo_db)
    auditor = runner(infrastructure, producer, topic, audit_group, audit, other_db)
    async with running(notifier), running(auditor):
        await producer.publish_many(events, topic)
        await wait_until(
            lambda: _applied_is(mongo_db, [events[0].id, events[2].id]), message="the notifier went past the failure"
        )
        await wait_until(lambda: _applied_is(other_db, [e.id for e in events]), message="the audit log has all three")
        (dead,) = await read_all(bootstrap, dead_letter_topic(topic), at_least=1)
        place = f"{dead.partition}:{dead.offset}"

        # list: per topic, where, which event, which group, the error (broker from the environment)
        code, out, err = await aftercare("dead-letters", "list", "--topic", topic, bootstrap=bootstrap)
        assert code == 0, err
        assert f"{dead_letter_topic(topic)}: 1 dead letter" in out
        assert place in out and rejected.id in out and "incident.updated" in out
        assert f"group {notify_group}, attempts 2" in out
        assert "ValueError: webhook https://hooks.acme.example answered 422: 'message' too long" in out

        # list --json, all dead-letter topics of the broker (given as an option)
        code, out, err = await aftercare("--bootstrap-servers", bootstrap, "dead-letters", "list", "--json")
        assert code == 0, err
        ours = [json.loads(line) for line in out.splitlines() if json.loads(line)["topic"] == dead_letter_topic(topic)]
        assert [(entry["event_id"], entry["origin"]) for entry in ours] == [
            (rejected.id, headers_of(dead)[DLQ_ORIGIN].decode())
        ]

        # show: headers, error and the payload as JSON
        code, out, err = await aftercare(
            "dead-letters", "show", "--topic", topic, place, "--bootstrap-servers", bootstrap
        )
        assert code == 0, err
        assert f"dead letter {dead_letter_topic(topic)} {place}" in out
        assert f"event_id: {rejected.id}" in out
        assert f"dead_letter.consumer_group: {notify_group}" in out
        assert "error:\n  ValueError: webhook" in out
        assert '"message": "Bitte um Rückruf"' in out
        code, by_id, err = await aftercare("dead-letters", "show", "--event-id", rejected.id, bootstrap=bootstrap)
        assert (code, by_id) == (0, out), err

        # what cannot be found says so
        code, _, err = await aftercare("dead-letters", "show", "--topic", topic, "7:7", bootstrap=bootstrap)
        assert code == 1 and "no dead letter at 7:7" in err
        code, _, err = await aftercare("dead-letters", "replay", "--event-id", rejected.id)
        assert code == 1 and "AFTERCARE_KAFKA_BOOTSTRAP_SERVERS" in err

        # The fix is deployed; the operator replays the dead letter, by its place on the topic.
        webhook_fixed.set()
        code, out, err = await aftercare("dead-letters", "replay", "--topic", topic, place, bootstrap=bootstrap)
        assert code == 0, err
        assert f"replayed {dead_letter_topic(topic)} {place} (incident.updated {rejected.id}) to {topic}" in out
        await wait_until(
            lambda: _applied_is(mongo_db, [events[0].id, events[2].id, rejected.id]),
            message="the replayed event applied by the notifier",
        )
        # Replayed again by mistake, by event id this time: still applied once.
        code, out, err = await aftercare("dead-letters", "replay", "--event-id", rejected.id, bootstrap=bootstrap)
        assert code == 0, err
        on_topic = await read_all(bootstrap, topic, at_least=5)
        # Both replayed copies have been through both groups once the last one is past them.
        sentinel = updated("inc-x", "closing remark")
        await producer.publish(sentinel, topic)
        await wait_until(
            lambda: _contains(mongo_db, sentinel.id), timeout=90, message="the notifier is past the replays"
        )
        await wait_until(
            lambda: _contains(other_db, sentinel.id), timeout=90, message="the audit log is past the replays"
        )

    replayed = [record for record in on_topic if headers_of(record).get("event_id") == rejected.id.encode()]
    assert len(replayed) == 3, "the original and two replayed copies"
    assert replayed[1].value == replayed[0].value and replayed[1].key == replayed[0].key, "the same event, same id"
    assert (
        headers_of(replayed[1])["dead_letter.replayed_from"] == f"{dead.topic}/{dead.partition}/{dead.offset}".encode()
    )
    assert not any(
        name.startswith("dead_letter.") and name != "dead_letter.replayed_from" for name, _ in replayed[1].headers
    )
    assert await applied(mongo_db, "inc-x") == [events[0].id, events[2].id, rejected.id, sentinel.id]
    assert await applied(other_db, "inc-x") == [*(e.id for e in events), sentinel.id], "the audit log skipped them"
    assert len(await read_all(bootstrap, dead_letter_topic(topic))) == 1, "nothing dead-lettered again"


async def _applied_is(db: Database, expected: list[str]) -> bool:
    return await applied(db, "inc-x") == expected


async def _contains(db: Database, event_id: str) -> bool:
    return event_id in await applied(db, "inc-x")
