"""Delivery promises against infrastructure faults: a restarted broker, a service started before
its infrastructure. Each test runs its own Kafka and store (the session's are shared by others
and must not be restarted)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from aftercare.events.consumer import ConsumerRunner, RetryPolicy
from aftercare.events.envelope import Envelope, envelope_for
from aftercare.events.incidents import Channel, IncidentReported
from aftercare.events.processed import ProcessedEventLog
from aftercare.events.producer import EventProducer

from kafka_helpers import create_topics, running, wait_until
from localinfra import KafkaNode, StoreNode, free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def own_infrastructure(tmp_path: Path) -> Iterator[tuple[KafkaNode, StoreNode]]:
    kafka_port, controller_port, store_port = free_port(), free_port(), free_port()
    while len({kafka_port, controller_port, store_port}) < 3:
        controller_port, store_port = free_port(), free_port()
    kafka = KafkaNode(data_dir=tmp_path / "kafka", port=kafka_port, controller_port=controller_port, heap="384m")
    store = StoreNode(data_dir=tmp_path / "store", port=store_port)
    try:
        yield kafka, store
    finally:
        kafka.stop()
        store.stop()


def _reported(number: int) -> Envelope[IncidentReported]:
    incident_id = f"incident-{number}"
    return envelope_for(
        IncidentReported(
            incident_id=incident_id,
            number=f"INC-{1000 + number}",
            title=f"disk full #{number}",
            channel=Channel.API,
            reported_at=datetime.now(UTC),
        ),
        source="test",
        tenant_id="tenant-a",
        incident_id=incident_id,
    )


async def test_events_published_across_a_broker_restart_are_each_handled_once(
    own_infrastructure: tuple[KafkaNode, StoreNode],
) -> None:
    kafka, store = own_infrastructure
    await asyncio.to_thread(store.start)
    await asyncio.to_thread(kafka.start)
    topic = "restart-incidents"
    await create_topics(kafka.bootstrap_servers, topic)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(store.url, tz_aware=True)
    database = client["restart_test"]
    handled = database["handled"]

    async def count_incident(envelope: Envelope[IncidentReported]) -> None:
        # The effect a customer would see: one record per incident, counted.
        await handled.update_one({"_id": envelope.data.incident_id}, {"$inc": {"times": 1}}, upsert=True)

    # Publishing across the restart must wait for the broker: a deadline longer than the restart.
    producer = EventProducer(
        kafka.bootstrap_servers, client_id="restart-test", request_timeout_ms=60000, publish_deadline_s=300
    )
    await producer.start()
    runner = ConsumerRunner(
        bootstrap_servers=kafka.bootstrap_servers,
        group_id="restart-group",
        topics=[topic],
        handlers={IncidentReported: [count_incident]},
        processed=ProcessedEventLog(database),
        producer=producer,
        retry=RetryPolicy(max_attempts=3, initial_backoff_s=0.1, max_backoff_s=1.0),
    )
    try:
        async with running(runner):
            await producer.publish_many([_reported(n) for n in range(20)], topic=topic)
            await wait_until(lambda: handled.count_documents({}), message="first events handled")

            # The broker goes away (clean SIGTERM, as on a rolling restart) and comes back on the
            # same ports and data. Publishing meanwhile must wait, not lose events.
            await asyncio.to_thread(kafka.stop)
            publishing = asyncio.create_task(producer.publish_many([_reported(n) for n in range(20, 40)], topic=topic))
            await asyncio.sleep(2)
            await asyncio.to_thread(kafka.start)
            await asyncio.wait_for(publishing, timeout=90)

            await wait_until(lambda: _count(handled, 40), timeout=90, message="all 40 incidents handled")
        counts = {document["_id"]: document["times"] async for document in handled.find({})}
        assert len(counts) == 40
        assert set(counts.values()) == {1}, f"some incidents were handled more than once: {counts}"
    finally:
        await producer.stop()
        await client.close()


async def _count(collection: Any, expected: int) -> bool:
    return bool(await collection.count_documents({}) >= expected)


def test_a_service_started_before_its_infrastructure_waits_and_becomes_ready(
    own_infrastructure: tuple[KafkaNode, StoreNode], tmp_path: Path
) -> None:
    kafka, store = own_infrastructure
    http_port = free_port()
    env = dict(os.environ) | {
        "AFTERCARE_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "AFTERCARE_MONGO_URL": store.url,
        "AFTERCARE_TRIAGE_HTTP_PORT": str(http_port),
        "AFTERCARE_STARTUP_TIMEOUT_SECONDS": "120",
    }
    log_file = tmp_path / "triage.log"
    with log_file.open("wb") as out:
        service = subprocess.Popen(
            [sys.executable, "-m", "aftercare.triage"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{http_port}"
    try:
        alive = _poll(lambda: httpx.get(base + "/healthz", timeout=2).status_code == 200, 30)
        assert alive, f"triage did not answer /healthz; see {log_file}"
        not_ready = httpx.get(base + "/readyz", timeout=5)
        assert not_ready.status_code == 503
        assert not_ready.json()["checks"]["store"] != "ok"

        store.start()
        kafka.start()
        ready = _poll(lambda: httpx.get(base + "/readyz", timeout=5).status_code == 200, 90)
        assert ready, f"triage never became ready; see {log_file}"
        assert service.poll() is None, "the service must wait for its infrastructure, not exit"
        log = log_file.read_text()
        # The store may come up within the first ping's server-selection timeout; Kafka, started
        # after it, is always waited for visibly.
        assert '"waiting for Kafka at' in log, "the wait must be visible in the log"
    finally:
        service.send_signal(signal.SIGTERM)
        assert service.wait(timeout=30) in (0, -signal.SIGTERM)
    assert '"service stopped"' in log_file.read_text()


def _poll(check: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return False
