"""Shared by the notifier benches: infrastructure, a notifier process, a tenant, publishing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "infra"))

from localinfra import free_port, throwaway_nodes  # noqa: E402


@contextlib.contextmanager
def infrastructure() -> Iterator[tuple[str, str]]:
    """AFTERCARE_BENCH_KAFKA + AFTERCARE_BENCH_MONGO_URL if set, else a throwaway broker and store."""
    if os.environ.get("AFTERCARE_BENCH_KAFKA") and os.environ.get("AFTERCARE_BENCH_MONGO_URL"):
        yield os.environ["AFTERCARE_BENCH_KAFKA"], os.environ["AFTERCARE_BENCH_MONGO_URL"]
        return
    base = Path(tempfile.mkdtemp(prefix="aftercare-bench-notifier-"))
    print(f"starting a local Kafka broker and store under {base} ...", flush=True)
    try:
        with throwaway_nodes(base) as (kafka, store):
            yield kafka.bootstrap_servers, store.url
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def notifier_process(
    bootstrap: str, mongo_url: str, env: dict[str, str]
) -> Iterator[tuple[str, subprocess.Popen[bytes], str]]:
    port = free_port()
    database = "bench_notifier_" + secrets.token_hex(4)
    admin = secrets.token_urlsafe(12)
    full = (
        dict(os.environ)
        | {
            "AFTERCARE_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "AFTERCARE_MONGO_URL": mongo_url,
            "AFTERCARE_NOTIFIER_DATABASE": database,
            "AFTERCARE_NOTIFIER_CONSUMER_GROUP_PREFIX": database + "-",
            "AFTERCARE_NOTIFIER_HTTP_PORT": str(port),
            "AFTERCARE_NOTIFIER_ADMIN_TOKEN": admin,
            "AFTERCARE_NOTIFIER_THROTTLE_MINUTES": "0",
            "AFTERCARE_NOTIFIER_DELIVERY_POLL_SECONDS": "0.2",
            "AFTERCARE_NOTIFIER_WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true",
            "AFTERCARE_NOTIFIER_WEBHOOK_ALLOW_HTTP": "true",
            "AFTERCARE_LOG_LEVEL": "WARNING",
        }
        | env
    )
    # A fresh deployment measuring new work: start at the end of the incident topics (a broker
    # shared with tests holds thousands of old incidents); tenants and operators from the start.
    with ThreadPoolExecutor(max_workers=1) as pool:  # called from a running event loop
        pool.submit(asyncio.run, _start_at_the_end(bootstrap, database + "-notifier")).result()
    log = open(tempfile.mktemp(prefix="notifier-bench-", suffix=".log"), "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "aftercare.notifier"], env=full, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 400  # a loaded shared machine starts slowly
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.3)
        else:
            raise RuntimeError(f"notifier not ready; see {log.name}")
        yield base, process, admin
    finally:
        process.terminate()
        process.wait(30)
        log.close()


async def _start_at_the_end(bootstrap: str, group: str) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from aftercare.events import topics
    from aftercare.events.runtime import ensure_topics
    from aftercare.events.topics import topic_specs

    await ensure_topics(bootstrap, topic_specs(), partitions=3)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        names = [topics.INCIDENTS, topics.TRIAGE, topics.REMEDIATION, topics.NOTIFICATIONS]
        partitions = [TopicPartition(n, p) for n in names for p in range(3)]
        consumer.assign(partitions)
        await consumer.commit(await consumer.end_offsets(partitions))
    finally:
        await consumer.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU the process has used: unlike wall time, hardly changed by how many other
    processes share the machine, so before/after comparisons hold at any load average."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")
