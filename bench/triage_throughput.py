"""Triage's speed, by hand (not a test): incidents/s through rules and grouping, and regular
diagnostics at 1,000 targets a minute.

    uv run python bench/triage_throughput.py [--bootstrap HOST:PORT --mongo-url URL]
                                             [--incidents 3000] [--rules 200] [--targets 1000] [--probe-seconds 130]

Without addresses it starts its own Kafka broker and store (``infra/localinfra.py``).

(a) Incidents: N IncidentReported on a fresh topic, consumed by ``ConsumerRunner`` with triage's
    real handler (rules, words, grouping heads, flapping, outbox, publish), 200 rules loaded,
    no probes; beside it the same runner with a handler that does nothing, same broker, same run.
    Target >= 1,000 incidents/s.
(c) Decisions alone (``--only decisions``, no broker or store): CPU per ``decide()`` over the
    bench's incidents and the shipped labelled reports with the same rules, and a hash of every
    decision (category, system, priority, runbook, rules fired with their values, explanation,
    confidence): a change that should not change decisions must print the same hash.
(b) Regular diagnostics: 1,000 targets every 60 s against one local HTTP target, one process;
    prints how late probes started (drift; target < 5 s), CPU per probe and the process's RSS
    (target <= 150 MB).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import os
import resource
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from pymongo import AsyncMongoClient

from aftercare.events.consumer import ConsumerRunner, HandlerTable
from aftercare.events.envelope import Envelope, envelope_for
from aftercare.events.incidents import Channel, IncidentReported, Severity
from aftercare.events.outbox import OutboxRelay
from aftercare.events.processed import ProcessedEventLog
from aftercare.events.producer import EventProducer
from aftercare.events.runtime import ensure_topics
from aftercare.events.tenant_copy import TenantCopy
from aftercare.events.tenants import (
    ContractTier,
    Criticality,
    DiagnosticTarget,
    SlaTarget,
    SupportedSystem,
    TenantUpserted,
)
from aftercare.events.topics import topic_specs
from aftercare.triage.adapters.probes import Prober
from aftercare.triage.adapters.rule_store import RuleBook, RuleStore, load_seed_file
from aftercare.triage.adapters.store import FlapHistory, GroupingHeads, TenantDirectory, TriageIncidents
from aftercare.triage.adapters.targets import TargetStore
from aftercare.triage.components import DEFAULT_RULES
from aftercare.triage.domain.decision import Decision, decide
from aftercare.triage.domain.rules import Facts, Rule, RuleSet, RuleSpec
from aftercare.triage.evaluation import EXAMPLE_SYSTEMS, load, shipped_classifier
from aftercare.triage.service_layer.diagnose import RegularDiagnostics
from aftercare.triage.service_layer.triage_incident import IncidentTriage
from aftercare.triage.settings import TriageSettings

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "infra"))

TITLES = [
    "billing-db: too many connections",
    "shop-web returns 503, health check failing",
    "crm very slow today",
    "Password reset for the wiki please",
    "disk full on file server",
    "VPN keeps dropping",
    "ORA-00060 deadlock detected",
    "suspicious login attempts, brute force",
]


def quiet() -> None:
    logging.basicConfig(level=logging.ERROR)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))


STORE_PID: int | None = None  # the store process, when this bench started it (or --store-pid)


def process_cpu_s(pid: int | None) -> float | None:
    """CPU seconds (user + system) used so far by process ``pid``, from /proc; None if unknown."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def infrastructure(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    global STORE_PID
    bootstrap = args.bootstrap or os.environ.get("AFTERCARE_BENCH_KAFKA_BOOTSTRAP_SERVERS")
    mongo = args.mongo_url or os.environ.get("AFTERCARE_BENCH_MONGO_URL")
    if bootstrap and mongo:
        STORE_PID = args.store_pid
        yield bootstrap, mongo
        return
    from localinfra import throwaway_nodes

    with tempfile.TemporaryDirectory(prefix="triage-bench-") as base, throwaway_nodes(Path(base)) as (kafka, store):
        STORE_PID = store.process.pid if store.process is not None else None
        yield kafka.bootstrap_servers, store.url


