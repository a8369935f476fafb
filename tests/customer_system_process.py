"""Start the demo customer system (``python -m aftercare.customer_system``) as a real process on a
free port, for any test that needs a system to diagnose or fix. Shared by triage, remediation and
the closed-loop tests."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from localinfra import free_port


@dataclass
class CustomerSystemUnderTest:
    base_url: str
    token: str | None
    log_file: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def health_url(self) -> str:
        return f"{self.base_url}/health"

    def break_it(self, mode: str, fix_seconds: float = 0.0) -> None:
        httpx.post(f"{self.base_url}/admin/break", params={"mode": mode, "fix_seconds": fix_seconds}).raise_for_status()

    def calls(self) -> dict[str, Any]:
        answer = httpx.get(f"{self.base_url}/admin/calls")
        answer.raise_for_status()
        result: dict[str, Any] = answer.json()
        return result

    def count(self, action: str) -> int:
        return int(self.calls()["calls"].get(action, 0))

    def reset(self) -> None:
        httpx.post(f"{self.base_url}/admin/reset").raise_for_status()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_customer_system(
    workdir: Path, *, token: str | None = None, slow_seconds: float = 2.0, timeout_s: float = 120.0
) -> CustomerSystemUnderTest:
    """Start the customer system and wait until /health answers; the caller stops it."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [sys.executable, "-m", "aftercare.customer_system", "--port", str(port)]
    command += ["--slow-seconds", str(slow_seconds)]
    if token:
        command += ["--token", token]
    log_file = workdir / f"customer-system-{port}.log"
    with log_file.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    system = CustomerSystemUnderTest(f"http://127.0.0.1:{port}", token, log_file, process)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"customer system exited with {process.returncode}: {log_file.read_text()[-2000:]}")
        try:
            httpx.get(system.health_url, timeout=1.0)
            return system
        except httpx.HTTPError:
            time.sleep(0.1)
    system.stop()
    raise RuntimeError(f"customer system did not answer within {timeout_s}s")


@contextmanager
def customer_system(workdir: Path, **options: Any) -> Iterator[CustomerSystemUnderTest]:
    system = start_customer_system(workdir, **options)
    try:
        yield system
    finally:
        system.stop()
