"""A service under test as an OS process of its own: start it with an environment, wait for its
``/readyz``, stop it with SIGTERM (graceful) or SIGKILL (a crash), read its log.

Importable from any test suite (``tests`` is on pytest's ``pythonpath``):

    from service_process import ServiceProcess, start_service

    service = start_service([sys.executable, "-m", "aftercare.triage"], env, base_url, workdir / "triage.log")
    ...
    service.stop()            # SIGTERM; SIGKILL after 30 s if it does not exit
    service.stop(kill=True)   # kill -9, for crash tests

Test scripts that report their progress on stdout (``consumer_process.py``,
``scheduled_process.py``) run as a ``ScriptProcess``: ``await child.expect("HANDLED")``, then
``await child.kill()``.

A process that exits while starting, or is not ready in time, fails the start with the tail of
its log in the error; a failed start never leaves the process behind.
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import httpx

# Generous: on the shared 2-core test machine a service's imports alone have taken 60 s.
READY_TIMEOUT_S = 180.0


@dataclass
class ServiceProcess:
    """One run of a service: the command, its environment, where it answers and where it logs."""

    command: Sequence[str]
    env: Mapping[str, str]
    base_url: str
    log_file: Path
    name: str = "service"
    # What the readiness probe trusts: a CA file when the service serves HTTPS with a test certificate.
    verify: ssl.SSLContext | bool = True
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self, *, ready_timeout_s: float = READY_TIMEOUT_S) -> None:
        """Start the process (output appended to ``log_file``) and wait for ``/readyz``."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as out:
            self.process = subprocess.Popen(
                list(self.command), env=dict(self.env), stdout=out, stderr=subprocess.STDOUT
            )
        try:
            self.wait_ready(ready_timeout_s)
        except BaseException:
            self.stop(timeout_s=10)  # SIGTERM first: its last log lines say why it was not ready
            raise

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Poll ``/readyz`` until 200; fail early if the process exits."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}; see {self.log_file}:\n{self.log_tail()}"
                )
            try:
                answer = httpx.get(self.base_url + "/readyz", timeout=2.0, verify=self.verify)
                if answer.status_code == 200:
                    return
                last = answer.text
            except httpx.HTTPError as error:
                last = str(error)
            time.sleep(0.3)
        raise RuntimeError(f"{self.name} not ready after {timeout_s:.0f}s ({last}); see {self.log_file}")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, *, kill: bool = False, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (or SIGKILL with ``kill``) and wait; SIGKILL if it outlives ``timeout_s``.
        Returns the exit code (None if it was never started)."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def kill_now(self) -> None:
        """SIGKILL without waiting; safe from any thread (an SMTP server's, in crash tests)."""
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGKILL)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no log yet)"


def start_service(
    command: Sequence[str],
    env: Mapping[str, str],
    base_url: str,
    log_file: Path,
    *,
    name: str = "service",
    verify: ssl.SSLContext | bool = True,
    inherit_env: bool = True,
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> ServiceProcess:
    """Start ``command`` with ``env`` (over this process's environment unless ``inherit_env`` is
    False) and return it once ``base_url + "/readyz"`` answers 200."""
    # Unbuffered: the log keeps what a process said before a kill -9 or a failed start.
    full_env = (dict(os.environ) if inherit_env else {}) | {"PYTHONUNBUFFERED": "1"} | dict(env)
    service = ServiceProcess(command, full_env, base_url, log_file, name=name, verify=verify)
    service.start(ready_timeout_s=ready_timeout_s)
    return service


class ScriptProcess:
    """A test script in a child process that says how far it got on stdout, one word first per
    line (``READY``, ``HANDLED ...``, ``STOPPED``), so a test can wait for a point and then kill it
    there (``consumer_process.py``, ``scheduled_process.py``). Its stderr goes to ``log_file``."""

    def __init__(self, command: Sequence[str], log_file: Path, *, name: str = "the child process") -> None:
        self.command = list(command)
        self.log_file = log_file
        self.name = name
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> Self:
        with self.log_file.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *self.command, stdout=asyncio.subprocess.PIPE, stderr=log
            )
        return self

    async def expect(self, word: str, timeout: float = 90.0) -> str:  # noqa: ASYNC109
        """Wait for the child's line starting with ``word``; return the rest of that line."""
        assert self.process is not None and self.process.stdout is not None
        stdout = self.process.stdout
        seen: list[str] = []

        async def read() -> str:
            while line := (await stdout.readline()).decode():
                seen.append(line.strip())
                if line.split() and line.split()[0] == word:
                    return line[len(word) :].strip()
            raise AssertionError(f"{self.name} ended without saying {word} (said {seen}); its log:\n{self.log_tail()}")

        try:
            return await asyncio.wait_for(read(), timeout=timeout)
        except TimeoutError:
            raise AssertionError(
                f"no {word} from {self.name} within {timeout}s (said {seen}); its log:\n{self.log_tail()}"
            ) from None

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def wait(self, timeout: float = 60.0) -> int:  # noqa: ASYNC109
        assert self.process is not None
        return await asyncio.wait_for(self.process.wait(), timeout=timeout)

    async def kill(self) -> None:
        """kill -9 (if it still runs) and reap it."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log yet)"
