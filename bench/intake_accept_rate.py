"""Incidents intake accepts per second, next to a bare FastAPI endpoint, on a real broker and store.

    uv run python bench/intake_accept_rate.py [--bootstrap HOST:PORT --mongo-url URL]
                                              [--requests 2000] [--concurrency 32] [--warmup 200]
                                              [--rounds 2] [--profile FILE]

Without addresses (arguments, or AFTERCARE_BENCH_KAFKA_BOOTSTRAP_SERVERS and
AFTERCARE_BENCH_MONGO_URL) it starts its own Kafka broker and FerretDB store on free ports in a
temporary directory (``infra/localinfra.py``) and stops them at the end.

Two servers, each its own process run by uvicorn exactly as ``aftercare.events.runtime.serve``
runs a service (one process, no access log):

* intake (``python -m aftercare.intake``) with one seeded tenant; every request is a full
  ``POST /v1/incidents``: API key lookup, rate limit, incident number, the incident document
  with its outbox, the IncidentReported event acknowledged by Kafka (acks=all), the 202;
* a bare FastAPI app whose ``POST /v1/incidents`` reads the JSON body and answers 202.

The same load drives both: ``--concurrency`` httpx clients sending ``--requests`` reports in
all after ``--warmup`` unmeasured ones. Printed: incidents/s, p50/p99 latency and the ratio
intake/bare (target: intake >= 40 % of bare). It also checks what a 202 promises: the incidents
topic grew by one event per accepted report.

``--profile FILE`` runs intake under cProfile (slower; for finding where the time goes, not for
the figures) and prints its top functions by own time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pstats
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "infra"))

from localinfra import free_port, throwaway_nodes  # noqa: E402

INCIDENTS_TOPIC = "aftercare.incidents"

# Intake under cProfile. uvicorn re-raises SIGTERM once it has shut down, which would end the
# process before `python -m cProfile` writes anything: the stats are written in the handler.
PROFILED_INTAKE = """
import cProfile, signal, sys
profiler = cProfile.Profile()
def write_stats(*_):
    profiler.disable()
    profiler.dump_stats(sys.argv[1])
    sys.exit(0)
signal.signal(signal.SIGTERM, write_stats)
from aftercare.intake.__main__ import main
profiler.enable()
main()
"""
TARGET_RATIO = 0.40


# --- the bare endpoint (run in its own process: `python bench/intake_accept_rate.py --serve-bare PORT`) ---


def serve_bare(port: int) -> None:
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/v1/incidents", status_code=202)
    async def accept(body: dict[str, object]) -> dict[str, str]:
        return {"status": "accepted"}

    @app.get("/readyz")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    # The settings aftercare.events.runtime.serve gives every service.
    uvicorn.run(app, host="127.0.0.1", port=port, log_config=None, timeout_graceful_shutdown=30, access_log=False)


# --- infrastructure and servers ---------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# Processes whose CPU time is shown per round (the broker and store when this script started them).
WATCHED: dict[str, int] = {}


@contextlib.contextmanager
def local_infrastructure() -> Iterator[tuple[str, str]]:
    base = Path(tempfile.mkdtemp(prefix="aftercare-bench-"))
    print(f"starting a local Kafka broker and store under {base} ...", flush=True)
    try:
        with throwaway_nodes(base) as (kafka, store):
            assert kafka.process is not None and store.process is not None
            WATCHED.update(kafka=kafka.process.pid, store=store.process.pid)
            yield kafka.bootstrap_servers, store.url
    finally:
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class Server:
    name: str
    base_url: str
    process: subprocess.Popen[bytes]
    log_file: Path
    api_key: str = ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_ready(server: Server, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with {server.process.returncode}; see {server.log_file}:\n"
                + server.log_file.read_text(errors="replace")[-3000:]
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.base_url + "/readyz", timeout=2.0).status_code == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{server.name} not ready after {timeout_s}s; see {server.log_file}")


def start_intake(bootstrap: str, mongo_url: str, workdir: Path, profile: Path | None) -> Server:
    port = free_port()
    api_key = "ak_bench_" + secrets.token_urlsafe(24)
    seed = [
        {
            "tenant_id": "bench-shop",
            "profile": {
                "name": "Bench Shop",
                "tier": {
                    "name": "gold",
                    "sla": [{"priority": "P1", "response_minutes": 15, "resolution_minutes": 240}],
                },
            },
            "api_keys": [{"name": "bench", "key": api_key}],
        }
    ]
    seed_file = workdir / "seed.json"
    seed_file.write_text(json.dumps(seed))
    env = dict(os.environ) | {
        "AFTERCARE_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "AFTERCARE_MONGO_URL": mongo_url,
        "AFTERCARE_INTAKE_DATABASE": f"bench_intake_{secrets.token_hex(4)}",
        "AFTERCARE_INTAKE_HTTP_PORT": str(port),
        "AFTERCARE_INTAKE_SMTP_ENABLED": "false",
        "AFTERCARE_INTAKE_SEED_FILE": str(seed_file),
        "AFTERCARE_INTAKE_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        # The bench measures the work per accept, not the rate limit's refusals.
        "AFTERCARE_INTAKE_RATE_LIMIT_PER_MINUTE": "100000000",
        "AFTERCARE_STARTUP_TIMEOUT_SECONDS": "120",
    }
    command = [sys.executable, "-m", "aftercare.intake"]
    if profile is not None:
        command = [sys.executable, "-c", PROFILED_INTAKE, str(profile)]
    log_file = workdir / "intake.log"
    with log_file.open("ab") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server("intake", f"http://127.0.0.1:{port}", process, log_file, api_key)
    wait_ready(server)
    return server


def start_bare(workdir: Path) -> Server:
    port = free_port()
    log_file = workdir / "bare.log"
    with log_file.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, __file__, "--serve-bare", str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    server = Server("bare", f"http://127.0.0.1:{port}", process, log_file)
    wait_ready(server)
    return server


# --- load -----------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    accepted: int
    failed: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def report_body(n: int) -> dict[str, object]:
    # A realistic monitoring report: a few hundred bytes of JSON.
    return {
        "title": f"Checkout returns 502 on web-{n % 8:02d}",
        "severity": "critical",
        "description": "HTTP 502 from the payment gateway for 3 of the last 10 checkouts.",
        "system": "shop-frontend",
        "source": f"web-{n % 8:02d}.shop.example.net",
        "labels": {"env": "prod", "team": "checkout"},
        "reporter": {"system": "bench"},
    }


async def drive(server: Server, count: int, concurrency: int, label: str) -> Result:
    headers = {"Authorization": f"Bearer {server.api_key}"} if server.api_key else {}
    latencies: list[float] = []
    failed = 0
    next_index = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60.0, limits=limits, headers=headers) as http:

        async def worker() -> None:
            nonlocal next_index, failed
            while next_index < count:
                n = next_index
                next_index += 1
                started = time.perf_counter()
                try:
                    answer = await http.post("/v1/incidents", json=report_body(n))
                    problem = "" if answer.status_code == 202 else f"{answer.status_code} {answer.text[:200]}"
                except httpx.HTTPError as error:
                    problem = f"{type(error).__name__}: {error}"
                latencies.append((time.perf_counter() - started) * 1000)
                if problem:
                    failed += 1
                    if failed <= 3:
                        print(f"  {server.name}: {problem}", flush=True)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return Result(label, count - failed, failed, seconds, latencies)


async def topic_size(bootstrap: str) -> int:
    """How many records the incidents topic holds now (all partitions)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        (description,) = await admin.describe_topics([INCIDENTS_TOPIC])
    finally:
        await admin.close()
    partitions = [
        TopicPartition(INCIDENTS_TOPIC, p.get("partition_index", p.get("partition"))) for p in description["partitions"]
    ]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(partitions)
        begins = await consumer.beginning_offsets(partitions)
        return sum(ends[tp] - begins[tp] for tp in partitions)
    finally:
        await consumer.stop()


