"""Incidents intake accepts per second, next to a bare FastAPI endpoint, on a real broker and store.

    uv run python bench/intake_accept_rate.py [--bootstrap HOST:PORT --mongo-url URL]
                                              [--seconds 20] [--concurrency 32] [--stored 100000]
                                              [--idle-seconds 30] [--py-spy FILE]

The load comes from a compiled load generator, ``vegeta`` (v12.13.0), which this script builds
into ``.local/tools/`` with ``go install`` on its first run: a Python load generator was the
ceiling (the bare endpoint did 360/s under httpx and 2,486/s under vegeta on the same machine).

Without addresses (arguments, or AFTERCARE_BENCH_KAFKA_BOOTSTRAP_SERVERS and
AFTERCARE_BENCH_MONGO_URL) it starts its own Kafka broker and FerretDB store on free ports in a
temporary directory (``infra/localinfra.py``) and stops them at the end; only then can it show
their CPU time.

Two servers, each its own process run by uvicorn exactly as ``aftercare.events.runtime.serve``
runs a service (one process, no access log):

* intake (``python -m aftercare.intake``) with one seeded tenant; every request is a full
  ``POST /v1/incidents`` opening a new incident: API key, rate limit, incident number, the
  incident document with its outbox, the IncidentReported event acknowledged by Kafka
  (acks=all), the 202;
* a bare FastAPI app whose ``POST /v1/incidents`` reads the JSON body and answers 202.

Runs, each ``--seconds`` long at ``--concurrency`` senders (vegeta ``-rate=0 -max-workers``):
bare, intake (a store with ~1k incidents), then ``--stored`` incidents are written straight
into intake's store, then intake and bare again. Printed per run: accepted/s, p50/p99, CPU
per accepted report of intake, store and Kafka (from /proc), and intake/bare; between the
runs, the store's CPU while nothing arrives (``--idle-seconds``) at ~1k and at ``--stored``
incidents. Targets: intake >= 20 % of bare, p99 <= 250 ms, <= 3 ms CPU per report (intake +
store + Kafka), the same with 100k stored, idle store CPU not growing with the incidents. It
also checks what a 202 promises: the incidents topic grew by at least one event per 202.

``--py-spy FILE`` records intake with py-spy (installed into ``.local/tools/`` on first use)
during an extra intake run after the measured ones (sampling costs CPU) and writes a flame graph
(SVG) to FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
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
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pymongo import AsyncMongoClient

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "infra"))

from localinfra import free_port, throwaway_nodes  # noqa: E402

INCIDENTS_TOPIC = "aftercare.incidents"


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
    database: str = ""

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


def start_intake(
    bootstrap: str, mongo_url: str, workdir: Path, *, name: str = "intake", code: Path | None = None
) -> Server:
    """Start intake; with ``code`` (a checkout of another commit), that checkout's intake and events."""
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
    seed_file = workdir / f"seed-{name}.json"
    seed_file.write_text(json.dumps(seed))
    database = f"bench_intake_{secrets.token_hex(4)}"
    env = dict(os.environ) | {
        "AFTERCARE_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "AFTERCARE_MONGO_URL": mongo_url,
        "AFTERCARE_INTAKE_DATABASE": database,
        "AFTERCARE_INTAKE_HTTP_PORT": str(port),
        "AFTERCARE_INTAKE_SMTP_ENABLED": "false",
        "AFTERCARE_INTAKE_SEED_FILE": str(seed_file),
        "AFTERCARE_INTAKE_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        # The bench measures the work per accept, not the rate limit's refusals.
        "AFTERCARE_INTAKE_RATE_LIMIT_PER_MINUTE": "100000000",
        "AFTERCARE_STARTUP_TIMEOUT_SECONDS": "120",
    }
    if code is not None:
        # Ahead of the workspace's editable installs: the other checkout's packages are imported.
        sources = [code / "services" / "intake" / "src", code / "libs" / "events" / "src"]
        env["PYTHONPATH"] = os.pathsep.join(str(path) for path in sources)
    command = [sys.executable, "-m", "aftercare.intake"]
    log_file = workdir / f"{name}.log"
    with log_file.open("ab") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(name, f"http://127.0.0.1:{port}", process, log_file, api_key, database)
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


# --- tools ---------------------------------------------------------------------------------

VEGETA_VERSION = "v12.13.0"
TOOLS = REPO_ROOT / ".local" / "tools"
PY_SPY_VERSION = "0.4.1"


