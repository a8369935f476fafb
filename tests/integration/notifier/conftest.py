"""A real notifier for the notifier tests: its own process (so a test can SIGKILL it), the
session's real Kafka and store, a real SMTP server (aiosmtpd) capturing what it receives, and a
producer to put events on the real topics as intake, triage and remediation would."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from aftercare.events import topics
from aftercare.events.envelope import Envelope as EventEnvelope
from aftercare.events.envelope import Event, envelope_for
from aftercare.events.producer import EventProducer
from aftercare.events.tenants import Contact, ContractTier, SlaTarget, SupportedSystem, TenantUpserted

from kafka_helpers import Infrastructure, commit_end_offsets, unique_name
from localinfra import free_port

Behaviour = Callable[[str], str | None]  # phase ("rcpt" or "data") -> SMTP reply to give, or None for OK


@dataclass
class SmtpCapture:
    """A real SMTP server on a free port that keeps every message it accepted."""

    host: str = "127.0.0.1"
    port: int = 0
    messages: list[Message] = field(default_factory=list)
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def to(self, address: str) -> list[Message]:
        with self.lock:
            return [m for m in self.messages if m["To"] == address]

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        behaviour = self.behaviours.get(address)
        reply = behaviour("rcpt") if behaviour else None
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = None
        for address in envelope.rcpt_tos:
            behaviour = self.behaviours.get(address)
            reply = (behaviour("data") if behaviour else None) or reply
        if reply and not reply.startswith("250"):
            return reply
        content = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
        with self.lock:
            self.messages.append(message_from_bytes(content, policy=policy.default))
        return reply or "250 OK"


@contextlib.contextmanager
def running_smtp_capture() -> Iterator[SmtpCapture]:
    capture = SmtpCapture(port=free_port())
    controller = Controller(capture, hostname=capture.host, port=capture.port)
    controller.start()
    try:
        yield capture
    finally:
        controller.stop()


@pytest.fixture(scope="session")
def smtp_capture() -> Iterator[SmtpCapture]:
    """The SMTP server of the shared notifier."""
    with running_smtp_capture() as capture:
        yield capture


@dataclass
class NotifierUnderTest:
    base_url: str
    admin_token: str
    database: str
    env: dict[str, str]
    log_file: Path
    process: subprocess.Popen[bytes] | None = None
    started_once: bool = False

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def start(self, *, from_now: bool = True) -> None:
        """Start the process and wait for /readyz. A new deployment starts at the end of the
        incident topics (``from_now``): the session's earlier tests left hundreds of incidents
        there that are not this test's business. Tenants are always read from the start."""
        if from_now and not self.started_once:
            bootstrap = self.env["AFTERCARE_KAFKA_BOOTSTRAP_SERVERS"]
            group = self.env["AFTERCARE_NOTIFIER_CONSUMER_GROUP_PREFIX"] + "notifier"
            with ThreadPoolExecutor(max_workers=1) as pool:
                pool.submit(asyncio.run, commit_end_offsets(bootstrap, group, INCIDENT_TOPICS)).result()
        self.started_once = True
        with self.log_file.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "aftercare.notifier"], env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        # Generous: on the shared 2-core machine under a full test run, importing alone has taken 45 s.
        deadline = time.monotonic() + 180
        last = "no answer"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"notifier exited with {self.process.returncode}:\n" + self.log_file.read_text()[-3000:]
                )
            try:
                answer = httpx.get(self.base_url + "/readyz", timeout=2.0)
                if answer.status_code == 200:
                    return
                last = answer.text
            except httpx.HTTPError as error:
                last = str(error)
            time.sleep(0.3)
        raise RuntimeError(f"notifier not ready ({last}); see {self.log_file}")

    def stop(self, *, kill: bool = False) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill_now(self) -> None:
        """SIGKILL from any thread (the SMTP server's, in crash tests)."""
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGKILL)


INCIDENT_TOPICS = [topics.INCIDENTS, topics.TRIAGE, topics.REMEDIATION, topics.NOTIFICATIONS]


def make_notifier(
    infrastructure: Infrastructure, workdir: Path, smtp: SmtpCapture, extra_env: dict[str, str] | None = None
) -> NotifierUnderTest:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    database = unique_name("notifier").replace("-", "_")
    admin_token = secrets.token_urlsafe(16)
    base_url = f"http://127.0.0.1:{port}"
    env = (
        dict(os.environ)
        | {
            "AFTERCARE_KAFKA_BOOTSTRAP_SERVERS": infrastructure.bootstrap_servers,
            "AFTERCARE_MONGO_URL": infrastructure.mongo_url,
            "AFTERCARE_NOTIFIER_DATABASE": database,
            "AFTERCARE_NOTIFIER_CONSUMER_GROUP_PREFIX": f"{database}-",
            "AFTERCARE_NOTIFIER_HTTP_PORT": str(port),
            "AFTERCARE_NOTIFIER_ADMIN_TOKEN": admin_token,
            "AFTERCARE_NOTIFIER_PUBLIC_BASE_URL": base_url,
            "AFTERCARE_NOTIFIER_PORTAL_BASE_URL": "https://portal.example.net",
            "AFTERCARE_NOTIFIER_SMTP_HOST": smtp.host,
            "AFTERCARE_NOTIFIER_SMTP_PORT": str(smtp.port),
            "AFTERCARE_NOTIFIER_DELIVERY_POLL_SECONDS": "0.2",
            "AFTERCARE_NOTIFIER_SENDING_LEASE_SECONDS": "2",
            "AFTERCARE_NOTIFIER_RETRY_INITIAL_SECONDS": "0.3",
            "AFTERCARE_NOTIFIER_RETRY_MAX_SECONDS": "1",
            "AFTERCARE_NOTIFIER_MAX_ATTEMPTS": "3",
            "AFTERCARE_NOTIFIER_DUE_POLL_SECONDS": "0.3",
            "AFTERCARE_NOTIFIER_THROTTLE_MINUTES": "0",
            "AFTERCARE_NOTIFIER_WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true",
            "AFTERCARE_NOTIFIER_WEBHOOK_ALLOW_HTTP": "true",
            "AFTERCARE_STARTUP_TIMEOUT_SECONDS": "60",
        }
        | (extra_env or {})
    )
    return NotifierUnderTest(
        base_url=base_url, admin_token=admin_token, database=database, env=env, log_file=workdir / "notifier.log"
    )


