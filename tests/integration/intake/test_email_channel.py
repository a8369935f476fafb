"""Email channel: real SMTP (smtplib) to a real intake process, with the real broker and store.

Each test uses subjects and Message-IDs no other test uses, so the shared intake and topics
need no clean-up. What a test checks is what a customer or the notifier would see: the SMTP
reply, the incident read back over the API, the events on Kafka.
"""

from __future__ import annotations

import asyncio
import base64
import json
import smtplib
import uuid
from collections.abc import AsyncIterator, Iterator
from email import policy
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from aftercare.events.producer import EventProducer
from aftercare.intake.adapters.attachments import AttachmentStore
from aftercare.intake.adapters.incident_store import IncidentStore
from aftercare.intake.adapters.rate_limit import RateLimiter
from aftercare.intake.adapters.tenant_registry import TenantRegistry
from aftercare.intake.components import IntakeComponents
from aftercare.intake.entrypoints.email_server import EmailChannelUnavailable, InboundEmailServer
from aftercare.intake.settings import IntakeSettings

from .conftest import IntakeUnderTest, start_intake, stop_intake
from kafka_helpers import Infrastructure, read_all, wait_until
from localinfra import StoreNode, free_port

pytestmark = pytest.mark.integration

INCIDENTS_TOPIC = "aftercare.incidents"
NOTIFICATIONS_TOPIC = "aftercare.notifications"
CUSTOMER = "joerg.mueller@customer.example"

# A small but real PDF and TIFF, as a fax-to-email gateway sends them.
FAX_PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>"
    b"endobj\n3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 612 792]>>endobj\ntrailer<</Root 1 0 R>>\n"
    b"%%EOF\n"
) + bytes(range(256)) * 40
FAX_TIFF = b"II*\x00\x08\x00\x00\x00" + bytes(range(256)) * 12


# --- sending -----------------------------------------------------------------------------


def unique(text: str) -> str:
    return f"{text} {uuid.uuid4().hex[:8]}"


def plain_email(
    subject: str,
    body: str,
    *,
    to: str,
    sender: str = f"Jörg Müller <{CUSTOMER}>",
    message_id: str | None = None,
    **headers: str,
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = message_id or make_msgid(domain="customer.example")
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(body)
    return message


def wire_format(message: EmailMessage) -> bytes:
    # CRLF line ends, as mail clients send; smtplib passes bytes through unchanged.
    return message.as_bytes(policy=policy.SMTP)


def _deliver(intake: IntakeUnderTest, raw: bytes, sender: str, recipients: list[str]) -> tuple[int, str]:
    """One SMTP transaction step by step, so the test sees the reply to DATA (sendmail hides it)."""
    with smtplib.SMTP(intake.smtp_host, intake.smtp_port, timeout=60) as smtp:
        smtp.ehlo("customer.example")
        code, text = smtp.mail(sender)
        assert code == 250, (code, text)
        for recipient in recipients:
            code, text = smtp.rcpt(recipient)
            assert code == 250, (recipient, code, text)
        code, text = smtp.data(raw)
        return code, text.decode()


async def deliver(
    intake: IntakeUnderTest, message: EmailMessage | bytes, *, sender: str = CUSTOMER, to: list[str] | None = None
) -> tuple[int, str]:
    raw = message if isinstance(message, bytes) else wire_format(message)
    recipients = to or [intake.tenants["tenant-a"].inbound_email]
    return await asyncio.to_thread(_deliver, intake, raw, sender, recipients)


async def sendmail(
    intake: IntakeUnderTest, message: EmailMessage | bytes, *, to: list[str], sender: str = CUSTOMER
) -> dict[str, tuple[int, bytes]]:
    """smtplib's everyday call; raises what a mail client would show its user."""
    raw = message if isinstance(message, bytes) else wire_format(message)

    def send() -> dict[str, tuple[int, bytes]]:
        with smtplib.SMTP(intake.smtp_host, intake.smtp_port, timeout=60) as smtp:
            return smtp.sendmail(sender, to, raw)

    return await asyncio.to_thread(send)


def number_in(reply: str) -> str:
    words = [word.strip(";.") for word in reply.split()]
    return next(word for word in words if word.startswith("INC-"))


# --- reading back ------------------------------------------------------------------------


@pytest.fixture
async def api(intake: IntakeUnderTest) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=intake.base_url, timeout=30) as client:
        yield client


