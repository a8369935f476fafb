"""What every Aftercare service does around its own work: start-up, health, metrics, shutdown.

A service builds a ``ServiceRuntime`` with its settings and its consumers, mounts
``runtime.operations_router()`` and uses ``runtime.lifespan`` as its FastAPI lifespan:

* HTTP answers at once (``/healthz`` 200); the store and Kafka are connected in the background
  with backoff and a clear log line per attempt, so a service started before its
  infrastructure waits instead of crashing; ``/readyz`` turns 200 once both really answer;
* topics are created if missing (partitions from settings, tenants compacted);
* consumers start once Kafka and the store are there; on SIGTERM uvicorn runs the lifespan's
  shutdown, which stops consumers (finish the message in hand, commit, close), then the
  producer and the store client;
* single-instance work (``aftercare.events.schedule``): ``runtime.every(name, interval_s, job)``
  runs ``job`` once per interval per deployment, ``runtime.due_times.schedule(...)`` stores a
  due time and ``runtime.on_due(kind, handler)`` handles it; both start once the runtime is
  connected and stop on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import structlog
import uvicorn
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from aftercare.events.consumer import DEFAULT_CONCURRENCY, ConsumerRunner, HandlerTable, RetryPolicy
from aftercare.events.logs import configure_logging
from aftercare.events.operators import OperatorDirectory
from aftercare.events.processed import ProcessedEventLog
from aftercare.events.producer import EventProducer
from aftercare.events.schedule import DueHandler, DueTimes, Job, Jobs, Leases, new_holder_id
from aftercare.events.settings import ServiceSettings
from aftercare.events.topics import TENANTS, TopicSpec, topic_specs
from aftercare.events.tracing import configure_tracing

log = structlog.stdlib.get_logger("aftercare.events.runtime")

SERVICE_READY = Gauge("aftercare_service_ready", "1 when the store and Kafka answer.", ["service"])


class StartupTimeout(RuntimeError):
    pass


@dataclass
class ConsumerSpec:
    """A consumer group of this service: what it reads and the handler table to dispatch to.

    ``handlers`` is a function of the runtime because handlers need the database and the
    producer, which exist only once the runtime has connected. ``concurrency`` is how many
    events of different keys (incidents) are handled at once; one key's are always in order.
    """

    group_id: str
    topics: Sequence[str]
    handlers: Callable[[ServiceRuntime], HandlerTable]
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    concurrency: int = DEFAULT_CONCURRENCY


async def retry_until_ready(
    what: str, attempt: Callable[[], Awaitable[Any]], *, timeout_s: float, stopping: asyncio.Event | None = None
) -> Any:
    """Call ``attempt`` until it succeeds, with backoff and a log line naming what is awaited."""
    deadline = time.monotonic() + timeout_s
    delay = 0.5
    tries = 0
    while True:
        tries += 1
        try:
            return await attempt()
        except Exception as error:  # any failure to connect is retried; the log says which
            if time.monotonic() + delay > deadline:
                raise StartupTimeout(
                    f"gave up waiting for {what} after {timeout_s:.0f}s ({tries} attempts): {error}"
                ) from error
            log.warning(f"waiting for {what}", attempt=tries, retry_in_s=round(delay, 1), error=str(error))
            if stopping is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), timeout=delay)
                if stopping.is_set():
                    raise asyncio.CancelledError() from error
            else:
                await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


async def ensure_topics(
    bootstrap_servers: str, specs: Sequence[TopicSpec], partitions: int, replication_factor: int = 1
) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=10000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(
                name=spec.name,
                num_partitions=partitions,
                replication_factor=replication_factor,
                topic_configs=spec.configs(),
            )
            for spec in specs
            if spec.name not in existing
        ]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # another instance created them at the same moment
            log.info("topics created", topics=[topic.name for topic in missing])
    finally:
        await admin.close()


class ServiceRuntime:
    """Connections and background work of one service process."""

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        consumers: Sequence[ConsumerSpec] = (),
        on_store_ready: Callable[[ServiceRuntime], Awaitable[None]] | None = None,
        on_connected: Callable[[ServiceRuntime], Awaitable[None]] | None = None,
        on_shutdown: Callable[[ServiceRuntime], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.name = settings.service_name
        self._consumer_specs = list(consumers)
        self._on_store_ready = on_store_ready
        self._on_connected = on_connected
        self._on_shutdown = on_shutdown
        self.mongo: AsyncMongoClient[dict[str, Any]] | None = None
        self.producer: EventProducer | None = None
        self.runners: list[ConsumerRunner] = []
        self._runner_tasks: list[asyncio.Task[None]] = []
        self._connect_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.connected = asyncio.Event()
        self.startup_error: BaseException | None = None
        self.background_tasks: list[asyncio.Task[Any]] = []
        self.holder_id = new_holder_id()
        self._jobs: Jobs | None = None
        self._due_times: DueTimes | None = None
        self._pending_jobs: list[tuple[str, float, Job]] = []
        self._pending_due_handlers: list[tuple[str, DueHandler]] = []
        self._due_poller_started = False
        self.operators: OperatorDirectory | None = None
        self._keeps_operator_directory = False
        # Set once the operator copy holds every operator event that was on the tenants topic
        # when this process started (the first catch-up); ``/readyz`` waits for it.
        self.operators_caught_up = asyncio.Event()
        self._operators_behind: str = "not started yet"

    @property
    def db(self) -> AsyncDatabase[dict[str, Any]]:
        if self.mongo is None:
            raise RuntimeError("the store is not connected yet")
        return self.mongo[self.settings.database]

    def require_producer(self) -> EventProducer:
        if self.producer is None:
            raise RuntimeError("Kafka is not connected yet")
        return self.producer

    # --- operators ---------------------------------------------------------------------------

    def keep_operator_directory(self) -> None:
        """Keep this service's copy of the operators from the tenants topic (``runtime.operators``),
        which ``aftercare.events.operators.require_role`` checks credentials against. Call before
        the runtime starts."""
        if self._keeps_operator_directory:
            return
        if self.mongo is not None:
            raise RuntimeError("keep_operator_directory() must be called before the runtime starts")
        self._keeps_operator_directory = True
        self._consumer_specs.append(
            ConsumerSpec(
                # One group per service: every service needs every operator in its own copy (a
                # group shared by services would split the tenants topic's partitions between them).
                # Instances of one service share the group and the copy in its database.
                group_id=f"{self.name}-operator-directory",
                topics=[TENANTS],
                handlers=lambda runtime: runtime.require_operators().handlers(),
            )
        )

    def _operator_directory_group(self) -> str:
        return f"{self.settings.consumer_group_prefix}{self.name}-operator-directory"

    async def _catch_up_operator_directory(self) -> None:
        """Set ``operators_caught_up`` once the directory's group has committed past the tenants
        topic's end offsets as they were at start.

        The group's committed offsets, not this process's own position: instances share the
        group and the copy in the store, so the partitions another instance holds count too.
        The runner commits only after the handlers' writes, so committed means in the copy.
        """
        bootstrap = self.settings.kafka_bootstrap_servers
        probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, client_id=f"{self.name}-operator-catch-up")
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)

        started: list[Any] = []

        async def end_offsets_at_start() -> dict[TopicPartition, int]:
            for client in (probe, admin):
                if client not in started:
                    await client.start()
                    started.append(client)
            (description,) = await admin.describe_topics([TENANTS])
            numbers = sorted(p.get("partition_index", p.get("partition")) for p in description["partitions"])
            if description["error_code"] != 0 or not numbers:
                raise RuntimeError(f"{TENANTS} has no partitions yet (error code {description['error_code']})")
            partitions = [TopicPartition(TENANTS, number) for number in numbers]
            probe.assign(partitions)
            ends: dict[TopicPartition, int] = await probe.end_offsets(partitions)
            return ends

        try:
            ends = await retry_until_ready(
                "the tenants topic's end offsets",
                end_offsets_at_start,
                timeout_s=self.settings.startup_timeout_seconds,
                stopping=self._stopping,
            )
            await probe.stop()
            total = sum(ends.values())
            group = self._operator_directory_group()
            delay = 0.1
            while not self._stopping.is_set():
                try:
                    committed = await admin.list_consumer_group_offsets(group, partitions=list(ends))
                except Exception as error:  # the broker is away for a moment: ask again
                    self._operators_behind = f"cannot read the group's offsets: {error or type(error).__name__}"
                else:
                    behind = {
                        partition: end - max(committed[partition].offset if partition in committed else 0, 0)
                        for partition, end in ends.items()
                    }
                    missing = sum(max(gap, 0) for gap in behind.values())
                    if missing == 0:
                        self.operators_caught_up.set()
                        log.info("operator directory caught up", records=total, group=group)
                        return
                    self._operators_behind = f"loading from {TENANTS}: {total - missing} of {total} records applied"
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=delay)
                delay = min(delay * 1.5, 1.0)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self._operators_behind = f"failed: {error}"
            log.error("operator directory catch-up failed", error=str(error))
        finally:
            with contextlib.suppress(Exception):
                await probe.stop()
            with contextlib.suppress(Exception):
                await admin.close()

    def consumer_group_ids(self) -> list[str]:
        """The consumer groups this service reads as (prefix included)."""
        return [self.settings.consumer_group_prefix + spec.group_id for spec in self._consumer_specs]

    def require_operators(self) -> OperatorDirectory:
        if self.operators is None:
            raise RuntimeError("this service keeps no operator directory: call runtime.keep_operator_directory()")
        return self.operators

    # --- single-instance work --------------------------------------------------------------

    def every(self, name: str, interval_s: float, job: Job) -> None:
        """Run ``job()`` every ``interval_s`` seconds in one instance of the deployment.

        A lease document ``every:<name>`` in this service's store decides which instance; the
        time of the next run is kept there too, so restarts and takeovers neither repeat nor
        skip a run. Starts once the runtime is connected; stops on shutdown. A failing job is
        logged and runs again next interval. See ``aftercare.events.schedule``.
        """
        if self._jobs is None:
            self._pending_jobs.append((name, interval_s, job))
        else:
            self._jobs.every(name, interval_s, job)

    def on_due(self, kind: str, handler: DueHandler) -> None:
        """Handle stored due times of ``kind`` (``runtime.due_times.schedule(key, due_at, kind,
        payload)``): fired at least once after their time by one instance; handlers must be
        idempotent. Every instance registers the same handlers."""
        if self._due_times is None:
            self._pending_due_handlers.append((kind, handler))
        else:
            self._due_times.on_due(kind, handler)
            self._start_due_poller()

    @property
    def due_times(self) -> DueTimes:
        """This service's stored due times: ``schedule(key, due_at, kind, payload)``, ``cancel(key)``."""
        if self._due_times is None:
            raise RuntimeError("the store is not connected yet")
        return self._due_times

    def _start_due_poller(self) -> None:
        if self._due_poller_started or self._jobs is None or self._due_times is None or not self.connected.is_set():
            return
        if self._due_times.kinds:
            self._due_poller_started = True
            self._jobs.every("due-times", self.settings.due_poll_seconds, self._due_times.poll)

    # --- lifecycle -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        configure_logging(self.name, self.settings.log_level)
        configure_tracing(self.name, self.settings.otel_exporter, self.settings.otel_endpoint)
        app.state.runtime = self
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    async def start(self) -> None:
        """Begin connecting in the background; returns at once."""
        self.mongo = AsyncMongoClient(
            self.settings.mongo_url, serverSelectionTimeoutMS=3000, connectTimeoutMS=3000, tz_aware=True
        )
        database = self.mongo[self.settings.database]
        self._jobs = Jobs(Leases(database, self.holder_id, period=timedelta(seconds=self.settings.lease_seconds)))
        self._due_times = DueTimes(database, max_attempts=self.settings.due_max_attempts)
        if self._keeps_operator_directory:
            self.operators = OperatorDirectory(database)
        for name, interval_s, job in self._pending_jobs:
            self._jobs.every(name, interval_s, job)
        for kind, handler in self._pending_due_handlers:
            self._due_times.on_due(kind, handler)
        self._pending_jobs.clear()
        self._pending_due_handlers.clear()
        self._connect_task = asyncio.create_task(self._connect(), name=f"{self.name}-connect")
        log.info(
            "service starting",
            service=self.name,
            http_port=self.settings.http_port,
            kafka=self.settings.kafka_bootstrap_servers,
            store=self.settings.mongo_url,
            database=self.settings.database,
        )

    async def _connect(self) -> None:
        timeout = self.settings.startup_timeout_seconds
        try:
            assert self.mongo is not None
            mongo = self.mongo
            await retry_until_ready(
                f"the store at {self.settings.mongo_url}",
                lambda: mongo.admin.command("ping"),
                timeout_s=timeout,
                stopping=self._stopping,
            )
            await ProcessedEventLog(self.db).ensure_indexes()
            await self.due_times.ensure_indexes()
            if self.operators is not None:
                await self.operators.ensure_indexes()
            if self._on_store_ready is not None:
                await self._on_store_ready(self)
            log.info("store connected", store=self.settings.mongo_url)

            specs = topic_specs()
            await retry_until_ready(
                f"Kafka at {self.settings.kafka_bootstrap_servers}",
                lambda: ensure_topics(
                    self.settings.kafka_bootstrap_servers,
                    specs,
                    self.settings.topic_partitions,
                    self.settings.topic_replication_factor,
                ),
                timeout_s=timeout,
                stopping=self._stopping,
            )
            producer = EventProducer(
                self.settings.kafka_bootstrap_servers,
                client_id=self.name,
                publish_deadline_s=self.settings.publish_deadline_seconds,
            )
            await retry_until_ready("the Kafka producer", producer.start, timeout_s=timeout, stopping=self._stopping)
            self.producer = producer
            log.info("Kafka connected", kafka=self.settings.kafka_bootstrap_servers)
            if self._on_connected is not None:
                # The service builds what its handlers and endpoints need, before consuming.
                await self._on_connected(self)

            for spec in self._consumer_specs:
                runner = ConsumerRunner(
                    bootstrap_servers=self.settings.kafka_bootstrap_servers,
                    group_id=self.settings.consumer_group_prefix + spec.group_id,
                    topics=spec.topics,
                    handlers=spec.handlers(self),
                    processed=ProcessedEventLog(self.db),
                    producer=producer,
                    retry=spec.retry,
                    concurrency=spec.concurrency,
                    client_id=f"{self.name}-{spec.group_id}",
                )
                self.runners.append(runner)
                self._runner_tasks.append(asyncio.create_task(self._keep_consuming(runner)))
            if self.operators is not None:
                self.spawn(self._catch_up_operator_directory(), f"{self.name}-operator-catch-up")
            self.connected.set()
            self._start_due_poller()
            assert self._jobs is not None
            self._jobs.start()
            log.info("service ready", service=self.name)
        except asyncio.CancelledError:
            return
        except Exception as error:
            self.startup_error = error
            log.error("service could not start", service=self.name, error=str(error))

    async def _keep_consuming(self, runner: ConsumerRunner) -> None:
        try:
            await runner.run()
        except Exception as error:  # the loop itself broke (not a handler): say so loudly
            self.startup_error = error
            log.exception("consumer loop stopped unexpectedly", group=runner.group_id)

    def spawn(self, coroutine: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        """Run background work that is cancelled on shutdown."""
        task = asyncio.ensure_future(coroutine)
        task.set_name(name)
        self.background_tasks.append(task)
        return task

    async def stop(self) -> None:
        log.info("service stopping", service=self.name)
        self._stopping.set()
        if self._connect_task is not None:
            self._connect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connect_task
        for runner in self.runners:
            runner.stop()
        if self._runner_tasks:
            await asyncio.gather(*self._runner_tasks, return_exceptions=True)
        if self._jobs is not None:
            await self._jobs.stop()
        for task in self.background_tasks:
            task.cancel()
        if self.background_tasks:
            await asyncio.gather(*self.background_tasks, return_exceptions=True)
        if self._on_shutdown is not None:
            with contextlib.suppress(Exception):
                await self._on_shutdown(self)
        if self.producer is not None:
            with contextlib.suppress(Exception):
                await self.producer.stop()
        if self.mongo is not None:
            await self.mongo.close()
        SERVICE_READY.labels(service=self.name).set(0)
        log.info("service stopped", service=self.name)

    # --- health --------------------------------------------------------------------------

    async def readiness(self) -> dict[str, str]:
        """Ask the store and Kafka right now; each check is 'ok' or says what is wrong."""
        checks: dict[str, str] = {}
        try:
            assert self.mongo is not None
            await asyncio.wait_for(self.mongo.admin.command("ping"), timeout=2.0)
            checks["store"] = "ok"
        except Exception as error:
            checks["store"] = f"unreachable: {error or type(error).__name__}"
        if self.producer is None:
            checks["kafka"] = "not connected yet" if self.startup_error is None else f"failed: {self.startup_error}"
        else:
            try:
                await asyncio.wait_for(self.producer.kafka.client.fetch_all_metadata(), timeout=2.0)
                checks["kafka"] = "ok"
            except Exception as error:
                checks["kafka"] = f"unreachable: {error or type(error).__name__}"
        stopped = [
            runner.group_id for runner, task in zip(self.runners, self._runner_tasks, strict=True) if task.done()
        ]
        if self.startup_error is not None:
            checks["startup"] = f"failed: {self.startup_error}"
        checks["consumers"] = (
            "ok"
            if not stopped and self.connected.is_set()
            else (f"stopped: {', '.join(stopped)}" if stopped else "not started yet")
        )
        if self.operators is not None:
            # Without its operators a fresh service would answer 401 to every operator token.
            checks["operators"] = "ok" if self.operators_caught_up.is_set() else self._operators_behind
        return checks

    def operations_router(self) -> APIRouter:
        router = APIRouter(tags=["operations"])

        @router.get("/healthz", summary="Liveness: the process answers")
        async def healthz() -> dict[str, str]:
            """Always 200 while the process runs; for restarts on hang, not for routing."""
            return {"status": "alive", "service": self.name}

        @router.get(
            "/readyz",
            summary="Readiness: Kafka and the store really answer",
            responses={503: {"description": "Kafka, the store or a consumer is not ready"}},
        )
        async def readyz() -> JSONResponse:
            """200 when the store answers a ping, Kafka answers a metadata request, every
            consumer loop runs and (services that check operators) the operator copy holds what
            the tenants topic held at start; 503 with the failing checks otherwise."""
            checks = await self.readiness()
            ready = all(value == "ok" for value in checks.values())
            SERVICE_READY.labels(service=self.name).set(1 if ready else 0)
            return JSONResponse(
                {"status": "ready" if ready else "not ready", "service": self.name, "checks": checks},
                status_code=200 if ready else 503,
            )

        @router.get("/metrics", summary="Prometheus metrics", response_class=Response)
        async def metrics() -> Response:
            """Prometheus text exposition format."""
            return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

        return router


def serve(app: FastAPI, settings: ServiceSettings) -> None:
    """Run the service until SIGTERM/SIGINT (uvicorn then runs the lifespan's shutdown)."""
    configure_logging(settings.service_name, settings.log_level)
    uvicorn.run(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        timeout_graceful_shutdown=30,
        access_log=False,
        # HTTPS when the service's settings name a certificate and key (plain HTTP otherwise).
        ssl_certfile=str(settings.tls_certfile) if settings.tls_certfile else None,
        ssl_keyfile=str(settings.tls_keyfile) if settings.tls_keyfile else None,
    )