@dataclass
class ProviderReceiver:
    """A real HTTP server standing where Twilio's Messages API and chat rooms' incoming webhooks
    would be: it records every request and answers as they do (Twilio: 201 with the message's
    sid; a chat room: 200 "ok")."""

    url: str = ""
    account_sid: str = field(default_factory=lambda: "AC" + secrets.token_hex(16))
    auth_token: str = field(default_factory=lambda: secrets.token_hex(16))
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)  # path, headers, body
    lock: threading.Lock = field(default_factory=threading.Lock)

    def received(self, path_prefix: str) -> list[tuple[str, dict[str, str], bytes]]:
        with self.lock:
            return [request for request in self.requests if request[0].startswith(path_prefix)]


@pytest.fixture(scope="session")
def provider_receiver() -> Iterator[ProviderReceiver]:
    state = ProviderReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            with state.lock:
                state.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            if self.path.startswith("/2010-04-01/Accounts/"):
                answer = json.dumps({"sid": "SM" + secrets.token_hex(16), "status": "queued"}).encode()
                self._answer(201, answer, "application/json")
            else:
                self._answer(200, b"ok", "text/plain")

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()


@pytest.fixture(scope="session")
def notifier(
    infrastructure: Infrastructure,
    tmp_path_factory: pytest.TempPathFactory,
    smtp_capture: SmtpCapture,
    provider_receiver: ProviderReceiver,
) -> Iterator[NotifierUnderTest]:
    """One notifier shared by the notifier tests that do not kill it; its SMS go to the test's
    Twilio-shaped receiver."""
    service = make_notifier(
        infrastructure,
        tmp_path_factory.mktemp("notifier"),
        smtp_capture,
        {
            "AFTERCARE_NOTIFIER_SMS_BASE_URL": provider_receiver.url,
            "AFTERCARE_NOTIFIER_TWILIO_ACCOUNT_SID": provider_receiver.account_sid,
            "AFTERCARE_NOTIFIER_TWILIO_AUTH_TOKEN": provider_receiver.auth_token,
            "AFTERCARE_NOTIFIER_SMS_FROM": "+15550001111",
            # Short enough to watch them fire (test_digest_and_periodic_updates.py); no other test
            # of the shared notifier uses P1 or P4, so no other test's counts change.
            "AFTERCARE_NOTIFIER_PERIODIC_UPDATE_MINUTES_P1": "0.05",
            "AFTERCARE_NOTIFIER_DIGEST_INTERVAL_MINUTES": "0.1",
        },
    )
    service.start()
    try:
        yield service
    finally:
        service.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def publisher(infrastructure: Infrastructure) -> AsyncIterator[EventProducer]:
    producer = EventProducer(infrastructure.bootstrap_servers, client_id="notifier-tests")
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


@dataclass
class CustomerTenant:
    """A tenant of the tests' own, with one contact whose address is unique to the test."""

    tenant_id: str
    contact_email: str
    inbound_email: str
    slug: str

    def tenant_event(self, **changes: Any) -> EventEnvelope[TenantUpserted]:
        fields: dict[str, Any] = {
            "tenant_id": self.tenant_id,
            "name": "Acme Tests Ltd",
            "tier": ContractTier(
                name="gold", sla=[SlaTarget(priority="P1", response_minutes=15, resolution_minutes=240)]
            ),
            "contacts": [Contact(name="Dana Ops", email=self.contact_email, preferred_channels=["email"])],
            "systems": [SupportedSystem(name="billing-db", product="PostgreSQL", version="15.3")],
            "status_page_slug": self.slug,
            "inbound_emails": [self.inbound_email],
        } | changes
        return envelope_for(TenantUpserted(**fields), source="intake", tenant_id=self.tenant_id)

    def event(self, data: Event, incident_id: str, source: str = "intake") -> EventEnvelope[Any]:
        return envelope_for(data, source=source, tenant_id=self.tenant_id, incident_id=incident_id)


def new_tenant() -> CustomerTenant:
    tenant_id = unique_name("cust")
    return CustomerTenant(
        tenant_id=tenant_id,
        contact_email=f"dana@{tenant_id}.example.org",
        inbound_email=f"support+{tenant_id}@aftercare.example",
        slug=secrets.token_urlsafe(12),
    )


async def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 150.0) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def notifications_of(service: NotifierUnderTest, incident_id: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as http:
        answer = await http.get(f"/v1/incidents/{incident_id}/notifications", headers=service.admin())
        answer.raise_for_status()
        result: list[dict[str, Any]] = answer.json()
        return result