async def email_incidents(
    api: httpx.AsyncClient, intake: IntakeUnderTest, tenant: str = "tenant-a"
) -> list[dict[str, Any]]:
    answer = await api.get("/v1/incidents", params={"channel": "email", "limit": 200}, headers=intake.auth(tenant))
    assert answer.status_code == 200, answer.text
    return list(answer.json()["items"])


async def incident_titled(
    api: httpx.AsyncClient, intake: IntakeUnderTest, title: str, tenant: str = "tenant-a"
) -> dict[str, Any]:
    matching = [item for item in await email_incidents(api, intake, tenant) if item["title"] == title]
    assert len(matching) == 1, f"expected one incident titled {title!r}, found {len(matching)}"
    return await read_incident(api, intake, matching[0]["incident_id"], tenant)


async def read_incident(
    api: httpx.AsyncClient, intake: IntakeUnderTest, incident_id: str, tenant: str = "tenant-a"
) -> dict[str, Any]:
    answer = await api.get(f"/v1/incidents/{incident_id}", headers=intake.auth(tenant))
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


async def events_of(intake: IntakeUnderTest, topic: str, incident_id: str, *types: str) -> list[dict[str, Any]]:
    """The events on ``topic`` about ``incident_id``, once every type in ``types`` is there."""

    async def found() -> list[dict[str, Any]]:
        records = await read_all(intake.infrastructure.bootstrap_servers, topic, timeout=15)
        events = [json.loads(record.value) for record in records if record.key == incident_id.encode()]
        return events if all(any(e["type"] == t for e in events) for t in types) else []

    return await wait_until(found, timeout=30, message=f"{types} on {topic} for {incident_id}")


def of_type(events: list[dict[str, Any]], event_type: str) -> list[dict[str, Any]]:
    return [event for event in events if event["type"] == event_type]


# --- new messages ------------------------------------------------------------------------


async def test_a_new_email_opens_an_incident_and_asks_the_notifier_to_acknowledge_it(
    intake: IntakeUnderTest, api: httpx.AsyncClient
) -> None:
    subject = unique("Billing database refuses connections")
    message = plain_email(
        subject,
        "Since 09:10 every login fails with 'too many connections'.\nPlease help.",
        to=intake.tenants["tenant-a"].inbound_email,
    )

    code, reply = await deliver(intake, message)

    assert code == 250 and reply.startswith("2.0.0 Received as INC-"), reply
    number = number_in(reply)
    incident = await incident_titled(api, intake, subject)
    assert incident["number"] == number
    assert incident["channel"] == "email"
    assert incident["reporter"] == {"name": "Jörg Müller", "email": CUSTOMER, "phone": None, "system": None}
    assert incident["description"].startswith("Since 09:10 every login fails with 'too many connections'.")
    assert incident["timeline"][0]["kind"] == "reported"

    reported = of_type(
        await events_of(intake, INCIDENTS_TOPIC, incident["incident_id"], "incident.reported"), "incident.reported"
    )
    assert len(reported) == 1
    assert reported[0]["tenant_id"] == "tenant-a"
    assert reported[0]["data"]["channel"] == "email"
    assert reported[0]["data"]["number"] == number

    notifications = await events_of(intake, NOTIFICATIONS_TOPIC, incident["incident_id"], "notification.requested")
    (acknowledgement,) = of_type(notifications, "notification.requested")
    data = acknowledgement["data"]
    assert data["channel"] == "email"
    assert data["recipient"] == CUSTOMER
    assert data["template"] == "incident-received"
    assert data["subject"] == f"[{number}] Re: {subject}"
    assert data["in_reply_to"] == message["Message-ID"]
    assert data["context"]["number"] == number
    assert data["context"]["title"] == subject
    # The customer's link is the portal's status page, which opens without an API key (issue 8, item 2).
    slug = intake.tenants["tenant-a"].portal_slug
    assert data["context"]["status_url"] == f"{intake.base_url}/portal/{slug}/incidents/{incident['incident_id']}"
    status_page = await api.get(data["context"]["status_url"].removeprefix(intake.base_url))
    assert status_page.status_code == 200 and number in status_page.text


