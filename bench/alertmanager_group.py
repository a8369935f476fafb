"""How long intake takes for one Alertmanager notification with many alerts (a mass outage's group),
next to the same alerts sent one per request, one after the other, in the same run.

    uv run python bench/alertmanager_group.py [--bootstrap HOST:PORT --mongo-url URL]
                                              [--alerts 700] [--big 10000]

Issue 8: "700 alerts took 38 s one at a time: target under 2 s", and groups of at least 10,000
alerts must be taken. Every alert is firing with a new fingerprint, so each opens an incident
(the expensive case). Runs: ``--alerts`` alerts one per request (the baseline: what handling
them one at a time costs), then ``--alerts`` other alerts in one notification, then one
notification of ``--big`` alerts. Printed: seconds per run, alerts/s, the group's time as a share
of the one-at-a-time time, and the 1-minute load average before each run (the machine is shared).

Without addresses it starts its own Kafka broker and store (``infra/localinfra.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import intake_accept_rate as common


def start_intake(bootstrap: str, mongo_url: str, workdir: Path, token: str) -> common.Server:
    port = common.free_port()
    seed = [
        {
            "tenant_id": "bench-alerts",
            "profile": {"name": "Bench Alerts", "tier": {"name": "gold", "sla": []}},
            "alertmanager_token": token,
        }
    ]
    seed_file = workdir / "seed.json"
    seed_file.write_text(json.dumps(seed))
    database = f"bench_alerts_{secrets.token_hex(4)}"
    env = dict(os.environ) | {
        "AFTERCARE_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "AFTERCARE_MONGO_URL": mongo_url,
        "AFTERCARE_INTAKE_DATABASE": database,
        "AFTERCARE_INTAKE_CONSUMER_GROUP_PREFIX": f"{database}-",
        "AFTERCARE_INTAKE_HTTP_PORT": str(port),
        "AFTERCARE_INTAKE_SMTP_ENABLED": "false",
        "AFTERCARE_INTAKE_SEED_FILE": str(seed_file),
        "AFTERCARE_INTAKE_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "AFTERCARE_INTAKE_RATE_LIMIT_PER_MINUTE": "100000000",
        "AFTERCARE_STARTUP_TIMEOUT_SECONDS": "120",
    }
    log_file = workdir / "intake.log"
    with log_file.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "aftercare.intake"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    server = common.Server("intake", f"http://127.0.0.1:{port}", process, log_file, "", database)
    common.wait_ready(server)
    return server


def firing(run: str, index: int) -> dict[str, Any]:
    return {
        "status": "firing",
        "labels": {
            "alertname": "InstanceDown",
            "instance": f"node-{index}.example.net:9100",
            "job": "node",
            "severity": "critical",
            "run": run,
        },
        "annotations": {"summary": f"node-{index} is down", "description": "No scrape for 5 minutes."},
        "startsAt": "2026-11-30T10:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.example.net:9090/graph?g0.expr=up+%3D%3D+0",
        "fingerprint": uuid.uuid4().hex[:16],
    }


def notification(alerts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": '{}:{alertname="InstanceDown"}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "aftercare",
        "groupLabels": {"alertname": "InstanceDown"},
        "commonLabels": {"alertname": "InstanceDown"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example.net:9093",
        "alerts": alerts,
    }


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


async def bench(bootstrap: str, mongo_url: str, args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="aftercare-bench-alerts-"))
    token = secrets.token_urlsafe(24)
    intake = start_intake(bootstrap, mongo_url, workdir, token)
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with httpx.AsyncClient(base_url=intake.base_url, headers=headers, timeout=600.0) as http:
            # Warm-up: connections, indexes, the tenant's counter.
            assert (await http.post("/v1/alertmanager", json=notification([firing("warm", 0)]))).status_code == 200

            print(f"one per request: {args.alerts} alerts (load {load()}) ...", flush=True)
            started = time.monotonic()
            for index in range(args.alerts):
                answer = await http.post("/v1/alertmanager", json=notification([firing("single", index)]))
                assert answer.status_code == 200, answer.text[:500]
            single = time.monotonic() - started
            print(f"  {single:.1f} s, {args.alerts / single:.0f} alerts/s", flush=True)

            print(f"one notification: {args.alerts} alerts (load {load()}) ...", flush=True)
            started = time.monotonic()
            answer = await http.post(
                "/v1/alertmanager", json=notification([firing("group", i) for i in range(args.alerts)])
            )
            group = time.monotonic() - started
            assert answer.status_code == 200 and answer.json()["opened"] == args.alerts, answer.text[:500]
            print(f"  {group:.1f} s, {args.alerts / group:.0f} alerts/s", flush=True)
            print(f"  group / one at a time: {group / single:.2f} ({single / group:.1f}x faster)", flush=True)

            if args.big:
                body = json.dumps(notification([firing("big", i) for i in range(args.big)])).encode()
                print(f"one notification: {args.big} alerts, {len(body) / 1_048_576:.1f} MiB (load {load()}) ...")
                started = time.monotonic()
                answer = await http.post("/v1/alertmanager", content=body, headers={"Content-Type": "application/json"})
                big = time.monotonic() - started
                assert answer.status_code == 200 and answer.json()["opened"] == args.big, answer.text[:500]
                print(f"  {big:.1f} s, {args.big / big:.0f} alerts/s", flush=True)
    finally:
        intake.stop()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default=os.environ.get("AFTERCARE_BENCH_KAFKA_BOOTSTRAP_SERVERS"))
    parser.add_argument("--mongo-url", default=os.environ.get("AFTERCARE_BENCH_MONGO_URL"))
    parser.add_argument("--alerts", type=int, default=700, help="alerts in the compared runs")
    parser.add_argument("--big", type=int, default=10_000, help="alerts in the last notification (0: none)")
    args = parser.parse_args()
    if args.bootstrap and args.mongo_url:
        return asyncio.run(bench(args.bootstrap, args.mongo_url, args))
    with common.local_infrastructure() as (bootstrap, mongo_url):
        return asyncio.run(bench(bootstrap, mongo_url, args))


if __name__ == "__main__":
    sys.exit(main())