def print_result(result: Result) -> None:
    print(
        f"  {result.name:<6} {result.rate:8.0f} incidents/s   p50 {result.percentile(0.50):7.1f} ms   "
        f"p99 {result.percentile(0.99):7.1f} ms   ({result.accepted} accepted, {result.failed} failed, "
        f"{result.seconds:.1f} s)",
        flush=True,
    )


async def bench(bootstrap: str, mongo_url: str, args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="aftercare-bench-intake-"))
    intake = start_intake(bootstrap, mongo_url, workdir, args.profile)
    bare = start_bare(workdir)
    try:
        before = await topic_size(bootstrap)
        await drive(bare, args.warmup, args.concurrency, "bare")
        accepted = (await drive(intake, args.warmup, args.concurrency, "intake")).accepted
        best: dict[str, Result] = {}
        for round_number in range(1, args.rounds + 1):
            print(f"round {round_number}: {args.requests} reports each at concurrency {args.concurrency}", flush=True)
            for server in (bare, intake):
                watched = WATCHED | {server.name: server.process.pid}
                before_cpu = {name: cpu_seconds(pid) for name, pid in watched.items()}
                result = await drive(server, args.requests, args.concurrency, server.name)
                print_result(result)
                used = {name: cpu_seconds(pid) - before_cpu[name] for name, pid in watched.items()}
                print(
                    "         CPU per report: "
                    + ", ".join(f"{name} {used[name] / result.accepted * 1000:.2f} ms" for name in watched),
                    flush=True,
                )
                if server is intake:
                    accepted += result.accepted
                if server.name not in best or result.rate > best[server.name].rate:
                    best[server.name] = result
        published = await topic_size(bootstrap) - before
    finally:
        bare.stop()
        intake.stop()
    ratio = best["intake"].rate / best["bare"].rate
    print("\nbest round of each:")
    print_result(best["bare"])
    print_result(best["intake"])
    verdict = "meets" if ratio >= TARGET_RATIO else "BELOW"
    print(f"  intake/bare = {ratio:.0%} ({verdict} the {TARGET_RATIO:.0%} target)")
    # At least one event per 202; a few more when the outbox sweep re-published an event whose
    # request was about to remove it (consumers deduplicate by event id).
    print(
        f"  IncidentReported events on {INCIDENTS_TOPIC}: {published} for {accepted} reports accepted "
        f"({'every accept is on Kafka' if published >= accepted else 'MISSING EVENTS'})"
    )
    if args.profile is not None:
        print(f"\nintake's own time per function (cProfile, {args.profile}):")
        pstats.Stats(str(args.profile)).sort_stats("tottime").print_stats(25)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0 if published >= accepted else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", default=os.environ.get("AFTERCARE_BENCH_KAFKA_BOOTSTRAP_SERVERS"))
    parser.add_argument("--mongo-url", default=os.environ.get("AFTERCARE_BENCH_MONGO_URL"))
    parser.add_argument("--requests", type=int, default=2000, help="measured reports per server and round")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2, help="the best round of each server counts")
    parser.add_argument("--profile", type=Path, default=None, help="run intake under cProfile, stats to FILE")
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return 0
    if args.bootstrap and args.mongo_url:
        return asyncio.run(bench(args.bootstrap, args.mongo_url, args))
    with local_infrastructure() as (bootstrap, mongo_url):
        return asyncio.run(bench(bootstrap, mongo_url, args))


if __name__ == "__main__":
    sys.exit(main())