async def test_a_retried_delivery_of_the_same_message_opens_nothing_new(
    intake: IntakeUnderTest, api: httpx.AsyncClient
) -> None:
    # A sending server that lost our 250 (timeout, dropped connection) sends the message again.
    subject = unique("Backup job failed")
    raw = wire_format(
        plain_email(subject, "The nightly backup failed again.", to=intake.tenants["tenant-a"].inbound_email)
    )

    first_code, first = await deliver(intake, raw)
    second_code, second = await deliver(intake, raw)

    assert first_code == second_code == 250
    assert second == f"2.0.0 Already received as {number_in(first)}"
    incident = await incident_titled(api, intake, subject)
    notifications = await events_of(intake, NOTIFICATIONS_TOPIC, incident["incident_id"], "notification.requested")
    assert len(of_type(notifications, "notification.requested")) == 1


async def test_one_email_to_two_tenants_opens_one_incident_for_each(
    intake: IntakeUnderTest, api: httpx.AsyncClient
) -> None:
    subject = unique("Shared VPN concentrator down")
    tenant_a, tenant_b = intake.tenants["tenant-a"].inbound_email, intake.tenants["tenant-b"].inbound_email
    message = plain_email(subject, "Both offices are offline.", to=f"{tenant_a}, {tenant_b}")

    code, reply = await deliver(intake, message, to=[tenant_a, tenant_b])

    assert code == 250 and reply.count("Received as INC-") == 2, reply
    in_a = await incident_titled(api, intake, subject, "tenant-a")
    in_b = await incident_titled(api, intake, subject, "tenant-b")
    assert in_a["incident_id"] != in_b["incident_id"]
    assert in_a["tenant_id"] == "tenant-a" and in_b["tenant_id"] == "tenant-b"


# --- replies -----------------------------------------------------------------------------


async def test_a_reply_with_in_reply_to_is_added_to_its_incident(
    intake: IntakeUnderTest, api: httpx.AsyncClient
) -> None:
    address = intake.tenants["tenant-a"].inbound_email
    subject = unique("Printer queue stuck")
    original = plain_email(subject, "Nothing prints on floor 3.", to=address)
    _, opened = await deliver(intake, original)
    number = number_in(opened)

    reply = plain_email(
        f"Re: {subject}",
        "Floor 2 is affected now too.",
        to=address,
        In_Reply_To=original["Message-ID"],
        References=original["Message-ID"],
    )
    code, answer = await deliver(intake, reply)
    # A reply to the reply threads through the Message-ID the first reply added to the incident.
    second_reply = plain_email(f"Re: Re: {subject}", "And floor 1.", to=address, In_Reply_To=reply["Message-ID"])
    second_code, second_answer = await deliver(intake, second_reply)

    assert (code, answer) == (250, f"2.0.0 Added to {number}")
    assert (second_code, second_answer) == (250, f"2.0.0 Added to {number}")
    incidents = await email_incidents(api, intake)
    assert not [item for item in incidents if item["title"].startswith("Re:") and subject in item["title"]]
    incident = await incident_titled(api, intake, subject)
    comments = [entry for entry in incident["timeline"] if entry["kind"] == "comment"]
    assert [entry["summary"] for entry in comments] == ["Floor 2 is affected now too.", "And floor 1."]
    assert all(entry["channel"] == "email" for entry in comments)

    events = await events_of(intake, INCIDENTS_TOPIC, incident["incident_id"], "incident.updated")
    updates = of_type(events, "incident.updated")
    assert [event["data"]["message"] for event in updates] == ["Floor 2 is affected now too.", "And floor 1."]
    assert all(event["data"]["kind"] == "comment" and event["data"]["channel"] == "email" for event in updates)
    assert len(of_type(events, "incident.reported")) == 1

    notifications = await events_of(intake, NOTIFICATIONS_TOPIC, incident["incident_id"], "notification.requested")
    templates = [event["data"]["template"] for event in of_type(notifications, "notification.requested")]
    assert templates == ["incident-received", "incident-updated", "incident-updated"]
    assert of_type(notifications, "notification.requested")[1]["data"]["subject"] == f"[{number}] Re: {subject}"