def generated_rules(count: int) -> list[RuleSpec]:
    """The shipped rules plus rules that look like a real rule book: keywords, regexes, labels."""
    specs = load_seed_file(DEFAULT_RULES)
    index = 0
    while len(specs) < count:
        kind = index % 4
        when: dict[str, Any]
        if kind == 0:
            when = {"text": {"any": [f"product-{index}", f"module {index}"]}}
        elif kind == 1:
            when = {"text": {"regex": f"ERR-{index:04d}-\\d+"}}
        elif kind == 2:
            when = {"labels": {"team": f"team-{index}"}, "severity": ["critical"]}
        else:
            when = {"source": f"host-{index}-*", "channel": ["alertmanager", "pagerduty"]}
        specs.append(
            RuleSpec.model_validate(
                {
                    "name": f"bench-{index}",
                    "order": 100 + index,
                    "when": when,
                    "then": {"category": "application", "runbook": f"runbook-{index}"},
                }
            )
        )
        index += 1
    return specs


def bench_tenant(systems: list[SupportedSystem] | None = None) -> TenantUpserted:
    return TenantUpserted(
        tenant_id="bench",
        name="Bench",
        tier=ContractTier(name="gold", sla=[SlaTarget(priority="P1", response_minutes=15, resolution_minutes=240)]),
        systems=systems
        or [
            SupportedSystem(name="billing-db", aliases=["billing"], criticality=Criticality.CRITICAL),
            SupportedSystem(name="shop-web", aliases=["shop"], criticality=Criticality.HIGH),
            SupportedSystem(name="crm"),
            SupportedSystem(name="wiki", criticality=Criticality.LOW),
        ],
    )


def bench_report(number: int, reported_at: datetime, incident_id: str | None = None) -> IncidentReported:
    """The bench's incident number ``number``: eight kinds of title, alerts and emails, 400 dedup keys."""
    return IncidentReported(
        incident_id=incident_id or str(uuid.uuid4()),
        number=f"INC-{number}",
        title=TITLES[number % len(TITLES)] + f" #{number % 97}",
        description="Reported by the bench.",
        channel=Channel.ALERTMANAGER if number % 3 else Channel.EMAIL,
        severity=Severity.CRITICAL if number % 5 == 0 else Severity.ERROR,
        source=f"host-{number % 50}",
        dedup_key=f"bench-{number % 400}",
        reported_at=reported_at,
    )


def decisions_bench(args: argparse.Namespace) -> None:
    rules = RuleSet([Rule(spec) for spec in generated_rules(args.rules)])
    at = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    cases: list[tuple[Facts, TenantUpserted]] = []
    tenant, examples_tenant = bench_tenant(), bench_tenant(EXAMPLE_SYSTEMS)
    for number in range(args.incidents):
        report = bench_report(number, at)
        facts = Facts(
            "bench",
            report.channel.value,
            report.severity.value,
            report.title,
            report.description,
            report.source,
            report.system,
            report.labels,
        )
        cases.append((facts, tenant))
    for index, example in enumerate(load()):
        channel = ("email", "phone", "web")[index % 3]
        cases.append((Facts("bench", channel, "error", example.text, "", None, None, {}), examples_tenant))
    classifier = shipped_classifier().predict

    def run() -> list[Decision]:
        return [decide(facts, owner, rules, reported_at=at, classifier=classifier) for facts, owner in cases]

    decisions = run()  # the word caches warm, as in a running service
    best = float("inf")
    for _ in range(3):
        cpu = time.process_time()
        decisions = run()
        best = min(best, time.process_time() - cpu)
    digest = hashlib.sha256(
        repr(
            [
                (
                    d.category,
                    d.system,
                    d.priority,
                    d.impact,
                    d.urgency,
                    d.runbook,
                    d.explanation,
                    d.confidence,
                    [(f.rule, f.version, f.matched, f.sets) for f in d.rules_fired],
                )
                for d in decisions
            ]
        ).encode()
    ).hexdigest()[:16]
    print(
        f"  decide(): {1000 * best / len(cases):.3f} ms CPU per decision over {len(cases)} reports "
        f"({args.incidents} bench incidents + {len(cases) - args.incidents} labelled), {len(rules)} rules; "
        f"decisions hash {digest}"
    )


