"""How fast remediation starts and advances runs, on a real broker and store, one process.

    uv run python bench/remediation_runs.py [--bootstrap HOST:PORT --mongo-url URL] [--runs 1000]

Without addresses (arguments, or AFTERCARE_BENCH_KAFKA_BOOTSTRAP_SERVERS and
AFTERCARE_BENCH_MONGO_URL) it starts its own Kafka broker and FerretDB store on free ports in a
temporary directory and stops them at the end. It also starts the demo customer system (the
verification probe's target) and one remediation process.

What it does: stores a no-op runbook (three ``add_note`` steps, verification by the customer
system's health endpoint, blast-radius limits at their widest: 100 runs at once on the one system,
so with more than 100 runs the rest wait for slots and each finish admits the next), publishes ``--runs`` incidents
(IncidentReported + IncidentTriaged naming that runbook) before remediation consumes, then lets
remediation work through the backlog. It prints:

* runs started per second: runs admitted (RemediationStarted) / (last admission - first creation).
  Target >= 200/s;
* the engine's own overhead per step: the time from one step's end to the next step's start
  (storing the step, publishing its event, deciding the next move), p50/p99. Target p99 < 20 ms;
* the remediation process's peak RSS while it works. Target <= 150 MB;
* the CPU time per run of the store and of the remediation process, from the second start of
  remediation until every run finished (the store's only when this script started it): what a
  run costs, less dependent on the machine's load than the times above;
* beside them, in the same run: a bare aiokafka consumer loop over the same number of events
  (2 per run), as the ceiling of any consumer on this machine and broker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer
from cryptography.fernet import Fernet
from pymongo import AsyncMongoClient

from aftercare.events.envelope import envelope_for
from aftercare.events.incidents import Channel, IncidentReported, Severity
from aftercare.events.operators import OPERATOR_EVENTS_TENANT, OperatorUpserted, Role, new_operator_token, token_digest
from aftercare.events.producer import EventProducer, PublishFailed
from aftercare.events.runtime import ensure_topics
from aftercare.events.tenants import ContractTier, DiagnosticTarget, Priority, SupportedSystem, TenantUpserted
from aftercare.events.topics import topic_specs
from aftercare.events.triage import IncidentTriaged

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "infra"))
from localinfra import free_port  # noqa: E402

ADMIN_TOKEN = new_operator_token()
SYSTEM = "bench-web"


@contextlib.contextmanager
def local_infrastructure() -> Iterator[tuple[str, str, int | None]]:
    from localinfra import throwaway_nodes

    base = Path(tempfile.mkdtemp(prefix="aftercare-bench-"))
    print(f"starting a local Kafka broker and store under {base} ...", flush=True)
    try:
        with throwaway_nodes(base) as (kafka, store):
            yield kafka.bootstrap_servers, store.url, store.process.pid if store.process else None
    finally:
        shutil.rmtree(base, ignore_errors=True)


def wait_http(url: str, timeout_s: float = 180.0, ok: tuple[int, ...] = (200, 503)) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code in ok:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout_s}s")


def start_process(
    arguments: list[str], env: dict[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen[bytes]:
    out = log.open("ab") if log else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", *arguments], env=env, stdout=out, stderr=out)


def put_runbook(base: str) -> None:
    # The operator arrives on the tenants topic: retry until remediation knows it (a fresh
    # broker takes a while to form consumer groups).
    deadline = time.monotonic() + 600
    while True:
        try:
            answer = httpx.put(
                f"{base}/v1/runbooks/{NOOP_RUNBOOK['name']}",
                json=NOOP_RUNBOOK,
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                timeout=60,
            )
        except httpx.TimeoutException:
            if time.monotonic() > deadline:
                raise
            continue  # a loaded machine: ask again until the deadline
        if answer.status_code in (200, 201) or time.monotonic() > deadline:
            answer.raise_for_status()
            return
        time.sleep(0.5)


async def patiently(publish: Callable[[], Awaitable[object]], attempts: int = 10) -> None:
    """Publish, retrying a bounded number of times: a broker started moments ago may have no
    partition leaders yet (the publish deadline passes while it elects them)."""
    for attempt in range(attempts):
        try:
            await publish()
            return
        except PublishFailed:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(2)


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time the process has used so far (0 when it cannot be read)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        if pid is not None:
            # Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


NOOP_RUNBOOK = {
    "name": "bench-noop",
    "steps": [
        {"name": f"note {i}", "action": "add_note", "params": {"text": "bench {incident.number}"}, "timeout_seconds": 5}
        for i in range(3)
    ],
    "verification": {"expect_status": [200]},
    "blast_radius": {"max_concurrent_per_system": 100, "max_runs_per_system_per_hour": 10000},
}


async def publish_incidents(bootstrap: str, tenant_id: str, count: int) -> None:
    producer = EventProducer(bootstrap, client_id="bench-incidents")
    await producer.start()
    try:
        envelopes = []
        for index in range(count):
            incident_id = f"inc-{uuid.uuid4()}"
            number = f"INC-{index}"
            envelopes.append(
                envelope_for(
                    IncidentReported(
                        incident_id=incident_id,
                        number=number,
                        title="bench",
                        channel=Channel.API,
                        severity=Severity.ERROR,
                        system=SYSTEM,
                        reported_at=datetime.now(UTC),
                    ),
                    source="intake",
                    tenant_id=tenant_id,
                    incident_id=incident_id,
                )
            )
            envelopes.append(
                envelope_for(
                    IncidentTriaged(
                        incident_id=incident_id,
                        number=number,
                        priority=Priority.P3,
                        category="application",
                        system=SYSTEM,
                        runbook=NOOP_RUNBOOK["name"],  # type: ignore[arg-type]
                    ),
                    source="triage",
                    tenant_id=tenant_id,
                    incident_id=incident_id,
                )
            )
        for start in range(0, len(envelopes), 1000):
            batch = envelopes[start : start + 1000]
            await patiently(lambda batch=batch: producer.publish_many(batch))
    finally:
        await producer.stop()


async def bare_consumer_rate(bootstrap: str, count: int) -> float:
    topic = f"bench-bare-{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, topic_specs([topic]), partitions=3)
    producer = EventProducer(bootstrap, client_id="bench-bare")
    await producer.start()
    try:
        events = [
            envelope_for(
                IncidentReported(
                    incident_id=f"b-{i}",
                    number=str(i),
                    title="bench",
                    channel=Channel.API,
                    reported_at=datetime.now(UTC),
                ),
                source="bench",
                tenant_id="bench",
                incident_id=f"b-{i}",
            )
            for i in range(count)
        ]
        for start in range(0, count, 1000):
            batch = events[start : start + 1000]
            await patiently(lambda batch=batch: producer.publish_many(batch, topic))
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bare-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    seen = 0
    started = 0.0
    try:
        while seen < count:
            batch = await consumer.getmany(timeout_ms=500, max_records=200)
            if batch and seen == 0:
                started = time.perf_counter()
            for records in batch.values():
                seen += len(records)
            if batch:
                await consumer.commit()
        return count / (time.perf_counter() - started)
    finally:
        await consumer.stop()


async def bench(args: argparse.Namespace, bootstrap: str, mongo_url: str, store_pid: int | None = None) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="aftercare-bench-remediation-"))
    database = f"bench_remediation_{uuid.uuid4().hex[:8]}"
    customer_port, port = free_port(), free_port()
    customer = start_process(["aftercare.customer_system", "--port", str(customer_port)])
    tenant_id = f"bench-{uuid.uuid4().hex[:6]}"
    env = dict(os.environ) | {
        "AFTERCARE_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "AFTERCARE_MONGO_URL": mongo_url,
        "AFTERCARE_REMEDIATION_DATABASE": database,
        "AFTERCARE_REMEDIATION_CONSUMER_GROUP_PREFIX": f"{database}-",
        "AFTERCARE_REMEDIATION_HTTP_PORT": str(port),
        "AFTERCARE_REMEDIATION_CREDENTIAL_KEY": Fernet.generate_key().decode(),
        "AFTERCARE_LOG_LEVEL": "WARNING",
    }
    base = f"http://127.0.0.1:{port}"
    remediation: subprocess.Popen[bytes] | None = None
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
    try:
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{customer_port}/health")
        await ensure_topics(bootstrap, topic_specs(), partitions=3)
        tenant = envelope_for(
            TenantUpserted(
                tenant_id=tenant_id,
                name="Bench",
                tier=ContractTier(name="gold"),
                systems=[
                    SupportedSystem(
                        name=SYSTEM,
                        diagnostic_target=DiagnosticTarget(
                            kind="http", address=f"http://127.0.0.1:{customer_port}/health"
                        ),
                        admin_endpoint=f"http://127.0.0.1:{customer_port}/admin",
                    )
                ],
            ),
            source="bench",
            tenant_id=tenant_id,
        )
        producer = EventProducer(bootstrap, client_id="bench-tenant")
        await producer.start()
        await patiently(lambda: producer.publish(tenant))
        operator = envelope_for(
            OperatorUpserted(
                operator_id="bench",
                name="Bench",
                email="bench@example.net",
                role=Role.ADMIN,
                token_digests=[token_digest(ADMIN_TOKEN)],
            ),
            source="bench",
            tenant_id=OPERATOR_EVENTS_TENANT,
        )
        await patiently(lambda: producer.publish(operator))
        await producer.stop()

        # First start: store the runbook, then stop so the incidents wait as a backlog.
        log = workdir / "remediation.log"
        remediation = start_process(["aftercare.remediation"], env, log)
        await asyncio.to_thread(wait_http, base + "/readyz", 180.0, (200,))
        await asyncio.to_thread(put_runbook, base)
        remediation.send_signal(signal.SIGTERM)
        remediation.wait(timeout=60)

        print(f"publishing {args.runs} incidents (2 events each) ...", flush=True)
        await publish_incidents(bootstrap, tenant_id, args.runs)

        remediation = start_process(["aftercare.remediation"], env, log)
        store_cpu_before = cpu_seconds(store_pid)
        runs = mongo[database]["runs"]
        peak_rss = 0.0
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            peak_rss = max(peak_rss, rss_mb(remediation.pid))
            done = await runs.count_documents({"status": "succeeded"})
            if done >= args.runs:
                break
            # Not more often: counting reads every finished run whole in the embedded store (0.5 s
            # of its time at 500 runs), and every 0.5 s that took a third of the store from the
            # process measured. The figures come from the runs' own stamps, not from this loop.
            await asyncio.sleep(5)
        else:
            print(f"timed out: {await runs.count_documents({'status': 'succeeded'})} of {args.runs} runs done")
        peak_rss = max(peak_rss, rss_mb(remediation.pid))
        store_cpu = cpu_seconds(store_pid) - store_cpu_before
        remediation_cpu = cpu_seconds(remediation.pid)

        documents = [
            doc async for doc in runs.find({}, {"created_at": 1, "admitted_at": 1, "finished_at": 1, "records": 1})
        ]
        created = [doc["created_at"] for doc in documents]
        admitted = [doc["admitted_at"] for doc in documents if doc.get("admitted_at")]
        started_rate = len(admitted) / max(1e-3, (max(admitted) - min(created)).total_seconds())
        overheads: list[float] = []
        for doc in documents:
            records = doc.get("records") or []
            for before, after in itertools.pairwise(records):
                if before.get("finished_at") and after.get("started_at"):
                    overheads.append((after["started_at"] - before["finished_at"]).total_seconds() * 1000)
        # Where the time goes: runs created (the consumer's side), created -> admitted (the slot),
        # admitted -> finished (steps, probe, the end's write).
        finished = [doc["finished_at"] for doc in documents if doc.get("finished_at")]
        waits = [
            (doc["admitted_at"] - doc["created_at"]).total_seconds() * 1000
            for doc in documents
            if doc.get("admitted_at")
        ]
        works = [
            (doc["finished_at"] - doc["admitted_at"]).total_seconds() * 1000
            for doc in documents
            if doc.get("admitted_at") and doc.get("finished_at")
        ]
        created_span = (max(created) - min(created)).total_seconds()
        bare = await bare_consumer_rate(bootstrap, 2 * args.runs)

        print()
        print(f"remediation, one process, {len(documents)} runs of a no-op runbook (3 note steps + verification)")
        print(f"  runs started/s          {started_rate:8.1f}   (target >= 200)")
        print(
            f"  engine overhead/step    p50 {percentile(overheads, 0.5):6.1f} ms   "
            f"p99 {percentile(overheads, 0.99):6.1f} ms   (target p99 < 20 ms; store keeps ms)"
        )
        print(f"  peak RSS                {peak_rss:8.1f} MB (target <= 150)")
        print(
            f"  runs created            {len(created)} in {created_span:.1f} s; first created -> last finished "
            f"{(max(finished or created) - min(created)).total_seconds():.1f} s"
        )
        print(
            f"  created -> admitted     p50 {percentile(waits or [0.0], 0.5):6.0f} ms   "
            f"p99 {percentile(waits or [0.0], 0.99):6.0f} ms"
        )
        print(
            f"  admitted -> finished    p50 {percentile(works or [0.0], 0.5):6.0f} ms   "
            f"p99 {percentile(works or [0.0], 0.99):6.0f} ms"
        )
        print(
            f"  CPU per run             remediation {remediation_cpu * 1000 / args.runs:6.1f} ms   "
            + (f"store {store_cpu * 1000 / args.runs:6.1f} ms" if store_pid else "store (not started here)")
        )
        print(f"  bare consumer loop      {bare:8.1f} events/s = {bare / 2:8.1f} incidents/s (2 events per run)")
        print(f"  ratio runs started / bare incidents: {started_rate / (bare / 2):.2e}")
        return 0
    finally:
        if remediation is not None and remediation.poll() is None:
            remediation.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                remediation.wait(timeout=30)
        customer.terminate()
        with contextlib.suppress(Exception):
            await mongo.drop_database(database)
        await mongo.close()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", default=os.environ.get("AFTERCARE_BENCH_KAFKA_BOOTSTRAP_SERVERS"))
    parser.add_argument("--mongo-url", default=os.environ.get("AFTERCARE_BENCH_MONGO_URL"))
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    if args.bootstrap and args.mongo_url:
        return asyncio.run(bench(args, args.bootstrap, args.mongo_url))
    with local_infrastructure() as (bootstrap, mongo_url, store_pid):
        return asyncio.run(bench(args, bootstrap, mongo_url, store_pid))


if __name__ == "__main__":
    sys.exit(main())
