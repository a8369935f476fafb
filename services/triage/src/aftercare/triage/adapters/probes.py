"""Probes against customers' systems: HTTP, TCP connect, TLS certificate expiry, DNS.

Every probe resolves the name itself, checks every address against the tenant's allow-list
(``domain.addresses``), and then connects to the checked address, not the name, so a name that
resolves differently a moment later (DNS rebinding) cannot steer the probe elsewhere. HTTP keeps
the original name in the Host header and for TLS (SNI and certificate checks).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import httpx
from cryptography import x509

from aftercare.events.tenants import DiagnosticTarget
from aftercare.events.triage import ProbeResult
from aftercare.triage.domain.addresses import IPAddress, Network, check_addresses

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_SLOW_MS = 1000.0
DEFAULT_TLS_MIN_DAYS = 14
BODY_LIMIT = 64 * 1024


class Refused(Exception):
    """The target is not probed: the reason says why (allow-list, unparsable address)."""


def _now() -> datetime:
    return datetime.now(UTC)


async def resolve(host: str, port: int, timeout_s: float) -> list[IPAddress]:
    try:
        literal = ipaddress.ip_address(host.strip("[]"))
        return [literal]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout_s)
    seen: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if address not in seen:
            seen.append(address)
    return seen


def split_host_port(address: str, default_port: int | None = None) -> tuple[str, int]:
    text = address.strip()
    if "://" in text:
        text = text.split("://", 1)[1]
    text = text.split("/", 1)[0]
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.lstrip(":")
    else:
        host, _, port_text = text.rpartition(":") if text.count(":") == 1 else (text, "", "")
    if not port_text:
        if default_port is None:
            raise Refused(f"{address!r} names no port (write host:port)")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise Refused(f"{address!r} has no valid port")
    return host, int(port_text)


class Prober:
    """Runs probes; one per process (it holds the HTTP connection pool)."""

    def __init__(self, *, verify_tls: bool | ssl.SSLContext = True, instance: str | None = None) -> None:
        # The customer's logs can tell which triage instance probed (two instances share the work).
        self._user_agent = f"aftercare-triage-probe ({instance})" if instance else "aftercare-triage-probe"
        self._http = httpx.AsyncClient(
            verify=verify_tls,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=500, max_keepalive_connections=200),
            trust_env=False,
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def _allowed(self, host: str, port: int, allowlist: Sequence[Network], timeout_s: float) -> IPAddress:
        try:
            addresses = await resolve(host, port, timeout_s)
        except (OSError, TimeoutError) as error:
            raise LookupError(f"{host} does not resolve: {error or 'timed out'}") from None
        verdict = check_addresses(addresses, allowlist)
        if not verdict.allowed:
            raise Refused(verdict.reason)
        return addresses[0]

    async def probe(self, target: DiagnosticTarget, allowlist: Sequence[Network]) -> ProbeResult:
        """Run the probe ``target`` describes; never raises: every outcome is a ProbeResult."""
        timeout_s = target.timeout_seconds or DEFAULT_TIMEOUT_S
        started = time.perf_counter()
        try:
            if target.kind == "http":
                return await asyncio.wait_for(self._http_probe(target, allowlist, timeout_s), timeout_s + 1)
            if target.kind == "tcp":
                return await asyncio.wait_for(self._tcp_probe(target, allowlist, timeout_s), timeout_s + 1)
            if target.kind == "tls":
                return await asyncio.wait_for(self._tls_probe(target, allowlist, timeout_s), timeout_s + 1)
            return await asyncio.wait_for(self._dns_probe(target, timeout_s), timeout_s + 1)
        except Refused as refused:
            return ProbeResult(
                probe=target.kind,
                target=target.address,
                healthy=False,
                status="refused",
                detail=str(refused),
                at=_now(),
            )
        except LookupError as error:
            return self._down(target, str(error), started)
        except (TimeoutError, httpx.TimeoutException):
            return self._down(target, f"no answer within {timeout_s:g} s", started)
        except (OSError, httpx.HTTPError, ssl.SSLError) as error:
            return self._down(target, f"{type(error).__name__}: {error}"[:300], started)

    @staticmethod
    def _down(target: DiagnosticTarget, detail: str, started: float) -> ProbeResult:
        return ProbeResult(
            probe=target.kind,
            target=target.address,
            healthy=False,
            status="down",
            detail=detail,
            latency_ms=round((time.perf_counter() - started) * 1000, 1),
            at=_now(),
        )

    async def _http_probe(
        self, target: DiagnosticTarget, allowlist: Sequence[Network], timeout_s: float
    ) -> ProbeResult:
        url = urlsplit(target.address)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise Refused(f"{target.address!r} is not an http(s) URL")
        port = url.port or (443 if url.scheme == "https" else 80)
        address = await self._allowed(url.hostname, port, allowlist, timeout_s)
        pinned_host = f"[{address}]" if address.version == 6 else str(address)
        pinned = urlunsplit((url.scheme, f"{pinned_host}:{port}", url.path or "/", url.query, ""))
        host_header = url.hostname if url.port is None else f"{url.hostname}:{url.port}"
        started = time.perf_counter()
        extensions = {"sni_hostname": url.hostname} if url.scheme == "https" else {}
        async with self._http.stream(
            "GET",
            pinned,
            headers={"Host": host_header, "User-Agent": self._user_agent},
            timeout=timeout_s,
            extensions=extensions,
        ) as answer:
            body = b""
            async for chunk in answer.aiter_bytes():
                body += chunk
                if len(body) >= BODY_LIMIT:
                    break
        latency = round((time.perf_counter() - started) * 1000, 1)
        expected = target.expect_status
        status_ok = answer.status_code == expected if expected is not None else 200 <= answer.status_code < 400
        detail = f"HTTP {answer.status_code} in {latency:.0f} ms"
        if not status_ok:
            return ProbeResult(
                probe="http",
                target=target.address,
                healthy=False,
                status="down",
                detail=detail,
                latency_ms=latency,
                at=_now(),
            )
        if target.expect_body and target.expect_body not in body.decode("utf-8", "replace"):
            return ProbeResult(
                probe="http",
                target=target.address,
                healthy=False,
                status="down",
                detail=f"{detail}, but the body lacks {target.expect_body!r}",
                latency_ms=latency,
                at=_now(),
            )
        slow_ms = target.latency_threshold_ms or DEFAULT_SLOW_MS
        if latency > slow_ms:
            return ProbeResult(
                probe="http",
                target=target.address,
                healthy=False,
                status="degraded",
                detail=f"{detail}, slower than {slow_ms:.0f} ms",
                latency_ms=latency,
                at=_now(),
            )
        return ProbeResult(
            probe="http", target=target.address, healthy=True, status="up", detail=detail, latency_ms=latency, at=_now()
        )

    async def _tcp_probe(self, target: DiagnosticTarget, allowlist: Sequence[Network], timeout_s: float) -> ProbeResult:
        host, port = split_host_port(target.address)
        address = await self._allowed(host, port, allowlist, timeout_s)
        started = time.perf_counter()
        _, writer = await asyncio.wait_for(asyncio.open_connection(str(address), port), timeout_s)
        latency = round((time.perf_counter() - started) * 1000, 1)
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
        slow_ms = target.latency_threshold_ms or DEFAULT_SLOW_MS
        status = "degraded" if latency > slow_ms else "up"
        return ProbeResult(
            probe="tcp",
            target=target.address,
            healthy=status == "up",
            status=status,
            detail=f"connected to {address}:{port} in {latency:.0f} ms",
            latency_ms=latency,
            at=_now(),
        )

    async def _tls_probe(self, target: DiagnosticTarget, allowlist: Sequence[Network], timeout_s: float) -> ProbeResult:
        host, port = split_host_port(target.address, 443)
        address = await self._allowed(host, port, allowlist, timeout_s)
        # Read the certificate whoever signed it: the question is when it expires, and a
        # certificate that failed verification because it expired must still be read.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        started = time.perf_counter()
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(str(address), port, ssl=context, server_hostname=host), timeout_s
        )
        latency = round((time.perf_counter() - started) * 1000, 1)
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        writer.close()
        try:
            await writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass
        if not der:
            return self._down(target, "the server sent no certificate", started)
        certificate = x509.load_der_x509_certificate(der)
        expires = certificate.not_valid_after_utc
        days_left = (expires - _now()).total_seconds() / 86400
        minimum = target.tls_min_days if target.tls_min_days is not None else DEFAULT_TLS_MIN_DAYS
        if days_left < 0:
            return ProbeResult(
                probe="tls",
                target=target.address,
                healthy=False,
                status="down",
                detail=f"certificate expired on {expires:%Y-%m-%d}",
                latency_ms=latency,
                at=_now(),
            )
        status = "degraded" if days_left < minimum else "up"
        return ProbeResult(
            probe="tls",
            target=target.address,
            healthy=status == "up",
            status=status,
            detail=f"certificate valid until {expires:%Y-%m-%d} ({days_left:.0f} days left)",
            latency_ms=latency,
            at=_now(),
        )

    async def _dns_probe(self, target: DiagnosticTarget, timeout_s: float) -> ProbeResult:
        # Resolving asks the resolver, not the target: no allow-list needed.
        started = time.perf_counter()
        try:
            addresses = await resolve(target.address, 0, timeout_s)
        except (OSError, TimeoutError) as error:
            return self._down(target, f"{target.address} does not resolve: {error or 'timed out'}", started)
        latency = round((time.perf_counter() - started) * 1000, 1)
        return ProbeResult(
            probe="dns",
            target=target.address,
            healthy=True,
            status="up",
            detail=f"resolves to {', '.join(str(a) for a in addresses[:4])} in {latency:.0f} ms",
            latency_ms=latency,
            at=_now(),
        )