async def produce_incidents(producer: EventProducer, topic: str, tenant_id: str, count: int) -> None:
    batch: list[Envelope[Any]] = []
    for number in range(count):
        incident_id = str(uuid.uuid4())
        event = bench_report(number, datetime.now(UTC), incident_id)
        batch.append(envelope_for(event, source="bench", tenant_id=tenant_id, incident_id=incident_id))
        if len(batch) == 500:
            await producer.publish_many(batch, topic=topic)
            batch = []
    if batch:
        await producer.publish_many(batch, topic=topic)


async def consume(
    bootstrap: str,
    database: Any,
    producer: EventProducer,
    topic: str,
    handlers: HandlerTable,
    count: int,
    concurrency: int,
) -> float:
    processed = ProcessedEventLog(database)
    await processed.ensure_indexes()
    seen = 0
    done = asyncio.Event()

    async def counting(envelope: Envelope[Any]) -> None:
        nonlocal seen
        seen += 1
        if seen >= count:
            done.set()

    table = {model: [*funcs, counting] for model, funcs in handlers.items()}
    runner = ConsumerRunner(
        bootstrap_servers=bootstrap,
        group_id=f"bench-{uuid.uuid4().hex[:8]}",
        topics=[topic],
        handlers=table,
        processed=processed,
        producer=producer,
        concurrency=concurrency,
    )
    task = asyncio.create_task(runner.run())
    await runner.wait_assigned(60)
    started = time.perf_counter()
    await asyncio.wait_for(done.wait(), timeout=600)
    elapsed = time.perf_counter() - started
    runner.stop()
    await task
    return count / elapsed


async def incidents_bench(args: argparse.Namespace, bootstrap: str, mongo_url: str) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
    producer = EventProducer(bootstrap, client_id="triage-bench")
    await producer.start()
    try:
        tenant = bench_tenant()
        results: dict[str, float] = {}
        for side in ("bare consumer loop", "triage (rules + grouping)"):
            database = client[f"triage_bench_{uuid.uuid4().hex[:8]}"]
            topic = f"bench-incidents-{uuid.uuid4().hex[:8]}"
            # The system's topics too: triage publishes its decisions on aftercare.triage.
            await ensure_topics(bootstrap, topic_specs([topic]) + topic_specs(), partitions=3)
            await TenantCopy(database).apply(envelope_for(tenant, source="bench", tenant_id="bench"))
            await produce_incidents(producer, topic, "bench", args.incidents)
            if side.startswith("bare"):

                async def nothing(envelope: Envelope[Any]) -> None:
                    return None

                handlers: HandlerTable = {IncidentReported: [nothing]}
            else:
                rule_store = RuleStore(database)
                await rule_store.seed(generated_rules(args.rules), datetime.now(UTC))
                relay = OutboxRelay(producer)
                incidents = TriageIncidents(database, relay, producer)
                await incidents.ensure_indexes()
                book = RuleBook(rule_store)
                loaded = await book.current()
                assert len(loaded) >= args.rules, len(loaded)
                triage = IncidentTriage(
                    incidents, TenantDirectory(database), book, GroupingHeads(database), FlapHistory(database)
                )
                handlers = {IncidentReported: [triage.reported]}
            cpu = time.process_time()
            store_cpu = process_cpu_s(STORE_PID)
            # Both sides with triage's own consumer concurrency (what the service runs with).
            concurrency = TriageSettings().consumer_concurrency
            rate = await consume(bootstrap, database, producer, topic, handlers, args.incidents, concurrency)
            results[side] = rate
            store_after = process_cpu_s(STORE_PID)
            # The store is a process of its own: its CPU per incident is what the machine's cores
            # must also find for every incident (with this process's, and the broker's).
            store_note = (
                f"   store CPU {1000 * (store_after - store_cpu) / args.incidents:.2f} ms/incident"
                if store_cpu is not None and store_after is not None
                else ""
            )
            print(
                f"  {side:28s} {rate:8.0f} incidents/s   "
                f"CPU {1000 * (time.process_time() - cpu) / args.incidents:.2f} ms/incident{store_note}"
            )
            await client.drop_database(database.name)
        bare, real = results["bare consumer loop"], results["triage (rules + grouping)"]
        print(
            f"  triage / bare = {real / bare:.2f}; target >= 1,000 incidents/s: {'met' if real >= 1000 else 'NOT met'} "
            f"(load average {os.getloadavg()[0]:.1f})"
        )
    finally:
        await producer.stop()
        await client.close()


