"""End-to-end latency: from intake's 202 to the customer's email accepted by the SMTP server.

    uv run python bench/e2e_latency.py [--rates 1,2,4,8] [--seconds 30] [--drain 120]

Starts the whole system on infrastructure of its own (``tests/aftercare_stack.py``: a Kafka
broker, a store, Mailpit, the four services as processes, as ``make run`` starts them), then for
each offered load (incidents per second, open loop: reports go out on schedule whatever the
answers) reports incidents that need no remediation (a customer's question) for ``--seconds``.
For every 202 it takes the time the first email about that incident (the "we received it"
message) was accepted by Mailpit (its ``Created`` stamp, same machine clock), and prints p50/p99
per load and the first load whose p99 passes 1 s.

Beside it, in the same run and on the same broker: the bare Kafka round trip (an aiokafka
producer with acks=all sends one record, a consumer already at the end receives it), p50 of 50
samples, before and after the loads. Target: end-to-end p50 <= 10x that round trip.

The machine is usually shared: the load average (1 min) is printed at start and at each step.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "infra"))
sys.path.insert(0, str(REPO_ROOT / "tests"))

from aftercare_stack import AftercareStack, LoadTenant, tenants_for_load  # noqa: E402


def load_average() -> float:
    return os.getloadavg()[0]


async def kafka_round_trip(bootstrap: str, samples: int = 50) -> float:
    """p50 seconds of produce (acks=all) -> consume of one small record on a fresh topic."""
    topic = f"bench-rtt-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=0)
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="latest", fetch_max_wait_ms=10
    )
    await producer.start()
    await consumer.start()
    try:
        await producer.send_and_wait(topic, b"warm-up")
        await consumer.getmany(timeout_ms=2000)
        times = []
        for number in range(samples):
            marker = f"rtt-{number}".encode()
            started = time.perf_counter()
            await producer.send_and_wait(topic, marker)
            found = False
            while not found:
                batch = await consumer.getmany(timeout_ms=1000)
                found = any(record.value == marker for records in batch.values() for record in records)
            times.append(time.perf_counter() - started)
    finally:
        await consumer.stop()
        await producer.stop()
    return statistics.median(times)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def offered_load(
    stack: AftercareStack, tenants: list[LoadTenant], rate: float, seconds: float
) -> tuple[dict[str, float], int]:
    """Report at ``rate``/s for ``seconds``; returns {incident number@tenant: wall time of the 202}."""
    accepted: dict[str, float] = {}
    refused = 0

    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=200)) as client:

        async def one(sequence: int) -> None:
            nonlocal refused
            tenant = tenants[sequence % len(tenants)]
            answer = await client.post(
                stack.url("intake", "/v1/incidents"),
                json={"title": f"Question {sequence}: how do we export invoices as CSV?", "severity": "info"},
                headers={"Authorization": f"Bearer {tenant.api_key}", "Idempotency-Key": secrets.token_hex(8)},
            )
            if answer.status_code == 202:
                accepted[f"{answer.json()['number']}@{tenant.contact_email}"] = time.time()
            else:
                refused += 1

        tasks = []
        began = time.monotonic()
        for sequence in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, began + sequence / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one(sequence)))
        await asyncio.gather(*tasks)
    return accepted, refused


def first_mail_times(stack: AftercareStack) -> dict[str, float]:
    """{incident number@recipient: when Mailpit accepted the first email about it}."""
    first: dict[str, float] = {}
    for message in stack.mails():
        subject = message["Subject"]
        if not subject.startswith("["):
            continue
        number = subject.split("]", 1)[0].lstrip("[")
        created = datetime.fromisoformat(message["Created"].replace("Z", "+00:00")).timestamp()
        for recipient in message["To"]:
            key = f"{number}@{recipient['Address']}"
            first[key] = min(created, first.get(key, created))
    return first


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="1,2,4", help="offered loads, incidents per second, in order")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long each load is offered")
    parser.add_argument("--drain", type=float, default=180.0, help="longest wait for a load's emails")
    parser.add_argument("--tenants", type=int, default=4)
    args = parser.parse_args()
    rates = [float(rate) for rate in args.rates.split(",")]

    print(f"machine: {os.cpu_count()} cores, load average at start {load_average():.1f}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="aftercare-e2e-latency-"))
    tenants = tenants_for_load(args.tenants, systems_each=0)
    with AftercareStack.started(workdir, tenants=tenants) as stack:
        stack.wait_ready(timeout_s=900)
        # One incident through first, so every consumer group has joined and every cache is warm.
        await offered_load(stack, tenants, 1.0, 2.0)
        await asyncio.sleep(30)
        rtt_before = await kafka_round_trip(stack.kafka.bootstrap_servers)
        print(f"bare Kafka round trip (produce acks=all -> consume), p50: {rtt_before * 1000:.1f} ms", flush=True)
        print(
            f"{'offered/s':>9} {'accepted':>8} {'told':>5} {'p50 ms':>8} {'p99 ms':>8} {'p50/rtt':>8} {'load avg':>8}"
        )
        passed_1s: float | None = None
        for rate in rates:
            accepted, refused = await offered_load(stack, tenants, rate, args.seconds)
            deadline = time.monotonic() + args.drain
            while True:
                mails = first_mail_times(stack)
                if all(key in mails for key in accepted) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(2)
            latencies = [mails[key] - at for key, at in accepted.items() if key in mails]
            if not latencies:
                print(f"{rate:>9.1f} {len(accepted):>8} {0:>5}  no email within {args.drain:.0f} s", flush=True)
                passed_1s = passed_1s or rate
                continue
            p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
            missing = len(accepted) - len(latencies)
            if (p99 > 1.0 or missing) and passed_1s is None:
                passed_1s = rate
            print(
                f"{rate:>9.1f} {len(accepted):>8} {len(latencies):>5} {p50 * 1000:>8.0f} {p99 * 1000:>8.0f} "
                f"{p50 / rtt_before:>7.0f}x {load_average():>8.1f}"
                + (
                    f"   ({refused} refused, {missing} not told within {args.drain:.0f} s)"
                    if refused or missing
                    else ""
                ),
                flush=True,
            )
        rtt_after = await kafka_round_trip(stack.kafka.bootstrap_servers)
        print(f"bare Kafka round trip after the loads, p50: {rtt_after * 1000:.1f} ms", flush=True)
        print(
            "p99 passes 1 s at an offered load of "
            + (f"{passed_1s:.1f}/s" if passed_1s is not None else f"more than {rates[-1]:.1f}/s (not reached)")
        )
        print("target: end-to-end p50 <= 10x the bare Kafka round trip")
    print(f"load average at the end {load_average():.1f}; logs in {workdir}")
    return 0


if __name__ == "__main__":
    # SIGTERM (a stopped run) unwinds like Ctrl-C, so the stack's processes are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(asyncio.run(main()))
