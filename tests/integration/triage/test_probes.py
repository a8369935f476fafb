"""Probes against real targets started here: the demo customer system (up, broken, slow), a
closed port, TLS servers with a valid and an expired certificate, a name that does not resolve;
and the allow-list that keeps probes away from what the tenant did not register."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from aftercare.events.tenants import DiagnosticTarget
from aftercare.triage.adapters.probes import Prober
from aftercare.triage.domain.addresses import parse_allowlist
from aftercare.triage.domain.diagnosis import verdict_of

from customer_system_process import CustomerSystemUnderTest, customer_system
from localinfra import free_port

LOCAL = parse_allowlist(["127.0.0.1/32"])


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CustomerSystemUnderTest]:
    with customer_system(tmp_path_factory.mktemp("customer"), slow_seconds=1.5, timeout_s=120) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="session")
async def prober() -> AsyncIterator[Prober]:
    probes = Prober()
    try:
        yield probes
    finally:
        await probes.close()


def write_certificate(directory: Path, *, days_from_now: int, valid_days: int) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    start = dt.datetime.now(dt.UTC) + dt.timedelta(days=days_from_now)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=valid_days))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / f"cert{days_from_now}.pem", directory / f"key{days_from_now}.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context


@contextlib.asynccontextmanager
async def tls_server(context: ssl.SSLContext) -> AsyncIterator[int]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    port = free_port()
    server = await asyncio.start_server(answer, "127.0.0.1", port, ssl=context)
    try:
        yield port
    finally:
        server.close()
        await server.wait_closed()


async def test_http_probe_sees_the_system_up_broken_and_slow(prober: Prober, system: CustomerSystemUnderTest) -> None:
    target = DiagnosticTarget(kind="http", address=system.health_url, latency_threshold_ms=1000, timeout_seconds=5)
    system.reset()
    up = await prober.probe(target, LOCAL)
    assert up.status == "up" and "HTTP 200" in up.detail
    assert verdict_of([up])[0] == "healthy"

    system.break_it("soft")
    down = await prober.probe(target, LOCAL)
    assert down.status == "down" and "HTTP 503" in down.detail
    assert verdict_of([down])[0] == "confirmed_down"

    system.break_it("slow")
    slow = await prober.probe(target, LOCAL)
    assert slow.status == "degraded" and slow.latency_ms is not None and slow.latency_ms > 1000
    assert verdict_of([slow])[0] == "degraded"
    system.reset()

    wrong_body = DiagnosticTarget(kind="http", address=system.health_url, expect_body="all systems nominal")
    assert (await prober.probe(wrong_body, LOCAL)).status == "down"


async def test_http_probe_gives_up_after_its_timeout(prober: Prober, system: CustomerSystemUnderTest) -> None:
    system.break_it("slow")
    try:
        result = await prober.probe(
            DiagnosticTarget(kind="http", address=system.health_url, timeout_seconds=0.3), LOCAL
        )
    finally:
        system.reset()
    assert result.status == "down" and "0.3 s" in result.detail


async def test_tcp_probe_connects_or_reports_refusal(prober: Prober, system: CustomerSystemUnderTest) -> None:
    port = system.base_url.rsplit(":", 1)[1]
    assert (await prober.probe(DiagnosticTarget(kind="tcp", address=f"127.0.0.1:{port}"), LOCAL)).status == "up"
    closed = await prober.probe(DiagnosticTarget(kind="tcp", address=f"127.0.0.1:{free_port()}"), LOCAL)
    assert closed.status == "down" and "Error" in closed.detail


async def test_tls_probe_reads_expiry_of_valid_expiring_and_expired_certificates(
    prober: Prober, tmp_path: Path
) -> None:
    valid = write_certificate(tmp_path, days_from_now=-1, valid_days=90)
    expiring = write_certificate(tmp_path, days_from_now=-80, valid_days=85)
    expired = write_certificate(tmp_path, days_from_now=-30, valid_days=10)
    results = {}
    for label, context in (("valid", valid), ("expiring", expiring), ("expired", expired)):
        async with tls_server(context) as port:
            results[label] = await prober.probe(DiagnosticTarget(kind="tls", address=f"127.0.0.1:{port}"), LOCAL)
    assert results["valid"].status == "up" and "days left" in results["valid"].detail
    assert results["expiring"].status == "degraded"
    assert results["expired"].status == "down" and "expired" in results["expired"].detail
    assert verdict_of([results["expired"]])[0] == "confirmed_down"


async def test_dns_probe_reports_a_name_that_does_not_resolve(prober: Prober) -> None:
    missing = await prober.probe(DiagnosticTarget(kind="dns", address="no-such-host.invalid", timeout_seconds=3), [])
    assert missing.status == "down" and "does not resolve" in missing.detail
    assert (await prober.probe(DiagnosticTarget(kind="dns", address="localhost"), [])).status == "up"


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://[fe80::1]/", "link-local"),
        ("http://127.0.0.2:9/", "loopback not on the tenant's probe allow-list"),
        ("http://10.1.2.3/", "private not on the tenant's probe allow-list"),
        ("http://localhost:9/", "not on the tenant's probe allow-list"),
    ],
)
async def test_addresses_the_tenant_did_not_register_are_never_probed(
    prober: Prober, address: str, reason: str
) -> None:
    result = await prober.probe(DiagnosticTarget(kind="http", address=address), LOCAL if "127.0.0.2" in address else [])
    assert result.status == "refused"
    assert reason in result.detail
    verdict, conclusion = verdict_of([result])
    assert verdict is None and "Not probed" in conclusion


async def test_even_an_allow_listed_metadata_address_is_refused(prober: Prober) -> None:
    everything = parse_allowlist(["0.0.0.0/0"])
    result = await prober.probe(DiagnosticTarget(kind="tcp", address="169.254.169.254:80"), everything)
    assert result.status == "refused"
