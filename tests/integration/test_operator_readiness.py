"""A fresh service is not ready until its operator copy holds what the tenants topic held at its
start: once ``/readyz`` says 200, every operator announced before the start is known, so no
operator meets a 401 from a service that has just been (re)deployed.

The service is ``operator_service.py`` (a real ``ServiceRuntime`` with
``keep_operator_directory()``, the same one line triage, remediation and the notifier use), as
an OS process with a fresh database and consumer group.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from aftercare.events.envelope import envelope_for
from aftercare.events.operators import (
    OPERATOR_EVENTS_TENANT,
    OperatorUpserted,
    Role,
    new_operator_token,
    token_digest,
)
from aftercare.events.producer import EventProducer
from aftercare.events.runtime import ensure_topics
from aftercare.events.topics import topic_specs

from kafka_helpers import Infrastructure, unique_name
from localinfra import free_port
from service_process import start_service

pytestmark = pytest.mark.integration

OPERATOR_SERVICE = Path(__file__).parent / "operator_service.py"
# Enough operator events that reading them takes longer than the group join alone.
OPERATORS = 10


@pytest_asyncio.fixture(loop_scope="session")
async def producer(infrastructure: Infrastructure) -> AsyncIterator[EventProducer]:
    await ensure_topics(infrastructure.bootstrap_servers, topic_specs(), partitions=3)
    # A long deadline: the topics may have been created a moment ago (no leader yet).
    kafka = EventProducer(infrastructure.bootstrap_servers, client_id="operator-readiness-tests", publish_deadline_s=60)
    await kafka.start()
    try:
        yield kafka
    finally:
        await kafka.stop()


async def test_a_fresh_service_is_ready_only_once_it_knows_every_operator_announced_before_it_started(
    infrastructure: Infrastructure, producer: EventProducer, tmp_path: Path
) -> None:
    suffix = unique_name("ready")
    tokens = [new_operator_token() for _ in range(OPERATORS)]
    await producer.publish_many(
        envelope_for(
            OperatorUpserted(
                operator_id=f"op-{n}-{suffix}",
                name=f"Operator {n}",
                email=f"op-{n}-{suffix}@support.example",
                role=Role.VIEWER,
                token_digests=[token_digest(token)],
            ),
            source="intake",
            tenant_id=OPERATOR_EVENTS_TENANT,
            time=datetime.now(UTC),
        )
        for n, token in enumerate(tokens)
    )

    port = free_port()
    database = unique_name("opready").replace("-", "_")
    service = start_service(
        [
            sys.executable,
            str(OPERATOR_SERVICE),
            *("--bootstrap", infrastructure.bootstrap_servers, "--mongo-url", infrastructure.mongo_url),
            *("--database", database, "--group-prefix", f"{database}-", "--port", str(port)),
        ],
        {},
        f"http://127.0.0.1:{port}",
        tmp_path / "operator-service.log",
        name="operator service",
    )
    try:
        async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as http:
            # No waiting here: ready means these are known.
            readiness = (await http.get("/readyz")).json()
            answers = [
                (await http.get("/incidents", headers={"Authorization": f"Bearer {token}"})).status_code
                for token in (tokens[-1], tokens[0], tokens[OPERATORS // 2])
            ]
        assert answers == [200, 200, 200], f"operators refused right after /readyz said ready: {answers}"
        assert readiness["checks"]["operators"] == "ok", readiness
    finally:
        service.stop()