async def test_a_reply_with_only_the_incident_tag_in_the_subject_is_added_to_its_incident(
    intake: IntakeUnderTest, api: httpx.AsyncClient
) -> None:
    address = intake.tenants["tenant-a"].inbound_email
    subject = unique("Mail relay rejects outgoing mail")
    _, opened = await deliver(intake, plain_email(subject, "Error 554 from the relay.", to=address))
    number = number_in(opened)

    # Written from another mail client: no In-Reply-To, no References, just the number.
    code, answer = await deliver(
        intake, plain_email(f"Re: [{number}] still broken", "Still failing at 14:00.", to=address)
    )

    assert (code, answer) == (250, f"2.0.0 Added to {number}")
    incident = await incident_titled(api, intake, subject)
    assert incident["timeline"][-1]["kind"] == "comment"
    assert incident["timeline"][-1]["summary"] == "Still failing at 14:00."
    events = await events_of(intake, INCIDENTS_TOPIC, incident["incident_id"], "incident.updated")
    assert [event["data"]["message"] for event in of_type(events, "incident.updated")] == ["Still failing at 14:00."]


async def test_another_tenants_incident_is_never_touched_by_a_reply(
    intake: IntakeUnderTest, api: httpx.AsyncClient
) -> None:
    subject = unique("Firewall blocks the ERP")
    original = plain_email(subject, "Port 443 to the ERP is blocked.", to=intake.tenants["tenant-a"].inbound_email)
    _, opened = await deliver(intake, original)
    number = number_in(opened)
    before = await incident_titled(api, intake, subject)

    # Sent to tenant-b's address, naming tenant-a's incident both ways a reply can.
    stranger = plain_email(
        f"Re: [{number}] {subject}",
        "Let me in on this.",
        to=intake.tenants["tenant-b"].inbound_email,
        In_Reply_To=original["Message-ID"],
        References=original["Message-ID"],
    )
    code, _ = await deliver(intake, stranger, to=[intake.tenants["tenant-b"].inbound_email])

    assert code == 250
    after = await read_incident(api, intake, before["incident_id"])
    assert after["timeline"] == before["timeline"]
    assert after["updated_at"] == before["updated_at"]
    events = await events_of(intake, INCIDENTS_TOPIC, before["incident_id"], "incident.reported")
    assert of_type(events, "incident.updated") == []
    not_visible = await api.get(f"/v1/incidents/{before['incident_id']}", headers=intake.auth("tenant-b"))
    assert not_visible.status_code == 404


async def test_a_bounce_or_auto_reply_is_recorded_but_never_answered(
    intake: IntakeUnderTest, api: httpx.AsyncClient
) -> None:
    # Answering robots makes mail loops (RFC 3834): they are recorded, without an acknowledgement.
    address = intake.tenants["tenant-a"].inbound_email
    subject = unique("Disk alert")
    _, opened = await deliver(intake, plain_email(subject, "db-2 disk 95% full", to=address))
    number = number_in(opened)
    out_of_office = plain_email(
        f"Automatic reply: [{number}] Re: {subject}",
        "I am out of office until Monday.",
        to=address,
        Auto_Submitted="auto-replied",
    )
    bounce = plain_email(
        f"Undelivered Mail Returned to Sender [{number}]",
        "550 mailbox full",
        to=address,
        sender="Mail Delivery System <MAILER-DAEMON@customer.example>",
    )

    assert await deliver(intake, out_of_office) == (250, f"2.0.0 Added to {number}")
    assert await deliver(intake, bounce, sender="") == (250, f"2.0.0 Added to {number}")

    incident = await incident_titled(api, intake, subject)
    assert [entry["kind"] for entry in incident["timeline"]] == ["reported", "comment", "comment"]
    notifications = await events_of(intake, NOTIFICATIONS_TOPIC, incident["incident_id"], "notification.requested")
    # Only the person's first message was acknowledged; the replies above were answered 250 after
    # their writes and events were in Kafka, so an acknowledgement would already be there.
    assert [event["data"]["template"] for event in of_type(notifications, "notification.requested")] == [
        "incident-received"
    ]


