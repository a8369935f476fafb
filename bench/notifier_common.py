"""Shared by the notifier benches: infrastructure, a notifier process, a tenant, publishing."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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
    log = open(tempfile.mktemp(prefix="notifier-bench-", suffix=".log"), "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "aftercare.notifier"], env=full, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
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


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")