def vegeta() -> Path:
    """The vegeta binary, built with ``go install`` into .local/tools on first use."""
    directory = TOOLS / f"vegeta-{VEGETA_VERSION}"
    binary = directory / "vegeta"
    if binary.exists():
        return binary
    go = shutil.which("go")
    if go is None:
        raise SystemExit("the bench needs Go to build its load generator (vegeta); install Go 1.22+")
    print(f"building vegeta {VEGETA_VERSION} into {directory} (first run only) ...", flush=True)
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [go, "install", f"github.com/tsenart/vegeta/v12@{VEGETA_VERSION}"],
        env=dict(os.environ, GOBIN=str(directory), CGO_ENABLED="0"),
        check=True,
    )
    return binary


def py_spy() -> Path:
    directory = TOOLS / f"py-spy-{PY_SPY_VERSION}"
    binary = directory / "bin" / "py-spy"
    if not binary.exists():
        uv = TOOLS / "bin" / "uv"
        subprocess.run(
            [str(uv), "pip", "install", "--quiet", "--prefix", str(directory), f"py-spy=={PY_SPY_VERSION}"],
            env=dict(os.environ, UV_PYTHON=sys.executable),
            check=True,
        )
    return binary


# --- load -----------------------------------------------------------------------------------


def report_body(n: int) -> dict[str, object]:
    # A realistic monitoring report: a few hundred bytes of JSON. No dedup key: each opens an incident.
    return {
        "title": f"Checkout returns 502 on web-{n % 8:02d} ({n})",
        "severity": "critical",
        "description": "HTTP 502 from the payment gateway for 3 of the last 10 checkouts.",
        "system": "shop-frontend",
        "source": f"web-{n % 8:02d}.shop.example.net",
        "labels": {"env": "prod", "team": "checkout"},
        "reporter": {"system": "bench"},
    }


def write_targets(server: Server, path: Path, count: int = 1000) -> None:
    """vegeta JSON targets: ``count`` different reports, sent round-robin."""
    header = {"Content-Type": ["application/json"]}
    if server.api_key:
        header["Authorization"] = [f"Bearer {server.api_key}"]
    with path.open("w") as out:
        for n in range(count):
            body = base64.b64encode(json.dumps(report_body(n)).encode()).decode()
            target = {"method": "POST", "url": server.base_url + "/v1/incidents", "body": body, "header": header}
            out.write(json.dumps(target) + "\n")


@dataclass
class Result:
    name: str
    accepted: int
    failed: int
    seconds: float
    p50_ms: float
    p99_ms: float
    cpu_ms: dict[str, float]  # CPU seconds used during the run, per watched process, in ms
    errors: list[str]

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds if self.seconds else 0.0

    def cpu_per_report(self, names: tuple[str, ...]) -> float:
        return sum(self.cpu_ms.get(name, 0.0) for name in names) / max(1, self.accepted)


def attack(server: Server, seconds: float, concurrency: int, workdir: Path, label: str) -> Result:
    targets = workdir / f"targets-{server.name}.json"
    if not targets.exists():
        write_targets(server, targets)
    results = workdir / f"{label}.bin"
    # Both intakes (with --compare-with) are "intake" in the CPU figures.
    watched = WATCHED | {("intake" if server.name.startswith("intake") else server.name): server.process.pid}
    before = {name: cpu_seconds(pid) for name, pid in watched.items()}
    with results.open("wb") as out:
        subprocess.run(
            [
                str(vegeta()), "attack", "-format=json", f"-targets={targets}", "-rate=0",
                f"-workers={concurrency}", f"-max-workers={concurrency}", f"-duration={seconds}s",
                "-timeout=60s", "-keepalive=true",
            ],
            stdout=out,
            check=True,
        )  # fmt: skip
    used = {name: (cpu_seconds(pid) - before[name]) * 1000 for name, pid in watched.items()}
    summary = json.loads(
        subprocess.run([str(vegeta()), "report", "-type=json", str(results)], capture_output=True, check=True).stdout
    )
    codes = {str(code): count for code, count in (summary.get("status_codes") or {}).items()}
    accepted = codes.get("202", 0)
    # vegeta's duration is the attack; wait is the time after it for the last answers.
    seconds_taken = (summary["duration"] + summary["wait"]) / 1e9
    latencies = summary["latencies"]
    return Result(
        label,
        accepted,
        summary["requests"] - accepted,
        seconds_taken,
        latencies["50th"] / 1e6,
        latencies["99th"] / 1e6,
        used,
        list(summary.get("errors") or [])[:3],
    )


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


