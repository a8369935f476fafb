"""Fixtures every test suite shares: the real Kafka broker and store, a fresh database, topics.

Where the infrastructure comes from, first match wins:

1. ``AFTERCARE_TEST_KAFKA_BOOTSTRAP_SERVERS`` and ``AFTERCARE_TEST_MONGO_URL`` are set: use them
   (e.g. the broker and store of ``make up``, or ones in CI). Nothing is started or stopped.
2. ``AFTERCARE_TEST_INFRA=testcontainers`` and a Docker engine answers: Kafka and MongoDB
   containers via testcontainers.
3. Otherwise: a Kafka broker and a FerretDB store of our own (``infra/localinfra.py``) on free
   ports in a fresh temporary directory, stopped when the session ends. This never touches a
   broker or store started by ``make up``/``make run``.

Tests only ask for what they use, so unit tests start nothing.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from kafka_helpers import Infrastructure, create_topics, unique_name

ENV_BOOTSTRAP = "AFTERCARE_TEST_KAFKA_BOOTSTRAP_SERVERS"
ENV_MONGO_URL = "AFTERCARE_TEST_MONGO_URL"
ENV_INFRA = "AFTERCARE_TEST_INFRA"


def _docker_available() -> bool:
    if (
        shutil.which("docker") is None
        and not os.path.exists("/var/run/docker.sock")
        and "DOCKER_HOST" not in os.environ
    ):
        return False
    try:
        import docker

        docker.from_env().ping()
    except Exception:
        return False
    return True


def _distinct_free_ports(count: int) -> list[int]:
    from localinfra import free_port

    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _testcontainers() -> Iterator[Infrastructure]:
    # Imported lazily: most machines here have no Docker, and the import is slow.
    from testcontainers.community.kafka import KafkaContainer
    from testcontainers.community.mongodb import MongoDbContainer

    kafka_image = os.environ.get("AFTERCARE_TEST_KAFKA_IMAGE", "confluentinc/cp-kafka:7.6.0")
    mongo_image = os.environ.get("AFTERCARE_TEST_MONGO_IMAGE", "mongo:7.0")
    with KafkaContainer(kafka_image).with_kraft() as kafka, MongoDbContainer(mongo_image) as mongo:
        yield Infrastructure(kafka.get_bootstrap_server(), mongo.get_connection_url(), "testcontainers")


def _local(base: Path) -> Iterator[Infrastructure]:
    from localinfra import KafkaNode, StoreNode

    kafka_port, controller_port, store_port = _distinct_free_ports(3)
    kafka = KafkaNode(data_dir=base / "kafka", port=kafka_port, controller_port=controller_port)
    store = StoreNode(data_dir=base / "store", port=store_port)
    try:
        # The broker takes seconds to start (three JVM launches); start the store meanwhile.
        with ThreadPoolExecutor(max_workers=2) as pool:
            starts = [pool.submit(kafka.start), pool.submit(store.start)]
            for start in starts:
                start.result()
        yield Infrastructure(kafka.bootstrap_servers, store.url, "local", [kafka.log_file, store.log_file])
    finally:
        kafka.stop()
        store.stop()


@pytest.fixture(scope="session")
def infrastructure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infrastructure]:
    """A real Kafka broker and MongoDB-compatible store for the whole session (see module doc)."""
    bootstrap = os.environ.get(ENV_BOOTSTRAP)
    mongo_url = os.environ.get(ENV_MONGO_URL)
    if bootstrap and mongo_url:
        yield Infrastructure(bootstrap, mongo_url, "env")
    elif os.environ.get(ENV_INFRA) == "testcontainers" and _docker_available():
        yield from _testcontainers()
    else:
        if os.environ.get(ENV_INFRA) == "testcontainers":
            warnings.warn(
                f"{ENV_INFRA}=testcontainers but no Docker engine answers; starting the local Kafka and store instead",
                stacklevel=1,
            )
        yield from _local(tmp_path_factory.mktemp("infra"))


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def mongo_client(infrastructure: Infrastructure) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    """One client for the session; each test gets its own database from ``mongo_db``."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        infrastructure.mongo_url, tz_aware=True, serverSelectionTimeoutMS=10000
    )
    try:
        yield client
    finally:
        await client.close()


@pytest_asyncio.fixture(loop_scope="session")
async def mongo_db(mongo_client: AsyncMongoClient[dict[str, Any]]) -> AsyncIterator[AsyncDatabase[dict[str, Any]]]:
    """A database no other test uses, dropped afterwards."""
    database = mongo_client[unique_name("test").replace("-", "_")]
    try:
        yield database
    finally:
        await mongo_client.drop_database(database.name)


@pytest_asyncio.fixture(loop_scope="session")
async def new_topic(infrastructure: Infrastructure) -> Callable[..., Awaitable[str]]:
    """Create a topic of a name no other test uses, with 3 partitions and its dead-letter twin.

    topic = await new_topic("incidents")   # -> "incidents-1a2b3c4d5e6f"
    """

    async def make(prefix: str = "test", partitions: int = 3) -> str:
        name = unique_name(prefix)
        await create_topics(infrastructure.bootstrap_servers, name, partitions=partitions)
        return name

    return make
