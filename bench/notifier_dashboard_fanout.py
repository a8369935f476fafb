"""Dashboard fan-out: N live browsers (SSE clients, default 100) signed in as an operator; a new
incident published on Kafka must reach every one of them. Prints p50/p99 of (row received - event
acknowledged by Kafka) and the notifier's RSS, beside the bare Kafka round trip (produce ->
consume on the same broker) of the same run. Run by hand:
`uv run python bench/notifier_dashboard_fanout.py [--clients 100] [--incidents 20]`."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import time
import uuid
from datetime import UTC, datetime

import httpx
from aiokafka import AIOKafkaConsumer
from notifier_common import cpu_seconds, infrastructure, notifier_process, rss_mb

from aftercare.events import topics
from aftercare.events.envelope import envelope_for
from aftercare.events.incidents import Channel, IncidentReported
from aftercare.events.operators import OPERATOR_EVENTS_TENANT, OperatorUpserted, Role, hash_password
from aftercare.events.producer import EventProducer

PASSWORD = "bench password 123"


async def sign_in(base: str, email: str) -> httpx.AsyncClient:
    client = httpx.AsyncClient(base_url=base, timeout=30)
    for _ in range(120):
        form = await client.get("/dashboard/login")
        csrf = re.search(r"name='csrf' value='([^']+)'", form.text)
        answer = await client.post(
            "/dashboard/login", data={"email": email, "password": PASSWORD, "csrf": csrf.group(1) if csrf else ""}
        )
        if answer.status_code == 303:
            return client
        await asyncio.sleep(0.5)  # the operator event has not reached the notifier yet
    raise RuntimeError("could not sign in")


async def listen(
    client: httpx.AsyncClient, number: int, arrivals: dict[str, dict[int, float]], ready: asyncio.Event
) -> None:
    async with client.stream("GET", "/dashboard/events", timeout=None) as stream:
        ready.set()
        event = ""
        async for line in stream.aiter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event == "incident":
                row = json.loads(line[5:])
                # The first row of an incident per client counts (a later one is an update).
                arrivals.setdefault(row["incident_id"], {}).setdefault(number, time.perf_counter())


async def kafka_round_trip(bootstrap: str, producer: EventProducer, samples: int = 20) -> float:
    consumer = AIOKafkaConsumer(
        topics.INCIDENTS, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="latest", fetch_max_wait_ms=50
    )
    await consumer.start()
    await asyncio.sleep(1)
    times = []
    try:
        for _ in range(samples):
            envelope = _incident("rtt")
            started = time.perf_counter()
            await producer.publish(envelope)
            while True:
                batch = await consumer.getmany(timeout_ms=1000)
                if any(r.key == envelope.key.encode() for records in batch.values() for r in records):
                    break
            times.append(time.perf_counter() - started)
    finally:
        await consumer.stop()
    return statistics.median(times)


def _incident(tenant_id: str):  # type: ignore[no-untyped-def]
    incident = str(uuid.uuid4())
    return envelope_for(
        IncidentReported(
            incident_id=incident, number="INC-1", title="fan-out", channel=Channel.API, reported_at=datetime.now(UTC)
        ),
        source="bench",
        tenant_id=tenant_id,
        incident_id=incident,
    )


def load_average() -> str:
    return "/".join(f"{value:.1f}" for value in os.getloadavg())


LOAD_AT_START = load_average()


async def main(clients: int, incidents: int) -> None:
    with infrastructure() as (bootstrap, mongo_url):
        with notifier_process(bootstrap, mongo_url, {"AFTERCARE_NOTIFIER_SMTP_PORT": "9"}) as (base, process, _):
            producer = EventProducer(bootstrap, client_id="bench")
            await producer.start()
            email = f"bench-{uuid.uuid4().hex[:6]}@support.example"
            await producer.publish(
                envelope_for(
                    OperatorUpserted(
                        operator_id="op-bench",
                        name="Bench",
                        email=email,
                        role=Role.VIEWER,
                        password_hash=hash_password(PASSWORD),
                    ),
                    source="bench",
                    tenant_id=OPERATOR_EVENTS_TENANT,
                )
            )
            first = await sign_in(base, email)
            cookies = first.cookies
            sessions = [first] + [
                httpx.AsyncClient(base_url=base, cookies=cookies, timeout=30) for _ in range(clients - 1)
            ]
            arrivals: dict[str, dict[int, float]] = {}
            readies = [asyncio.Event() for _ in sessions]
            tasks = [
                asyncio.create_task(listen(s, n, arrivals, r))
                for n, (s, r) in enumerate(zip(sessions, readies, strict=True))
            ]
            await asyncio.gather(*(r.wait() for r in readies))
            await asyncio.sleep(1)
            latencies: list[float] = []
            peak_rss = rss_mb(process.pid)
            cpu_before = cpu_seconds(process.pid)
            for _ in range(incidents):
                envelope = _incident("fanout")
                await producer.publish(envelope)
                acked = time.perf_counter()
                deadline = acked + 30
                while len(arrivals.get(envelope.incident_id, {})) < clients and time.perf_counter() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
                got = list(arrivals.get(envelope.incident_id, {}).values())
                latencies.extend(t - acked for t in got)
                latencies.extend([float("inf")] * (clients - len(got)))
                peak_rss = max(peak_rss, rss_mb(process.pid))
                await asyncio.sleep(0.2)
            cpu_used = cpu_seconds(process.pid) - cpu_before  # includes the 0.2 s pauses' idle upkeep
            rtt = await kafka_round_trip(bootstrap, producer)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for session in sessions:
                await session.aclose()
            await producer.stop()
    latencies.sort()
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(f"\n{clients} live dashboard clients x {incidents} new incidents ({len(latencies)} deliveries):")
    print(f"  p50 {p50 * 1000:.0f} ms   p99 {p99 * 1000:.0f} ms   (target p99 <= 200 ms)")
    print(f"  bare Kafka round trip (produce -> consume) p50 {rtt * 1000:.0f} ms; p99/rtt = {p99 / rtt:.1f}x")
    print(f"  notifier RSS peak {peak_rss:.0f} MB (target <= 150 MB)")
    print(f"  notifier CPU per new incident pushed to {clients} clients: {cpu_used / incidents * 1000:.0f} ms")
    print(f"  load average at start {LOAD_AT_START}, at the end {load_average()} (1/5/15 min, {os.cpu_count()} cores)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--incidents", type=int, default=20)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.clients, arguments.incidents))