# --- content -----------------------------------------------------------------------------


async def test_a_faxed_pdf_and_tiff_are_kept_and_referenced_by_the_incident(
    intake: IntakeUnderTest, api: httpx.AsyncClient
) -> None:
    subject = unique("Fax from +49 30 1234567")
    message = plain_email(
        subject,
        "Fax received: 2 pages.",
        to=intake.tenants["tenant-a"].inbound_email,
        sender="Fax Gateway <fax@customer.example>",
    )
    message.add_attachment(FAX_PDF, maintype="application", subtype="pdf", filename="fax-2024-05-02.pdf")
    message.add_attachment(FAX_TIFF, maintype="image", subtype="tiff", filename="fax-page-1.tif")

    code, reply = await deliver(intake, message)

    assert code == 250, reply
    incident = await incident_titled(api, intake, subject)
    kept = {a["filename"]: a for a in incident["attachments"]}
    assert kept["fax-2024-05-02.pdf"]["content_type"] == "application/pdf"
    assert kept["fax-2024-05-02.pdf"]["size_bytes"] == len(FAX_PDF)
    assert kept["fax-page-1.tif"]["content_type"] == "image/tiff"
    assert kept["fax-page-1.tif"]["size_bytes"] == len(FAX_TIFF)

    reported = of_type(
        await events_of(intake, INCIDENTS_TOPIC, incident["incident_id"], "incident.reported"), "incident.reported"
    )[0]
    assert {a["filename"]: a["size_bytes"] for a in reported["data"]["attachments"]} == {
        "fax-2024-05-02.pdf": len(FAX_PDF),
        "fax-page-1.tif": len(FAX_TIFF),
    }

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(intake.infrastructure.mongo_url)
    try:
        stored = await client[intake.database]["attachments"].find_one(
            {"_id": kept["fax-2024-05-02.pdf"]["attachment_id"]}
        )
    finally:
        await client.close()
    assert stored is not None and stored["tenant_id"] == "tenant-a"
    assert bytes(stored["content"]) == FAX_PDF

    # The operator downloads the fax as it arrived; another tenant cannot.
    pdf_url = f"/v1/incidents/{incident['incident_id']}/attachments/{kept['fax-2024-05-02.pdf']['attachment_id']}"
    download = await api.get(pdf_url, headers=intake.auth("tenant-a"))
    assert download.status_code == 200
    assert download.content == FAX_PDF
    assert download.headers["content-type"] == "application/pdf"
    assert 'filename="fax-2024-05-02.pdf"' in download.headers["content-disposition"]
    assert (await api.get(pdf_url, headers=intake.auth("tenant-b"))).status_code == 404
    missing = await api.get(
        f"/v1/incidents/{incident['incident_id']}/attachments/nope", headers=intake.auth("tenant-a")
    )
    assert missing.status_code == 404 and "has no attachment" in missing.json()["detail"]