INFRA = ("store", "kafka")


def print_result(result: Result) -> None:
    print(
        f"  {result.name:<22} {result.rate:7.0f} accepted/s   p50 {result.p50_ms:7.1f} ms   "
        f"p99 {result.p99_ms:7.1f} ms   ({result.accepted} accepted, {result.failed} not, {result.seconds:.1f} s)",
        flush=True,
    )
    cpu = ", ".join(f"{name} {ms / max(1, result.accepted):.2f}" for name, ms in result.cpu_ms.items())
    print(f"  {'':<22} CPU ms per accepted report: {cpu}", flush=True)
    for error in result.errors:
        print(f"  {'':<22} error: {error}", flush=True)


async def idle_cpu(seconds: float) -> dict[str, float]:
    """Percent of one core each watched process uses while nothing arrives."""
    before = {name: cpu_seconds(pid) for name, pid in WATCHED.items()}
    await asyncio.sleep(seconds)
    return {name: (cpu_seconds(pid) - before[name]) / seconds * 100 for name, pid in WATCHED.items()}


async def count_incidents(mongo_url: str, database: str) -> int:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
    try:
        return await client[database]["incidents"].estimated_document_count()
    finally:
        await client.close()


async def fill_store(mongo_url: str, database: str, target: int) -> None:
    """Write incidents straight into intake's store until it holds ``target`` (as intake writes them)."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
    try:
        incidents = client[database]["incidents"]
        model = await incidents.find_one({"outbox_pending": False}) or await incidents.find_one({})
        assert model is not None, "intake stored nothing to copy"
        have = await incidents.estimated_document_count()
        started = time.perf_counter()
        batch: list[dict[str, Any]] = []
        for n in range(have, target):
            document = dict(model, _id=f"filler-{n}", number=f"INC-{9_000_000 + n}", outbox=[], outbox_pending=False)
            document["title"] = f"Stored incident {n}"
            # Most of a real store is history: resolved and closed incidents.
            document["status"] = ("closed", "resolved", "reported")[n % 3]
            batch.append(document)
            if len(batch) == 1000:
                await incidents.insert_many(batch, ordered=False)
                batch = []
                if n % 20_000 < 1000:
                    print(f"  ... {n + 1} incidents stored", flush=True)
        if batch:
            await incidents.insert_many(batch, ordered=False)
        print(f"  filled to {target} incidents in {time.perf_counter() - started:.0f} s", flush=True)
    finally:
        await client.close()


def record_py_spy(pid: int, seconds: float, output: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(py_spy()), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "50",
         "--format", "flamegraph", "--output", str(output), "--nonblocking"],
    )  # fmt: skip


async def bench(bootstrap: str, mongo_url: str, args: argparse.Namespace) -> int:
    vegeta()
    workdir = Path(tempfile.mkdtemp(prefix="aftercare-bench-intake-"))
    intake = start_intake(bootstrap, mongo_url, workdir)
    bare = start_bare(workdir)
    # The same bench against another checkout's intake, same store, broker and run (before/after).
    before = (
        start_intake(bootstrap, mongo_url, workdir, name="intake-before", code=args.compare_with)
        if args.compare_with is not None
        else None
    )
    results: list[Result] = []
    idle: dict[int, dict[str, float]] = {}
    try:
        before_topic = await topic_size(bootstrap)
        print(f"warm-up: {args.warmup_seconds:g} s each (not counted)", flush=True)
        attack(bare, args.warmup_seconds, args.concurrency, workdir, "warmup-bare")
        accepted = attack(intake, args.warmup_seconds, args.concurrency, workdir, "warmup-intake").accepted
        if before is not None:
            accepted += attack(before, args.warmup_seconds, args.concurrency, workdir, "warmup-before").accepted
        print(f"runs of {args.seconds:g} s at {args.concurrency} concurrent senders (vegeta {VEGETA_VERSION}):")
        result = attack(bare, args.seconds, args.concurrency, workdir, bare.name)
        print_result(result)
        results.append(result)
        # With --compare-with, the two intakes take turns (--rounds times), so drifting load
        # on a shared machine hits both alike.
        for round_number in range(args.rounds if before is not None else 1):
            for server in (before, intake) if before is not None else (intake,):
                assert server is not None
                label = server.name + (f" #{round_number + 1}" if args.rounds > 1 and before is not None else "")
                result = attack(server, args.seconds, args.concurrency, workdir, label.replace(" #", "-"))
                result.name = label
                print_result(result)
                results.append(result)
                accepted += result.accepted
        if args.py_spy is not None:
            # A run of its own: the sampler takes CPU from the measured runs otherwise.
            spy = record_py_spy(intake.process.pid, args.seconds, args.py_spy)
            accepted += attack(intake, args.seconds, args.concurrency, workdir, "profiled").accepted
            spy.wait(timeout=300)
            print(f"  (an extra, unmeasured intake run was sampled by py-spy: {args.py_spy})", flush=True)
        stored = await count_incidents(mongo_url, intake.database)
        await asyncio.sleep(5)  # let the last requests' follow-up work finish
        idle[stored] = await idle_cpu(args.idle_seconds)
        print(f"  idle CPU with {stored} incidents stored: {_percent(idle[stored])}", flush=True)

        if args.stored > stored:
            print(f"storing {args.stored} incidents ...", flush=True)
            await fill_store(mongo_url, intake.database, args.stored)
            await asyncio.sleep(10)
            # Not counted again: a count reads every document on the embedded store, which at
            # 100k took minutes on a loaded machine.
            stored = args.stored
            idle[stored] = await idle_cpu(args.idle_seconds)
            print(f"  idle CPU with {stored} incidents stored: {_percent(idle[stored])}", flush=True)
            for server, label in ((intake, f"intake@{stored // 1000}k stored"), (bare, "bare (again)")):
                result = attack(server, args.seconds, args.concurrency, workdir, label.split("@")[0] + "-full")
                result.name = label
                print_result(result)
                results.append(result)
            accepted += results[-2].accepted
        published = await topic_size(bootstrap) - before_topic
    finally:
        bare.stop()
        intake.stop()
        if before is not None:
            before.stop()

    print("\nsummary (targets: >= 20 % of bare, p99 <= 250 ms, <= 3 ms CPU per report intake+store+kafka)")
    bare_rate = max(r.rate for r in results if r.name.startswith("bare"))
    for result in results:
        if result.name.startswith("bare"):
            continue
        watched = ("intake", *INFRA) if WATCHED else ("intake",)
        cpu = result.cpu_per_report(watched)
        print(
            f"  {result.name:<22} {result.rate / bare_rate:6.1%} of bare ({bare_rate:.0f}/s)"
            f"   p50 {result.p50_ms:.0f} ms   p99 {result.p99_ms:.0f} ms"
            f"   CPU {cpu:.2f} ms/report ({'+'.join(watched)})"
        )
    for stored, usage in idle.items():
        print(f"  idle with {stored:>7} incidents: {_percent(usage)}")
    ok = published >= accepted
    print(
        f"  events on {INCIDENTS_TOPIC}: {published} for {accepted} reports answered 202 "
        f"({'every 202 is on Kafka' if ok else 'MISSING EVENTS'})"
    )
    if args.py_spy is not None:
        print(f"  py-spy flame graph of intake (extra run at ~1k incidents): {args.py_spy}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


def _percent(usage: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.1f} % of a core" for name, value in usage.items()) or "(not measured)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", default=os.environ.get("AFTERCARE_BENCH_KAFKA_BOOTSTRAP_SERVERS"))
    parser.add_argument("--mongo-url", default=os.environ.get("AFTERCARE_BENCH_MONGO_URL"))
    parser.add_argument("--seconds", type=float, default=20, help="length of each measured run")
    parser.add_argument("--warmup-seconds", type=float, default=5)
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent senders")
    parser.add_argument("--stored", type=int, default=100_000, help="incidents in the store for the second runs")
    parser.add_argument("--idle-seconds", type=float, default=30, help="how long idle CPU is measured")
    parser.add_argument("--py-spy", type=Path, default=None, help="record intake with py-spy; flame graph to FILE")
    parser.add_argument(
        "--compare-with",
        type=Path,
        default=None,
        metavar="CHECKOUT",
        help="also run the intake of another checkout (e.g. `git worktree add /tmp/before main`) in the same run",
    )
    parser.add_argument("--rounds", type=int, default=2, help="turns of each intake with --compare-with")
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
