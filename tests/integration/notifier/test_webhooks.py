"""Webhooks signed per Standard Webhooks, checked by the reference library at a real HTTP
receiver; retried with backoff at stored due times under one webhook-id, then dead-lettered."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from aftercare.events.incidents import Channel, IncidentReported
from aftercare.events.producer import EventProducer

from .conftest import NotifierUnderTest, new_tenant, notifications_of, wait_for
from localinfra import free_port

pytestmark = pytest.mark.integration


@dataclass
class Receiver:
    url: str
    secret: str = ""
    failures_left: dict[str, int] = field(default_factory=dict)  # path -> 500s to answer first
    verified: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (path, payload)
    attempts: list[tuple[str, str]] = field(default_factory=list)  # (path, webhook-id)
    rejected: list[str] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            headers = {name.lower(): value for name, value in self.headers.items()}
            state.attempts.append((self.path, headers.get("webhook-id", "")))
            try:
                payload = Webhook(state.secret).verify(body, headers)
            except Exception as error:
                state.rejected.append(str(error))
                self._answer(400)
                return
            if state.failures_left.get(self.path, 0) > 0:
                state.failures_left[self.path] -= 1
                self._answer(500)
                return
            if headers["webhook-id"] not in {a[1] for a in state.attempts[:-1]} or not any(
                p == self.path for p, _ in state.verified
            ):
                state.verified.append((self.path, payload))  # receivers deduplicate on webhook-id
            self._answer(204)

        def _answer(self, status: int) -> None:
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

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


async def _subscribe(notifier: NotifierUnderTest, tenant_id: str, contact: str, url: str) -> str:
    async with httpx.AsyncClient(base_url=notifier.base_url, timeout=10) as http:
        answer = await http.put(
            f"/v1/tenants/{tenant_id}/subscriptions/{contact}",
            json={"channels": ["webhook"], "webhook_url": url},
            headers=notifier.admin(),
        )
        assert answer.status_code == 200, answer.text
        secret: str = answer.json()["webhook_secret"]
        assert secret.startswith("whsec_")
        return secret


async def test_a_signed_webhook_survives_a_failing_receiver_and_arrives_once(
    notifier: NotifierUnderTest, receiver: Receiver, publisher: EventProducer
) -> None:
    customer = new_tenant()
    path = f"/hooks/{uuid.uuid4().hex}"
    receiver.failures_left[path] = 2
    await publisher.publish(customer.tenant_event())
    receiver.secret = await _subscribe(notifier, customer.tenant_id, customer.contact_email, receiver.url + path)
    incident_id = str(uuid.uuid4())
    await publisher.publish(
        customer.event(
            IncidentReported(
                incident_id=incident_id,
                number="INC-7201",
                title="VPN drops every hour",
                channel=Channel.API,
                reported_at=datetime.now(UTC),
            ),
            incident_id,
        )
    )

    async def sent() -> dict[str, Any] | None:
        log = await notifications_of(notifier, incident_id)
        return next((e for e in log if e["channel"] == "webhook" and e["state"] == "sent"), None)

    delivery = await wait_for("the webhook to get through", sent)

    assert receiver.rejected == []  # every attempt carried a valid Standard Webhooks signature
    ids = {webhook_id for p, webhook_id in receiver.attempts if p == path}
    assert ids == {delivery["notification_id"]}  # one webhook-id across the retries
    assert [a["outcome"] for a in delivery["attempts"]] == ["retrying", "retrying", "sent"]
    ((_, payload),) = [(p, body) for p, body in receiver.verified if p == path]
    assert payload["type"] == "incident-received"
    assert payload["data"]["incident_id"] == incident_id and payload["data"]["number"] == "INC-7201"
    assert payload["data"]["status_url"].endswith(f"/portal/{customer.slug}/incidents/{incident_id}")


async def test_a_webhook_that_keeps_failing_is_dead_lettered_and_visible(
    notifier: NotifierUnderTest, receiver: Receiver, publisher: EventProducer
) -> None:
    customer = new_tenant()
    path = f"/hooks/{uuid.uuid4().hex}"
    receiver.failures_left[path] = 1000
    await publisher.publish(customer.tenant_event())
    receiver.secret = await _subscribe(notifier, customer.tenant_id, customer.contact_email, receiver.url + path)
    incident_id = str(uuid.uuid4())
    await publisher.publish(
        customer.event(
            IncidentReported(
                incident_id=incident_id,
                number="INC-7202",
                title="Backups missing",
                channel=Channel.API,
                reported_at=datetime.now(UTC),
            ),
            incident_id,
        )
    )

    async def failed() -> dict[str, Any] | None:
        log = await notifications_of(notifier, incident_id)
        return next((e for e in log if e["channel"] == "webhook" and e["state"] == "failed"), None)

    delivery = await wait_for("the webhook to be dead-lettered", failed)
    assert len(delivery["attempts"]) == 3 and "500" in delivery["last_error"]
    async with httpx.AsyncClient(base_url=notifier.base_url, timeout=10) as http:
        dead = (await http.get("/v1/notifications", params={"state": "failed"}, headers=notifier.admin())).json()
    assert delivery["notification_id"] in {entry["notification_id"] for entry in dead}


async def test_a_webhook_url_that_cannot_be_reached_safely_is_refused_at_registration(
    notifier: NotifierUnderTest,
) -> None:
    async with httpx.AsyncClient(base_url=notifier.base_url, timeout=10) as http:
        answer = await http.put(
            "/v1/tenants/acme/subscriptions/dana@acme.example",
            json={"webhook_url": "ftp://files.example/hook"},
            headers=notifier.admin(),
        )
        unresolvable = await http.put(
            "/v1/tenants/acme/subscriptions/dana@acme.example",
            json={"webhook_url": "http://no-such-host.invalid/hook"},
            headers=notifier.admin(),
        )
    assert answer.status_code == 422 and answer.headers["content-type"] == "application/problem+json"
    assert "must use https" in json.loads(answer.text)["detail"]
    assert unresolvable.status_code == 422 and "does not resolve" in unresolvable.json()["detail"]
