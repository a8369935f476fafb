"""The only code that reaches a customer's system: a call to its registered admin endpoint and a
probe of its registered diagnostic target.

SSRF guard: the URL is always built from what the tenant registered for that system (the
runbook supplies only a path), must be http(s), redirects are not followed, and when the tenant
has a probe allow-list the host's addresses must all be in it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import time
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

import httpx

from aftercare.remediation.domain.verification import ProbeAnswer

Outcome = Literal["succeeded", "failed", "unclear"]


@dataclass(frozen=True)
class CallResult:
    outcome: Outcome
    output: str


class TargetRefused(ValueError):
    """The URL is not one this tenant registered or allowed."""


async def check_target(url: str, allowlist: list[str]) -> None:
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise TargetRefused(f"{url!r} is not an http(s) URL")
    if not allowlist:
        return
    networks = []
    for entry in allowlist:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            continue
    try:
        addresses = {ipaddress.ip_address(parts.hostname)}
    except ValueError:
        infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, parts.port or 80, type=socket.SOCK_STREAM)
        addresses = {ipaddress.ip_address(info[4][0]) for info in infos}
    outside = [str(address) for address in addresses if not any(address in network for network in networks)]
    if outside:
        raise TargetRefused(f"{parts.hostname} resolves to {', '.join(outside)}, outside the tenant's allow-list")


class SystemCaller:
    """HTTP to customers' systems, with one connection pool for the service."""

    def __init__(self) -> None:
        # The instance in the User-Agent: a customer's access log (and the demo system's counters)
        # can tell which of several remediation processes made a call.
        agent = f"aftercare-remediation/1 (host {socket.gethostname()}; pid {os.getpid()})"
        self._http = httpx.AsyncClient(follow_redirects=False, headers={"User-Agent": agent})

    async def close(self) -> None:
        await self._http.aclose()

    async def call_admin(
        self,
        url: str,
        method: str,
        query: str | None,
        bearer_token: str | None,
        timeout_s: float,
        allowlist: list[str],
    ) -> CallResult:
        try:
            await check_target(url, allowlist)
        except (TargetRefused, OSError) as error:
            return CallResult("failed", f"refused: {error}")
        headers = {"Authorization": f"Bearer {bearer_token}"} if bearer_token else {}
        started = time.perf_counter()
        try:
            answer = await self._http.request(
                method, url + (f"?{query}" if query else ""), headers=headers, timeout=timeout_s
            )
        except httpx.ConnectError as error:
            # Nothing reached the system: a clear failure, safe to retry.
            return CallResult("failed", f"could not connect to {url}: {error}")
        except httpx.TimeoutException:
            return CallResult("unclear", f"{method} {url}: no answer within {timeout_s:.0f}s (it may have run)")
        except httpx.HTTPError as error:
            return CallResult("unclear", f"{method} {url}: connection broke ({error}); it may have run")
        elapsed = (time.perf_counter() - started) * 1000
        body = answer.text[:500]
        summary = f"{method} {url} -> HTTP {answer.status_code} in {elapsed:.0f} ms: {body}"
        return CallResult("succeeded" if answer.is_success else "failed", summary)

    async def probe(self, url: str, timeout_s: float, allowlist: list[str]) -> ProbeAnswer:
        started = time.perf_counter()
        try:
            await check_target(url, allowlist)
            answer = await self._http.get(url, timeout=timeout_s)
        except (TargetRefused, OSError) as error:
            return ProbeAnswer(None, (time.perf_counter() - started) * 1000, error=f"refused: {error}")
        except httpx.HTTPError as error:
            return ProbeAnswer(None, (time.perf_counter() - started) * 1000, error=type(error).__name__)
        return ProbeAnswer(answer.status_code, (time.perf_counter() - started) * 1000, answer.text[:2000])
