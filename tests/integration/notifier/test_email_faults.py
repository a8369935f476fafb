"""Exactly once under faults: the notifier killed around the SMTP point of no return, and a relay
that refuses. Counted at a real SMTP server (aiosmtpd), not at the notifier."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from aftercare.events import topics
from aftercare.events.incidents import Channel, IncidentReported
from aftercare.events.producer import EventProducer

from .conftest import (
    CustomerTenant,
    NotifierUnderTest,
    SmtpCapture,
    make_notifier,
    new_tenant,
    notifications_of,
    running_smtp_capture,
    wait_for,
)
from kafka_helpers import Infrastructure, read_all

pytestmark = pytest.mark.integration


@pytest.fixture
def own_smtp() -> Iterator[SmtpCapture]:
    """An SMTP server only the crash test's notifier sends to: every notifier deployment on the
    broker reacts to the same events, so the shared one would mail the same contact."""
    with running_smtp_capture() as capture:
        yield capture


@pytest.fixture
def crash_notifier(
    infrastructure: Infrastructure, tmp_path: Path, own_smtp: SmtpCapture
) -> Iterator[NotifierUnderTest]:
    """A notifier of its own that the test may kill and start again (same database and group)."""
    service = make_notifier(infrastructure, tmp_path, own_smtp)
    service.start()
    try:
        yield service
    finally:
        service.stop()


async def _report(publisher: EventProducer, customer: CustomerTenant, number: str) -> str:
    incident_id = str(uuid.uuid4())
    await publisher.publish(customer.tenant_event())
    await publisher.publish(
        customer.event(
            IncidentReported(
                incident_id=incident_id,
                number=number,
                title="Mail server queue stuck",
                channel=Channel.API,
                reported_at=datetime.now(UTC),
            ),
            incident_id,
        )
    )
    return incident_id


async def _delivery(service: NotifierUnderTest, incident_id: str, state: str) -> dict[str, object] | None:
    try:
        log = await notifications_of(service, incident_id)
    except httpx.HTTPError:
        return None  # restarting
    return next((entry for entry in log if entry["state"] == state), None)


async def _failed_events(service: NotifierUnderTest, incident_id: str) -> list[dict[str, object]]:
    records = await read_all(service.env["AFTERCARE_KAFKA_BOOTSTRAP_SERVERS"], topics.NOTIFICATIONS)
    events = [json.loads(r.value) for r in records if r.key == incident_id.encode()]
    return [e["data"] for e in events if e["type"] == "notification.failed"]


async def test_killed_after_the_relay_took_the_message_it_is_never_sent_twice(
    crash_notifier: NotifierUnderTest, own_smtp: SmtpCapture, publisher: EventProducer
) -> None:
    smtp_capture = own_smtp
    customer = new_tenant()
    killed: list[bool] = []

    def kill_once_the_data_arrived(phase: str) -> str | None:
        if phase == "data" and not killed:
            killed.append(True)
            crash_notifier.kill_now()  # the relay has the whole message; the notifier never hears 250
        return None

    smtp_capture.behaviours[customer.contact_email] = kill_once_the_data_arrived
    incident_id = await _report(publisher, customer, "INC-7101")
    await wait_for("the notifier to be killed by the relay", lambda: killed)
    assert crash_notifier.process is not None
    crash_notifier.process.wait(timeout=30)

    crash_notifier.start()
    unconfirmed = await wait_for(
        "the lost claim to be found and marked unconfirmed",
        lambda: _delivery(crash_notifier, incident_id, "unconfirmed"),
    )

    assert len(smtp_capture.to(customer.contact_email)) == 1
    assert unconfirmed["attempts"][-1]["outcome"] == "lost-claim"  # type: ignore[index]
    failed = await wait_for("NotificationFailed on Kafka", lambda: _failed_events(crash_notifier, incident_id))
    assert failed[0]["error"].startswith("outcome unknown")  # type: ignore[union-attr]
    assert failed[0]["will_retry"] is False


async def test_killed_before_the_point_of_no_return_it_is_sent_once_after_restart(
    crash_notifier: NotifierUnderTest, own_smtp: SmtpCapture, publisher: EventProducer
) -> None:
    smtp_capture = own_smtp
    customer = new_tenant()
    killed: list[bool] = []

    def kill_at_the_recipient(phase: str) -> str | None:
        if phase == "rcpt" and not killed:
            killed.append(True)
            crash_notifier.kill_now()  # MAIL and RCPT are reversible: nothing was delivered
        return None

    smtp_capture.behaviours[customer.contact_email] = kill_at_the_recipient
    incident_id = await _report(publisher, customer, "INC-7102")
    await wait_for("the notifier to be killed by the relay", lambda: killed)
    assert crash_notifier.process is not None
    crash_notifier.process.wait(timeout=30)
    assert smtp_capture.to(customer.contact_email) == []

    crash_notifier.start()
    sent = await wait_for(
        "the delivery to be sent after the restart", lambda: _delivery(crash_notifier, incident_id, "sent")
    )

    assert len(smtp_capture.to(customer.contact_email)) == 1
    assert [a["outcome"] for a in sent["attempts"]] == ["sent"]  # type: ignore[index]


async def test_a_refusing_relay_is_retried_at_stored_due_times_then_the_delivery_is_visibly_failed(
    notifier: NotifierUnderTest, smtp_capture: SmtpCapture, publisher: EventProducer
) -> None:
    customer = new_tenant()
    smtp_capture.behaviours[customer.contact_email] = lambda phase: "451 4.3.0 mailbox busy, try later"
    incident_id = await _report(publisher, customer, "INC-7103")

    failed = await wait_for("the delivery to fail for good", lambda: _delivery(notifier, incident_id, "failed"))

    assert [a["outcome"] for a in failed["attempts"]] == ["retrying", "retrying", "failed"]  # type: ignore[index]
    assert "451" in str(failed["last_error"])
    assert smtp_capture.to(customer.contact_email) == []
    (event,) = await wait_for("NotificationFailed on Kafka", lambda: _failed_events(notifier, incident_id))
    assert event["attempts"] == 3 and event["will_retry"] is False
    async with httpx.AsyncClient(base_url=notifier.base_url, timeout=10) as http:
        listed = (await http.get("/v1/notifications", params={"state": "failed"}, headers=notifier.admin())).json()
        assert failed["notification_id"] in {entry["notification_id"] for entry in listed}

        # The relay recovers; an operator sends it again, with the same Message-ID.
        del smtp_capture.behaviours[customer.contact_email]
        answer = await http.post(f"/v1/notifications/{failed['notification_id']}/resend", headers=notifier.admin())
        assert answer.status_code == 202
        again = await http.post(f"/v1/notifications/{failed['notification_id']}/resend", headers=notifier.admin())
        assert again.status_code == 409 and again.headers["content-type"] == "application/problem+json"
    await wait_for("the resent delivery", lambda: _delivery(notifier, incident_id, "sent"))
    (mail,) = smtp_capture.to(customer.contact_email)
    assert mail["Message-ID"] == f"<{failed['notification_id']}@notifier.aftercare.example>"


async def test_a_relay_that_refuses_for_a_while_delivers_once_it_takes_it(
    notifier: NotifierUnderTest, smtp_capture: SmtpCapture, publisher: EventProducer
) -> None:
    customer = new_tenant()
    refusals: list[str] = []

    def busy_twice(phase: str) -> str | None:
        if phase == "rcpt" and len(refusals) < 2:
            refusals.append(phase)
            return "421 4.7.0 too busy"
        return None

    smtp_capture.behaviours[customer.contact_email] = busy_twice
    incident_id = await _report(publisher, customer, "INC-7104")

    sent = await wait_for("the delivery to get through", lambda: _delivery(notifier, incident_id, "sent"))

    assert [a["outcome"] for a in sent["attempts"]] == ["retrying", "retrying", "sent"]  # type: ignore[index]
    assert len(smtp_capture.to(customer.contact_email)) == 1


async def test_a_mailbox_the_relay_rejects_for_good_is_not_retried(
    notifier: NotifierUnderTest, smtp_capture: SmtpCapture, publisher: EventProducer
) -> None:
    customer = new_tenant()
    smtp_capture.behaviours[customer.contact_email] = lambda phase: "550 5.1.1 no such mailbox"
    incident_id = await _report(publisher, customer, "INC-7105")

    failed = await wait_for("the delivery to fail", lambda: _delivery(notifier, incident_id, "failed"))

    assert [a["outcome"] for a in failed["attempts"]] == ["failed"]  # type: ignore[index]