async def test_an_attachment_with_a_non_ascii_name_downloads_under_that_name(
    intake: IntakeUnderTest, api: httpx.AsyncClient
) -> None:
    subject = unique("Факс от бухгалтерии")
    message = plain_email(subject, "См. вложение.", to=intake.tenants["tenant-a"].inbound_email)
    message.add_attachment(FAX_PDF, maintype="application", subtype="pdf", filename="Счёт №42.pdf")
    code, reply = await deliver(intake, message)
    assert code == 250, reply
    incident = await incident_titled(api, intake, subject)
    (attachment,) = incident["attachments"]
    download = await api.get(
        f"/v1/incidents/{incident['incident_id']}/attachments/{attachment['attachment_id']}",
        headers=intake.auth("tenant-a"),
    )
    assert download.status_code == 200
    assert download.content == FAX_PDF
    assert "filename*=UTF-8''%D0%A1%D1%87%D1%91%D1%82%20%E2%84%9642.pdf" in download.headers["content-disposition"]


async def test_an_html_only_email_becomes_readable_text(intake: IntakeUnderTest, api: httpx.AsyncClient) -> None:
    subject = unique("Website shows error 502")
    message = EmailMessage()
    message["From"] = CUSTOMER
    message["To"] = intake.tenants["tenant-a"].inbound_email
    message["Subject"] = subject
    message.set_content(
        "<html><head><style>p { color: red }</style></head><body>"
        "<p>Our <b>shop</b> shows&nbsp;an error:</p><ul><li>since 10:00</li><li>only on checkout</li></ul>"
        '<p>See <a href="https://shop.customer.example/status">the status page</a>.</p></body></html>',
        subtype="html",
    )

    code, _ = await deliver(intake, message)

    assert code == 250
    incident = await incident_titled(api, intake, subject)
    assert incident["description"] == (
        "Our shop shows an error:\n\n- since 10:00\n- only on checkout\n\n"
        "See the status page <https://shop.customer.example/status>."
    )


def _eight_bit_email(to: str, subject_header: str, body: bytes, charset: str) -> bytes:
    return (
        (
            f"From: =?iso-8859-1?q?J=F6rg_M=FCller?= <{CUSTOMER}>\r\nTo: {to}\r\n"
            f"Subject: {subject_header}\r\nMessage-ID: {make_msgid(domain='customer.example')}\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset={charset}\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n"
        ).encode()
        + body
        + b"\r\n"
    )


@pytest.mark.parametrize(
    ("charset", "text"),
    [
        ("iso-8859-1", "Grüße aus Köln: der Drucker im 3. Stock druckt nur noch Käsekästchen."),
        ("windows-1252", "Der Server „prod-2“ kostet uns 5 000 € pro Stunde – bitte dringend!"),  # noqa: RUF001
        ("koi8-r", "Сервер базы данных не отвечает с 9 утра."),  # noqa: RUF001
    ],
)
async def test_bodies_and_encoded_subjects_in_any_charset_are_decoded(
    intake: IntakeUnderTest, api: httpx.AsyncClient, charset: str, text: str
) -> None:
    subject = unique(text.split(":")[0][:20].strip())
    encoded_subject = "=?utf-8?b?" + base64.b64encode(subject.encode()).decode() + "?="
    raw = _eight_bit_email(intake.tenants["tenant-a"].inbound_email, encoded_subject, text.encode(charset), charset)

    code, _ = await deliver(intake, raw)

    assert code == 250
    incident = await incident_titled(api, intake, subject)
    assert incident["description"] == text
    assert incident["reporter"]["name"] == "Jörg Müller"


async def test_a_koi8_r_encoded_word_subject_is_decoded(intake: IntakeUnderTest, api: httpx.AsyncClient) -> None:
    tag = uuid.uuid4().hex[:8]
    subject = f"Почта не работает {tag}"
    header = "=?koi8-r?q?" + "".join(f"={byte:02X}" for byte in subject.encode("koi8-r")) + "?="
    raw = _eight_bit_email(intake.tenants["tenant-a"].inbound_email, header, "Нет почты".encode("koi8-r"), "koi8-r")

    code, _ = await deliver(intake, raw)

    assert code == 250
    incident = await incident_titled(api, intake, subject)
    assert incident["description"] == "Нет почты"


