"""Notifications per second, one notifier process, to a real SMTP server (aiosmtpd) and to a real
webhook receiver, beside the bare consumer loop (aiokafka reading the same events, doing nothing)
measured in the same run. Run by hand: `uv run python bench/notifier_throughput.py [--count N]`."""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer
from aiosmtpd.controller import Controller
from notifier_common import cpu_seconds, free_port, infrastructure, notifier_process, rss_mb

from aftercare.events import topics
from aftercare.events.envelope import envelope_for
from aftercare.events.incidents import Channel, IncidentReported
from aftercare.events.producer import EventProducer
from aftercare.events.tenants import Contact, ContractTier, TenantUpserted


class Capture:
    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        # Only the bench tenant's mail counts: a broker shared with tests carries other incidents.
        if "dana@mail.example" in envelope.rcpt_tos:
            self.count += 1
        return "250 OK"


def webhook_receiver() -> tuple[ThreadingHTTPServer, list[int]]:
    hits: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            hits.append(1)
            self.send_response(204)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, hits


async def publish(producer: EventProducer, tenant_id: str, count: int) -> None:
    for start in range(0, count, 200):
        await producer.publish_many(
            [
                envelope_for(
                    IncidentReported(
                        incident_id=(incident := str(uuid.uuid4())),
                        number=f"INC-{n}",
                        title="disk full",
                        channel=Channel.API,
                        reported_at=datetime.now(UTC),
                    ),
                    source="bench",
                    tenant_id=tenant_id,
                    incident_id=incident,
                )
                for n in range(start, min(count, start + 200))
            ]
        )


async def wait_count(get: object, target: int, timeout_s: float) -> float:
    started = time.perf_counter()
    while get() < target:  # type: ignore[operator]
        if time.perf_counter() - started > timeout_s:
            raise TimeoutError(f"only {get()} of {target} arrived")  # type: ignore[operator]
        await asyncio.sleep(0.05)
    return time.perf_counter() - started


async def bare_loop(bootstrap: str, count: int) -> float:
    consumer = AIOKafkaConsumer(
        topics.INCIDENTS,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    seen = 0
    started = time.perf_counter()
    try:
        while seen < count:
            batch = await consumer.getmany(timeout_ms=500, max_records=500)
            seen += sum(len(records) for records in batch.values())
    finally:
        await consumer.stop()
    return time.perf_counter() - started


def load_average() -> str:
    return "/".join(f"{value:.1f}" for value in os.getloadavg())


LOAD_AT_START = load_average()


async def main(count: int) -> None:
    capture = Capture()
    smtp = Controller(capture, hostname="127.0.0.1", port=free_port())
    smtp.start()
    receiver, hits = webhook_receiver()
    with infrastructure() as (bootstrap, mongo_url):
        env = {"AFTERCARE_NOTIFIER_SMTP_HOST": "127.0.0.1", "AFTERCARE_NOTIFIER_SMTP_PORT": str(smtp.port)}
        with notifier_process(bootstrap, mongo_url, env) as (base, process, admin):
            producer = EventProducer(bootstrap, client_id="bench")
            await producer.start()
            tier = ContractTier(name="gold")
            await producer.publish(
                envelope_for(
                    TenantUpserted(
                        tenant_id="mail",
                        name="Mail Ltd",
                        tier=tier,
                        contacts=[Contact(name="Dana", email="dana@mail.example", preferred_channels=["email"])],
                    ),
                    source="bench",
                    tenant_id="mail",
                )
            )
            await producer.publish(
                envelope_for(
                    TenantUpserted(
                        tenant_id="hook",
                        name="Hook Ltd",
                        tier=tier,
                        contacts=[Contact(name="Hal", email="hal@hook.example")],
                    ),
                    source="bench",
                    tenant_id="hook",
                )
            )
            async with httpx.AsyncClient(base_url=base) as http:
                for _ in range(100):
                    answer = await http.put(
                        "/v1/tenants/hook/subscriptions/hal@hook.example",
                        json={
                            "channels": ["webhook"],
                            "webhook_url": f"http://127.0.0.1:{receiver.server_address[1]}/h",
                        },
                        headers={"Authorization": f"Bearer {admin}"},
                    )
                    if answer.status_code == 200:
                        break
                    await asyncio.sleep(0.2)
            await asyncio.sleep(3)  # tenants reach the notifier
            # What the notifier burns doing nothing (consumer polls, due-time poller, sweeps), so
            # the figure per notification can leave it out.
            idle_from, idle_cpu = time.perf_counter(), cpu_seconds(process.pid)
            await asyncio.sleep(5)
            idle_rate = (cpu_seconds(process.pid) - idle_cpu) / (time.perf_counter() - idle_from)
            cpu_before = cpu_seconds(process.pid)
            await publish(producer, "mail", count)
            email_s = await wait_count(lambda: capture.count, count, 600)
            cpu_email = cpu_seconds(process.pid) - cpu_before
            rss_email = rss_mb(process.pid)
            cpu_before = cpu_seconds(process.pid)
            await publish(producer, "hook", count)
            hook_s = await wait_count(lambda: len(hits), count, 600)
            cpu_hook = cpu_seconds(process.pid) - cpu_before
            rss = max(rss_email, rss_mb(process.pid))
            await producer.stop()
        bare_s = await bare_loop(bootstrap, 2 * count)
    smtp.stop()
    receiver.shutdown()
    bare_rate = 2 * count / bare_s
    print(f"\nnotifier, one process, {count} notifications per channel (publish to accepted by the receiver):")
    print(f"  email   {count / email_s:8.1f}/s   ({email_s:.1f}s)   = {count / email_s / bare_rate:.4f} x bare loop")
    print(f"  webhook {count / hook_s:8.1f}/s   ({hook_s:.1f}s)   = {count / hook_s / bare_rate:.4f} x bare loop")
    print(
        f"  notifier CPU per notification: email {cpu_email / count * 1000:.1f} ms,"
        f" webhook {cpu_hook / count * 1000:.1f} ms; idle it uses {idle_rate * 1000:.0f} ms/s, so beyond idle:"
        f" email {(cpu_email - idle_rate * email_s) / count * 1000:.1f} ms,"
        f" webhook {(cpu_hook - idle_rate * hook_s) / count * 1000:.1f} ms"
    )
    print(f"  bare consumer loop (aiokafka, same events, no work): {bare_rate:.0f} events/s")
    print(f"  notifier RSS: {rss:.0f} MB")
    print(f"  load average at start {LOAD_AT_START}, at the end {load_average()} (1/5/15 min, {os.cpu_count()} cores)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=300)
    asyncio.run(main(parser.parse_args().count))
