"""When Kafka is down, a report (here: frozen) is answered within the publish deadline, not held until
it is back.

The report is stored with its event in the outbox and answered 503 with Retry-After; once Kafka
is back, the outbox sweep publishes the event, and the client's retry with the same
Idempotency-Key gets the same incident. This test runs its own Kafka and store: the session's
are shared by other tests and must not be stopped.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from aftercare.events import outbox, topics

from .conftest import start_intake, stop_intake
from kafka_helpers import Infrastructure, read_all, wait_until
from localinfra import KafkaNode, StoreNode, free_port

pytestmark = pytest.mark.integration

PUBLISH_DEADLINE_S = 2


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


async def test_a_report_while_kafka_is_down_gets_503_in_time_and_is_published_once_kafka_is_back(
    own_infrastructure: tuple[KafkaNode, StoreNode], tmp_path: Path
) -> None:
    kafka, store = own_infrastructure
    await asyncio.gather(asyncio.to_thread(store.start), asyncio.to_thread(kafka.start))
    infrastructure = Infrastructure(kafka.bootstrap_servers, store.url, "local")
    service = start_intake(
        infrastructure,
        tmp_path / "intake",
        extra_env={
            "AFTERCARE_PUBLISH_DEADLINE_SECONDS": str(PUBLISH_DEADLINE_S),
            "AFTERCARE_INTAKE_SMTP_ENABLED": "false",
        },
    )
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(store.url, tz_aware=True)
    title = f"Payroll export failed {uuid.uuid4().hex[:8]}"
    idempotency = {"Idempotency-Key": uuid.uuid4().hex}
    frozen = False
    try:
        # The client's own patience is far below the 30 s Kafka's client would wait on its own:
        # the answer must come from intake's deadline.
        async with httpx.AsyncClient(base_url=service.base_url, timeout=20.0) as http:
            warm = await http.post("/v1/incidents", headers=service.auth("tenant-a"), json={"title": "warm-up"})
            assert warm.status_code == 202, warm.text

            # The broker stops answering (frozen, as in a long GC pause or a network partition).
            assert kafka.process is not None
            os.kill(kafka.process.pid, signal.SIGSTOP)
            frozen = True
            refused = await http.post(
                "/v1/incidents", headers=service.auth("tenant-a") | idempotency, json={"title": title}
            )

            assert refused.status_code == 503, refused.text
            assert refused.headers["content-type"].startswith("application/problem+json")
            assert int(refused.headers["Retry-After"]) > 0
            assert "Idempotency-Key" in refused.json()["detail"]
            # Kept, with its event waiting for the sweep (in the document's outbox or, for a new
            # incident, in the group commit's ledger).
            database = client[service.database]
            document = await database["incidents"].find_one({"title": title})
            assert document is not None
            incident_id = document["_id"]
            waiting = list(document[outbox.FIELD])
            async for batch in database[outbox.LEDGER].find({}):
                waiting += [entry for entry in batch["entries"] if entry["document_id"] == incident_id]
            assert [json.loads(entry["json"])["type"] for entry in waiting] == ["incident.reported"]

            os.kill(kafka.process.pid, signal.SIGCONT)
            frozen = False

            async def published() -> list[dict[str, Any]]:
                records = await read_all(kafka.bootstrap_servers, topics.INCIDENTS)
                return [json.loads(r.value) for r in records if r.key == incident_id.encode()]

            events = await wait_until(published, timeout=120, interval=1.0, message="the kept report published")
            assert events[0]["type"] == "incident.reported" and events[0]["data"]["title"] == title

            retried = await http.post(
                "/v1/incidents", headers=service.auth("tenant-a") | idempotency, json={"title": title}
            )
            assert retried.status_code in (200, 202), retried.text
            assert retried.json()["incident_id"] == incident_id  # the same incident, not a second one
    finally:
        if frozen and kafka.process is not None:
            os.kill(kafka.process.pid, signal.SIGCONT)
        stop_intake(service)
        await client.close()