async def test_mislabelled_text_is_read_best_effort_and_the_repair_noted(
    intake: IntakeUnderTest, api: httpx.AsyncClient
) -> None:
    # Declared US-ASCII but written in Latin-1: readable, so accepted, with a note for the operator.
    subject = unique("Kassensystem")
    raw = _eight_bit_email(
        intake.tenants["tenant-a"].inbound_email, subject, "Kasse 3 hängt.".encode("latin-1"), "us-ascii"
    )

    code, _ = await deliver(intake, raw)

    assert code == 250
    incident = await incident_titled(api, intake, subject)
    assert incident["description"].startswith("Kasse 3 hängt.\n\n[Aftercare intake: ")
    assert "read as Windows-1252" in incident["description"]


# --- refusals ----------------------------------------------------------------------------


async def test_an_unknown_recipient_is_refused_with_550(intake: IntakeUnderTest) -> None:
    stranger = "helpdesk@not-a-customer.example"
    message = plain_email(unique("Hello"), "Is this support?", to=stranger)

    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        await sendmail(intake, message, to=[stranger])

    code, text = refused.value.recipients[stranger]
    assert code == 550
    assert text.decode().startswith("5.1.1 <helpdesk@not-a-customer.example>: this is not a support address")


async def test_a_message_to_a_known_and_an_unknown_address_reaches_the_known_one(
    intake: IntakeUnderTest, api: httpx.AsyncClient
) -> None:
    known, stranger = intake.tenants["tenant-a"].inbound_email, "nobody@tenant-a.example.org"
    subject = unique("Laptop will not boot")
    message = plain_email(subject, "Black screen.", to=f"{known}, {stranger}")

    refused = await sendmail(intake, message, to=[known, stranger])

    assert list(refused) == [stranger] and refused[stranger][0] == 550
    assert (await incident_titled(api, intake, subject))["title"] == subject


async def test_malformed_mime_is_refused_with_554_saying_what_is_wrong(intake: IntakeUnderTest) -> None:
    no_boundary = (
        f"From: {CUSTOMER}\r\nSubject: broken\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/mixed\r\n\r\nsome text\r\n"
    ).encode()

    code, reply = await deliver(intake, no_boundary)

    assert code == 554
    assert reply.startswith("5.6.0 Message not accepted: A multipart/mixed part has no boundary parameter")


async def test_text_in_an_unknown_charset_is_refused_with_554_naming_the_charset(intake: IntakeUnderTest) -> None:
    raw = _eight_bit_email(
        intake.tenants["tenant-a"].inbound_email, "unreadable", b"\xe9\xe8\xff\xfe text", "x-vendor-legacy"
    )

    code, reply = await deliver(intake, raw)

    assert code == 554
    assert reply.startswith("5.6.0 ")
    assert "charset 'x-vendor-legacy', which is not a known character set" in reply


# --- limits and faults (an intake of their own) --------------------------------------------

SMALL_EMAIL_LIMIT = 200_000
SMALL_ATTACHMENT_LIMIT = 50_000


@pytest.fixture(scope="module")
def small_intake(infrastructure: Infrastructure, tmp_path_factory: pytest.TempPathFactory) -> Iterator[IntakeUnderTest]:
    service = start_intake(
        infrastructure,
        tmp_path_factory.mktemp("small-intake"),
        extra_env={
            "AFTERCARE_INTAKE_MAX_EMAIL_BYTES": str(SMALL_EMAIL_LIMIT),
            "AFTERCARE_INTAKE_MAX_ATTACHMENT_BYTES": str(SMALL_ATTACHMENT_LIMIT),
        },
    )
    try:
        yield service
    finally:
        stop_intake(service)


def _big_email(to: str, size: int) -> EmailMessage:
    message = plain_email(unique("Log dump"), "See attached.", to=to)
    message.add_attachment(b"x" * size, maintype="text", subtype="plain", filename="server.log")
    return message


