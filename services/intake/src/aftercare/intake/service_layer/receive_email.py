"""What happens when an email arrives at a tenant's support address.

A reply (In-Reply-To/References matching a Message-ID stored on the tenant's incident, or else an
``[INC-1234]`` tag in the subject naming one of that tenant's incidents) is added to that
incident whatever its status; any other message opens an incident. Every accepted message gets
an acknowledgement with the incident number, a NotificationRequested kept in the incident's
outbox in the same write as the incident's own event, for the notifier to send; bounces,
auto-replies and list mail get none (RFC 3834), so two robots cannot loop. Its link is the
customer portal's status page, which the customer can open without an API key.

A sending server that retries after losing our 250 does not double anything: a new incident's id
is derived from the tenant, the Message-ID and the body, and a reply whose Message-ID is already
on the tenant's incidents is recognised without a second update.

Threads are found by ``_id``: each Message-ID an incident holds is also an ``email_threads``
document keyed ``<tenant>:<Message-ID>`` (``IncidentStore.remember_email_thread``), claimed
right after the incident's write; a retried delivery finishes a claim a crash left undone.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from aftercare.events.envelope import Event
from aftercare.events.incidents import AttachmentRef, Channel, Reporter
from aftercare.events.notifications import NotificationRequested
from aftercare.events.tenants import NotificationChannel
from aftercare.intake.components import IntakeComponents
from aftercare.intake.domain.changes import FollowUps
from aftercare.intake.domain.inbound_email import InboundEmail
from aftercare.intake.domain.incident import Incident, IncidentReport
from aftercare.intake.domain.tenant import Tenant
from aftercare.intake.service_layer.report_incident import add_information, report

log = structlog.stdlib.get_logger("aftercare.intake.email")

TITLE_MAX_CHARS = 300
# Ids derived from what a message is, so a retried delivery lands on what the first one made.
DELIVERY_IDS = uuid.UUID("5b0f5d0e-6f43-4c1b-9a53-2f0a9c1e7e21")


@dataclass(frozen=True)
class Receipt:
    """What one tenant's copy of a message became."""

    action: str  # "Received as" (a new incident), "Added to" (a reply), "Already received as" (a retry)
    number: str


def portal_status_url(base_url: str, portal_slug: str | None, incident_id: str) -> str | None:
    """The customer portal's status page of an incident: the link a customer can open."""
    if not portal_slug:
        return None
    return f"{base_url.rstrip('/')}/portal/{portal_slug}/incidents/{incident_id}"


async def receive_email(
    intake: IntakeComponents,
    tenant_id: str,
    address: str,
    email: InboundEmail,
    mail_from: str | None,
    null_sender: bool,
) -> Receipt:
    """One tenant's copy of a message: a reply to one of its incidents, or a new incident."""
    store = intake.incidents
    message_id = email.message_id or f"<{email.content_digest[:32]}@no-message-id.aftercare.invalid>"
    delivery_key = f"{tenant_id}|{message_id}|{email.content_digest}"
    sender_address = email.sender_address or (None if null_sender else mail_from)
    author = Reporter(name=email.sender_name, email=sender_address)
    tenant = await intake.tenants.get(tenant_id)

    def acknowledgement(template: str, title: str) -> FollowUps | None:
        return _acknowledgement(
            intake, tenant, delivery_key, email, sender_address, null_sender, template=template, title=title
        )

    thread = await _thread_of(intake, tenant_id, email)
    if thread is not None:
        already = await store.find_by_email_message_id(tenant_id, [message_id])
        if already is None and await store.holds_email_message(thread.incident_id, message_id):
            # The first delivery was added but died before its Message-ID was claimed for threading.
            await store.remember_email_thread(tenant_id, [message_id], thread.incident_id)
            already = thread
        if already is not None:
            # The first delivery may have died between its write and its publish.
            await store.flush(already.incident_id)
            log.info(
                "email already received (a retried delivery)", incident_id=already.incident_id, message_id=message_id
            )
            return Receipt("Already received as", already.number)
        attachments = await _keep_attachments(intake, tenant_id, delivery_key, email)
        outcome = await add_information(
            store,
            tenant_id,
            thread.incident_id,
            channel=Channel.EMAIL,
            kind="comment",
            message=_with_notes(email.body or email.subject, email.notes),
            author=author,
            attachments=attachments,
            email_message_ids=[message_id],
            also_publish=acknowledgement("incident-updated", thread.title),
        )
        log.info(
            "email added to incident",
            incident_id=thread.incident_id,
            number=thread.number,
            message_id=message_id,
            attachments=len(attachments),
        )
        return Receipt("Added to", outcome.incident.number)

    title = email_title(email, sender_address)
    attachments = await _keep_attachments(intake, tenant_id, delivery_key, email)
    opened = await report(
        store,
        tenant_id,
        IncidentReport(
            title=title,
            description=_with_notes(email.body, email.notes),
            channel=Channel.EMAIL,
            reporter=author,
            labels={"inbound_address": address},
            attachments=attachments,
            details={"email": {"message_id": message_id, "subject": email.subject, "to": address}},
        ),
        incident_id=str(uuid.uuid5(DELIVERY_IDS, delivery_key)),
        email_message_ids=[message_id],
        also_publish=acknowledgement("incident-received", title),
    )
    incident = opened.incident
    if not opened.created:
        # A retried delivery: finish what the first may have left undone (its thread claim).
        await store.remember_email_thread(tenant_id, [message_id], incident.incident_id)
        log.info("email already received (a retried delivery)", incident_id=incident.incident_id, message_id=message_id)
        return Receipt("Already received as", incident.number)
    log.info(
        "email opened incident",
        incident_id=incident.incident_id,
        number=incident.number,
        message_id=message_id,
        attachments=len(attachments),
        notes=len(email.notes),
    )
    return Receipt("Received as", incident.number)