async def http_target() -> tuple[asyncio.Server, int]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await reader.readuntil(b"\r\n\r\n")
                if not request:
                    break
                writer.write(
                    b'HTTP/1.1 200 OK\r\nContent-Length: 15\r\nContent-Type: application/json\r\n\r\n{"status":"ok"}'
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def probes_bench(args: argparse.Namespace, bootstrap: str, mongo_url: str) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
    producer = EventProducer(bootstrap, client_id="triage-bench-probes")
    await producer.start()
    server, port = await http_target()
    prober = Prober()
    database = client[f"triage_bench_probes_{uuid.uuid4().hex[:8]}"]
    try:
        targets = TargetStore(database, OutboxRelay(producer))
        await targets.ensure_indexes()
        systems = [
            SupportedSystem(
                name=f"system-{index}",
                diagnostic_target=DiagnosticTarget(
                    kind="http", address=f"http://127.0.0.1:{port}/health?n={index}", interval_seconds=60
                ),
            )
            for index in range(args.targets)
        ]
        tenant = TenantUpserted(
            tenant_id="bench",
            name="Bench",
            tier=ContractTier(name="gold"),
            systems=systems,
            probe_allowlist=["127.0.0.1/32"],
        )
        await targets.sync_tenant(tenant)
        diagnostics = RegularDiagnostics(targets, prober)
        cpu = time.process_time()
        started = time.monotonic()
        while time.monotonic() - started < args.probe_seconds:
            await diagnostics.tick()
            await asyncio.sleep(0.5)
        await diagnostics.drain()
        elapsed = time.monotonic() - started
        cpu_used = time.process_time() - cpu
        drift = sorted(diagnostics.drift_s)
        # Probes started on the first tick catch up on the period already begun; the schedule's
        # drift is what happens after that.
        steady = sorted(diagnostics.drift_s[args.targets :]) or drift
        p99 = steady[int(len(steady) * 0.99) - 1] if steady else 0.0
        print(
            f"  {diagnostics.probes_run} probes of {args.targets} targets in {elapsed:.0f} s "
            f"({60 * diagnostics.probes_run / elapsed:.0f}/min)"
        )
        print(
            f"  drift after the first period: p99 {p99:.2f} s, max {max(steady or [0.0]):.2f} s; "
            f"target < 5 s: {'met' if max(steady or [0.0]) < 5 else 'NOT met'}"
        )
        print(
            f"  CPU per probe (probe + health write + history): "
            f"{1000 * cpu_used / max(diagnostics.probes_run, 1):.2f} ms"
        )
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"  peak RSS of this process: {rss_mb:.0f} MB; target <= 150 MB: {'met' if rss_mb <= 150 else 'NOT met'}")
        del drift
    finally:
        await prober.close()
        server.close()
        await client.drop_database(database.name)
        await producer.stop()
        await client.close()


async def main_async(args: argparse.Namespace) -> None:
    if args.only == ["decisions"]:
        print(f"(c) decisions alone, {args.rules} rules")
        decisions_bench(args)
        return
    with infrastructure(args) as (bootstrap, mongo_url):
        if "incidents" in args.only:
            print(
                f"(a) incidents through rules and grouping, {args.rules} rules, {args.incidents} incidents "
                f"(load average {os.getloadavg()[0]:.1f})"
            )
            await incidents_bench(args, bootstrap, mongo_url)
        if "decisions" in args.only:
            print(f"(c) decisions alone, {args.rules} rules")
            decisions_bench(args)
        if "probes" in args.only:
            print(f"(b) regular diagnostics: {args.targets} targets every 60 s for {args.probe_seconds} s")
            await probes_bench(args, bootstrap, mongo_url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap")
    parser.add_argument("--mongo-url")
    parser.add_argument("--store-pid", type=int, help="the store's process id, to print its CPU (own store: known)")
    parser.add_argument("--incidents", type=int, default=3000)
    parser.add_argument("--rules", type=int, default=200)
    parser.add_argument("--targets", type=int, default=1000)
    parser.add_argument("--probe-seconds", type=float, default=130)
    parser.add_argument(
        "--only", nargs="+", default=["incidents", "probes"], choices=["incidents", "probes", "decisions"]
    )
    quiet()
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