async def test_a_message_declared_too_large_is_refused_with_552(small_intake: IntakeUnderTest) -> None:
    address = small_intake.tenants["tenant-a"].inbound_email

    # smtplib declares the size (SIZE=) because intake advertises its limit in EHLO.
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        await sendmail(small_intake, _big_email(address, SMALL_EMAIL_LIMIT), to=[address])

    assert refused.value.smtp_code == 552
    assert refused.value.smtp_error.decode().startswith("5.3.4 The message is larger than this support address")


async def test_a_message_over_the_limit_without_a_declared_size_is_refused_with_552(
    small_intake: IntakeUnderTest,
) -> None:
    address = small_intake.tenants["tenant-a"].inbound_email

    code, reply = await deliver(small_intake, _big_email(address, SMALL_EMAIL_LIMIT), to=[address])

    assert code == 552
    assert reply.startswith("5.3.4 ")


async def test_an_attachment_over_its_limit_is_refused_with_552_naming_it(small_intake: IntakeUnderTest) -> None:
    address = small_intake.tenants["tenant-a"].inbound_email
    message = plain_email(unique("Scanned contract"), "Attached.", to=address)
    message.add_attachment(
        b"\x00" * (SMALL_ATTACHMENT_LIMIT + 1), maintype="image", subtype="tiff", filename="contract.tif"
    )

    code, reply = await deliver(small_intake, message, to=[address])

    assert code == 552
    assert reply.startswith("5.3.4 Attachment 'contract.tif' is ")


async def test_when_the_store_is_down_the_sender_is_told_to_retry_and_nothing_is_lost(
    infrastructure: Infrastructure, tmp_path: Path
) -> None:
    store = StoreNode(data_dir=tmp_path / "store", port=free_port())
    await asyncio.to_thread(store.start)
    own = Infrastructure(infrastructure.bootstrap_servers, store.url, "local")
    service = await asyncio.to_thread(start_intake, own, tmp_path / "intake")
    try:
        address = service.tenants["tenant-a"].inbound_email
        subject = unique("Storage array degraded")
        raw = wire_format(plain_email(subject, "Disk 4 failed.", to=address))

        def with_store_failing_after_rcpt() -> tuple[int, bytes]:
            with smtplib.SMTP(service.smtp_host, service.smtp_port, timeout=60) as smtp:
                smtp.ehlo("customer.example")
                smtp.mail(CUSTOMER)
                assert smtp.rcpt(address)[0] == 250
                store.stop()
                return smtp.data(raw)

        code, reply = await asyncio.to_thread(with_store_failing_after_rcpt)
        assert code == 451
        assert reply.decode().startswith("4.3.0 ")

        await asyncio.to_thread(store.start)
        retry_code, retry_reply = await deliver(service, raw, to=[address])
        assert retry_code == 250 and retry_reply.startswith("2.0.0 Received as INC-"), retry_reply
        async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
            assert (await incident_titled(client, service, subject))["description"] == "Disk 4 failed."
    finally:
        await asyncio.to_thread(stop_intake, service)
        store.stop()


async def test_a_taken_smtp_port_is_reported_with_its_setting(
    intake: IntakeUnderTest, infrastructure: Infrastructure
) -> None:
    settings = IntakeSettings(
        smtp_port=intake.smtp_port,
        kafka_bootstrap_servers=infrastructure.bootstrap_servers,
        mongo_url=infrastructure.mongo_url,
    )
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infrastructure.mongo_url)
    producer = EventProducer(infrastructure.bootstrap_servers, client_id="email-port-test")
    database = client["email_port_test"]
    components = IntakeComponents(
        settings=settings,
        incidents=IncidentStore(database, producer),
        tenants=TenantRegistry(database, producer),
        limiter=RateLimiter(database, 10),
        attachments=AttachmentStore(database, settings.max_attachment_bytes),
    )
    server = InboundEmailServer(components)
    try:
        with pytest.raises(EmailChannelUnavailable) as unavailable:
            await server.start()
    finally:
        await server.stop()
        await producer.stop()
        await client.close()

    message = str(unavailable.value)
    assert f"127.0.0.1:{intake.smtp_port}" in message
    assert "AFTERCARE_INTAKE_SMTP_PORT" in message