async def _thread_of(intake: IntakeComponents, tenant_id: str, email: InboundEmail) -> Incident | None:
    """The tenant's incident this message answers, if any; threads win over a subject tag."""
    if email.thread_message_ids:
        incident = await intake.incidents.find_by_email_message_id(tenant_id, email.thread_message_ids)
        if incident is not None:
            return incident
    if email.incident_tag:
        # Numbers are per tenant: another tenant's INC-1004 is simply not found here.
        return await intake.incidents.get_by_number(tenant_id, email.incident_tag)
    return None


async def _keep_attachments(
    intake: IntakeComponents, tenant_id: str, delivery_key: str, email: InboundEmail
) -> list[AttachmentRef]:
    return [
        await intake.attachments.keep(
            tenant_id,
            attachment.filename,
            attachment.content_type,
            attachment.content,
            attachment_id=str(uuid.uuid5(DELIVERY_IDS, f"{delivery_key}|{index}")),
        )
        for index, attachment in enumerate(email.attachments)
    ]


def _acknowledgement(
    intake: IntakeComponents,
    tenant: Tenant,
    delivery_key: str,
    email: InboundEmail,
    recipient: str | None,
    null_sender: bool,
    *,
    template: str,
    title: str,
) -> FollowUps | None:
    if recipient is None or null_sender or email.automated:
        log.info(
            "no acknowledgement for an automated message or one without a sender",
            sender=recipient,
            automated=email.automated,
        )
        return None
    language = next(
        (c.language for c in tenant.contacts if c.email and c.email.lower() == recipient.lower()),
        "en",
    )
    base_url = intake.settings.public_base_url
    topic = email.topic or title

    def acknowledgement(incident_id: str, number: str) -> Sequence[Event]:
        context = {"number": number, "title": title}
        status_url = portal_status_url(base_url, tenant.portal_slug, incident_id)
        if status_url:
            context["status_url"] = status_url
        return [
            NotificationRequested(
                notification_id=str(uuid.uuid5(DELIVERY_IDS, f"acknowledgement|{delivery_key}")),
                incident_id=incident_id,
                channel=NotificationChannel.EMAIL,
                recipient=recipient,
                template=template,
                language=language,
                subject=f"[{number}] Re: {topic}",
                in_reply_to=email.message_id,
                context=context,
            )
        ]

    return acknowledgement


def email_title(email: InboundEmail, sender: str | None) -> str:
    """The incident title of a new message: its subject, else its first line, else who sent it."""
    title = email.subject.strip()
    if not title:
        title = next((line.strip() for line in email.body.splitlines() if line.strip()), "")
    if not title:
        files = f" with {len(email.attachments)} attachment(s)" if email.attachments else ""
        title = f"Email from {sender or 'an unknown sender'}{files}"
    return title if len(title) <= TITLE_MAX_CHARS else title[: TITLE_MAX_CHARS - 3] + "..."


def _with_notes(text: str, notes: Sequence[str]) -> str:
    if not notes:
        return text
    return "\n\n".join([text, *(f"[Aftercare intake: {note}]" for note in notes)]).strip()
