"""The email channel: an SMTP server for the tenants' inbound support addresses.

It runs in the service's own event loop (``loop.create_server`` with aiosmtpd's ``SMTP``
protocol, not aiosmtpd's ``Controller``, which would start a second loop in a thread), so its
handlers use the same store and Kafka clients as the HTTP channels.

What the sending mail server is told, and when:

=========  =====================================================================================
RCPT TO    ``250 2.1.5`` a tenant's support address; ``550 5.1.1`` any other address;
           ``451 4.7.1`` over the per-address rate limit; ``451 4.3.0`` store unreachable
MAIL FROM  ``552 5.3.4`` when the declared SIZE is over ``max_email_bytes`` (advertised in EHLO)
DATA       ``552 5.3.4`` message over ``max_email_bytes`` or an attachment over
           ``max_attachment_bytes``; ``554 5.6.0`` MIME that cannot be taken apart or text in an
           unknown charset that is not UTF-8 (the reply says which); ``451 4.3.0`` when the
           store or Kafka cannot take it (the sender's server retries later); ``250 2.0.0`` with
           the incident number(s) only once every incident write and its events are in Kafka
=========  =====================================================================================

Text that could only be read best-effort (a wrong or missing charset label) is accepted; what
was repaired is noted at the end of the incident's description (see ``domain.inbound_email``).

A message to several tenants' addresses opens (or updates) one incident per tenant. A reply,
recognised by In-Reply-To/References matching a Message-ID stored on the tenant's incident, or
else by an ``[INC-1234]`` tag in the subject naming one of that tenant's incidents, is added to
that incident whatever its status (an operator decides whether a comment reopens it). Every
accepted message gets an acknowledgement with the incident number: a NotificationRequested kept
in the incident's outbox, in the same write as the incident's own event, for the notifier to
send; bounces, auto-replies and list mail get none (RFC 3834), so two robots cannot loop.

A sending server that retries after losing our 250 does not double anything: a new incident's id
is derived from the tenant, the Message-ID and the body, and a reply whose Message-ID is already
on the tenant's incidents is recognised and answered 250 without a second update.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, AnyStr

import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session
from opentelemetry.trace import SpanKind

from aftercare.events.envelope import Event
from aftercare.events.incidents import AttachmentRef, Channel, Reporter
from aftercare.events.notifications import NotificationRequested
from aftercare.events.tenants import NotificationChannel
from aftercare.events.tracing import tracer
from aftercare.intake.attachments import AttachmentTooLarge
from aftercare.intake.components import IntakeComponents
from aftercare.intake.domain.inbound_email import InboundEmail, MalformedEmail, parse_inbound_email
from aftercare.intake.domain.incident import Incident, IncidentReport
from aftercare.intake.incident_desk import FollowUps

log = structlog.stdlib.get_logger("aftercare.intake.email")

PORT_SETTING = "AFTERCARE_INTAKE_SMTP_PORT"
TITLE_MAX_CHARS = 300
# Ids derived from what a message is, so a retried delivery lands on what the first one made.
_DELIVERY_IDS = uuid.UUID("5b0f5d0e-6f43-4c1b-9a53-2f0a9c1e7e21")
_SHUTDOWN_GRACE_S = 10.0

TEMPORARY_FAILURE = (
    "451 4.3.0 Aftercare cannot store this message right now (a temporary fault on our side); "
    "your mail server will retry it"
)


class EmailChannelUnavailable(RuntimeError):
    """The SMTP server could not start (e.g. its port is taken)."""


def _reply(code: int, enhanced: str, text: str) -> str:
    # One line, ASCII, short: what every SMTP client can show to the person who sent the mail.
    line = " ".join(text.split()).encode("ascii", "replace").decode("ascii")
    return f"{code} {enhanced} {line}"[:500]


def _megabytes(size: int) -> str:
    return f"{size / 1_048_576:.1f} MB"


@dataclass(frozen=True)
class Receipt:
    """What one tenant's copy of a message became."""

    action: str  # "Received as" (a new incident), "Added to" (a reply), "Already received as" (a retry)
    number: str


class SupportMailbox:
    """aiosmtpd handler: who may receive mail here, and what each message becomes."""

    def __init__(self, intake: IntakeComponents) -> None:
        self._intake = intake
        self._deliveries: set[asyncio.Task[str]] = set()

    # --- SMTP hooks ----------------------------------------------------------------------

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        try:
            credential = await self._intake.tenants.by_inbound_email(address)
            if credential is None:
                log.info("email refused: not a support address", recipient=address)
                return _reply(
                    550,
                    "5.1.1",
                    f"<{address}>: this is not a support address at Aftercare; "
                    "check the address your support provider gave you",
                )
            verdict = await self._intake.limiter.hit(f"email|{credential.credential_id}")
        except Exception as error:  # the store is unreachable: the sender's server retries later
            log.warning("email recipient check failed; answered 451", recipient=address, error=str(error))
            return TEMPORARY_FAILURE
        if not verdict.allowed:
            log.warning("email refused: rate limit", recipient=address, tenant_id=credential.tenant_id)
            return _reply(
                451,
                "4.7.1",
                f"<{address}> takes at most {self._intake.limiter.per_minute} messages a "
                f"minute; try again in {verdict.retry_after_s} seconds",
            )
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        # Shielded: a sender that hangs up mid-write must not cancel a half-done delivery; it
        # will retry, and the retry finds what this one did.
        task = asyncio.ensure_future(self._accept(envelope))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)
        return await asyncio.shield(task)

    async def handle_exception(self, error: Exception) -> str:
        # A fault of ours while handling a command: the sender's server keeps the message and
        # retries, rather than bouncing it with a stack trace's message (aiosmtpd's default).
        log.error("email command failed; answered 451", error=str(error), exc_info=error)
        return TEMPORARY_FAILURE

    # --- what a message becomes ----------------------------------------------------------

    async def _accept(self, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        limit = self._intake.settings.max_email_bytes
        if len(raw) > limit:
            return self._too_big(len(raw))
        try:
            # Parsing 25 MB of MIME takes a while; keep the event loop answering meanwhile.
            email = await asyncio.to_thread(parse_inbound_email, raw)
        except MalformedEmail as error:
            log.info("email refused: malformed", sender=envelope.mail_from, error=str(error))
            return _reply(554, "5.6.0", f"Message not accepted: {error}")
        attachment_limit = self._intake.attachments.max_bytes
        for attachment in email.attachments:
            if attachment.size_bytes > attachment_limit:
                log.info(
                    "email refused: attachment too large",
                    sender=envelope.mail_from,
                    filename=attachment.filename,
                    size_bytes=attachment.size_bytes,
                )
                return _reply(
                    552,
                    "5.3.4",
                    f"Attachment {attachment.filename!r} is "
                    f"{_megabytes(attachment.size_bytes)}; attachments up to "
                    f"{_megabytes(attachment_limit)} are accepted. Send a smaller "
                    "file or a link to it.",
                )
        with tracer().start_as_current_span("smtp DATA", kind=SpanKind.SERVER) as span:
            span.set_attribute("aftercare.email.recipients", len(envelope.rcpt_tos))
            try:
                receipts = await self._deliver_all(envelope, email)
            except AttachmentTooLarge as error:
                return _reply(552, "5.3.4", str(error))
            except Exception:  # store or Kafka down (or a fault of ours): never accept-then-lose
                log.exception(
                    "email could not be stored; answered 451", sender=envelope.mail_from, message_id=email.message_id
                )
                return TEMPORARY_FAILURE
        if not receipts:
            return _reply(554, "5.1.1", "None of the recipients is a support address any more.")
        return _reply(250, "2.0.0", "; ".join(f"{receipt.action} {receipt.number}" for receipt in receipts))

    def _too_big(self, size: int) -> str:
        limit = self._intake.settings.max_email_bytes
        return _reply(
            552,
            "5.3.4",
            f"The message is {_megabytes(size)}; this support address accepts messages "
            f"up to {_megabytes(limit)} ({limit} bytes). Send large files another way.",
        )

    async def _deliver_all(self, envelope: Envelope, email: InboundEmail) -> list[Receipt]:
        # One incident per tenant, however many of its addresses the message was sent to.
        tenants: dict[str, str] = {}
        for address in envelope.rcpt_tos:
            credential = await self._intake.tenants.by_inbound_email(address)
            if credential is not None:
                tenants.setdefault(credential.tenant_id, address.lower())
        null_sender = envelope.mail_from in (None, "", "<>")
        return [
            await self._deliver(tenant_id, address, email, envelope.mail_from, null_sender)
            for tenant_id, address in tenants.items()
        ]

    async def _deliver(
        self, tenant_id: str, address: str, email: InboundEmail, mail_from: str | None, null_sender: bool
    ) -> Receipt:
        desk = self._intake.desk
        message_id = email.message_id or f"<{email.content_digest[:32]}@no-message-id.aftercare.invalid>"
        delivery_key = f"{tenant_id}|{message_id}|{email.content_digest}"
        sender_address = email.sender_address or (None if null_sender else mail_from)
        author = Reporter(name=email.sender_name, email=sender_address)
        structlog.contextvars.bind_contextvars(tenant_id=tenant_id)
        try:
            thread = await self._thread_of(tenant_id, email)
            if thread is not None:
                already = await desk.find_by_email_message_id(tenant_id, [message_id])
                if already is not None:
                    # The first delivery may have died between its write and its publish.
                    await desk.relay.flush(desk.incidents, already.incident_id)
                    log.info(
                        "email already received (a retried delivery)",
                        incident_id=already.incident_id,
                        message_id=message_id,
                    )
                    return Receipt("Already received as", already.number)
                attachments = await self._keep_attachments(tenant_id, delivery_key, email)
                acknowledgement = await self._acknowledgement(
                    tenant_id, delivery_key, email, sender_address, null_sender, "incident-updated", thread.title
                )
                outcome = await desk.add_update(
                    tenant_id,
                    thread.incident_id,
                    channel=Channel.EMAIL,
                    kind="comment",
                    message=_with_notes(email.body or email.subject, email.notes),
                    author=author,
                    attachments=attachments,
                    email_message_ids=[message_id],
                    also_publish=acknowledgement,
                )
                log.info(
                    "email added to incident",
                    incident_id=thread.incident_id,
                    number=thread.number,
                    message_id=message_id,
                    attachments=len(attachments),
                )
                return Receipt("Added to", outcome.incident.number)

            title = _title(email, sender_address)
            attachments = await self._keep_attachments(tenant_id, delivery_key, email)
            acknowledgement = await self._acknowledgement(
                tenant_id, delivery_key, email, sender_address, null_sender, "incident-received", title
            )
            report = IncidentReport(
                title=title,
                description=_with_notes(email.body, email.notes),
                channel=Channel.EMAIL,
                reporter=author,
                labels={"inbound_address": address},
                attachments=attachments,
                details={"email": {"message_id": message_id, "subject": email.subject, "to": address}},
            )
            outcome = await desk.report(
                tenant_id,
                report,
                incident_id=str(uuid.uuid5(_DELIVERY_IDS, delivery_key)),
                email_message_ids=[message_id],
                also_publish=acknowledgement,
            )
            incident = outcome.incident
            if not outcome.created:
                log.info(
                    "email already received (a retried delivery)",
                    incident_id=incident.incident_id,
                    message_id=message_id,
                )
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
        finally:
            structlog.contextvars.unbind_contextvars("tenant_id")

    async def _thread_of(self, tenant_id: str, email: InboundEmail) -> Incident | None:
        """The tenant's incident this message answers, if any; threads win over a subject tag."""
        desk = self._intake.desk
        if email.thread_message_ids:
            incident = await desk.find_by_email_message_id(tenant_id, email.thread_message_ids)
            if incident is not None:
                return incident
        if email.incident_tag:
            # Numbers are per tenant: another tenant's INC-1004 is simply not found here.
            return await desk.get_by_number(tenant_id, email.incident_tag)
        return None

    async def _keep_attachments(self, tenant_id: str, delivery_key: str, email: InboundEmail) -> list[AttachmentRef]:
        store = self._intake.attachments
        return [
            await store.keep(
                tenant_id,
                attachment.filename,
                attachment.content_type,
                attachment.content,
                attachment_id=str(uuid.uuid5(_DELIVERY_IDS, f"{delivery_key}|{index}")),
            )
            for index, attachment in enumerate(email.attachments)
        ]

    async def _acknowledgement(
        self,
        tenant_id: str,
        delivery_key: str,
        email: InboundEmail,
        recipient: str | None,
        null_sender: bool,
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
        language = await self._language_of(tenant_id, recipient)
        base_url = self._intake.settings.public_base_url.rstrip("/")
        topic = email.topic or title

        def acknowledgement(incident_id: str, number: str) -> Sequence[Event]:
            return [
                NotificationRequested(
                    notification_id=str(uuid.uuid5(_DELIVERY_IDS, f"acknowledgement|{delivery_key}")),
                    incident_id=incident_id,
                    channel=NotificationChannel.EMAIL,
                    recipient=recipient,
                    template=template,
                    language=language,
                    subject=f"[{number}] Re: {topic}",
                    in_reply_to=email.message_id,
                    context={"number": number, "title": title, "status_url": f"{base_url}/v1/incidents/{incident_id}"},
                )
            ]

        return acknowledgement

    async def _language_of(self, tenant_id: str, address: str) -> str:
        tenant = await self._intake.tenants.get(tenant_id)
        for contact in tenant.contacts:
            if contact.email and contact.email.lower() == address.lower():
                return contact.language
        return "en"

    # --- shutdown ------------------------------------------------------------------------

    async def finish_deliveries(self, timeout_s: float) -> None:
        if self._deliveries:
            await asyncio.wait(set(self._deliveries), timeout=timeout_s)


def _title(email: InboundEmail, sender: str | None) -> str:
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


class _SupportSmtp(SMTP):
    """aiosmtpd's SMTP protocol with replies a sender can act on, and known connections."""

    def __init__(self, handler: SupportMailbox, connections: set[_SupportSmtp], **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._connections = connections

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._connections.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self._connections.discard(self)
        super().connection_lost(error)

    async def push(self, status: AnyStr) -> None:
        # aiosmtpd's own size refusals (declared SIZE, or DATA over data_size_limit) carry no
        # enhanced status code and do not say what the limit is.
        if isinstance(status, str) and status.startswith("552 Error"):
            limit = self.data_size_limit or 0
            await super().push(
                _reply(
                    552,
                    "5.3.4",
                    f"The message is larger than this support address accepts "
                    f"({_megabytes(limit)}, {limit} bytes). Send large files "
                    "another way.",
                )
            )
            return
        await super().push(status)


class InboundEmailServer:
    """The SMTP listener on ``smtp_host:smtp_port``, started and stopped with the service."""

    def __init__(self, intake: IntakeComponents) -> None:
        self._intake = intake
        self._mailbox = SupportMailbox(intake)
        self._server: asyncio.Server | None = None
        self._connections: set[_SupportSmtp] = set()

    @property
    def port(self) -> int | None:
        if self._server is None or not self._server.sockets:
            return None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        settings = self._intake.settings
        loop = asyncio.get_running_loop()
        hostname = socket.gethostname()  # once: aiosmtpd would otherwise resolve its FQDN per connection
        # aiosmtpd logs every SMTP command at INFO; the outcome lines below say what matters.
        logging.getLogger("mail.log").setLevel(logging.WARNING)

        def protocol() -> _SupportSmtp:
            return _SupportSmtp(
                self._mailbox,
                self._connections,
                data_size_limit=settings.max_email_bytes,
                enable_SMTPUTF8=True,
                hostname=hostname,
                ident="Aftercare intake",
                loop=loop,
            )

        try:
            self._server = await loop.create_server(protocol, host=settings.smtp_host, port=settings.smtp_port)
        except OSError as error:
            reason = error.strerror or str(error)
            log.error(
                "email channel cannot listen",
                host=settings.smtp_host,
                port=settings.smtp_port,
                setting=PORT_SETTING,
                error=reason,
            )
            raise EmailChannelUnavailable(
                f"the email channel cannot listen on {settings.smtp_host}:{settings.smtp_port}: {reason}. "
                f"Free the port or set {PORT_SETTING} to another one (AFTERCARE_INTAKE_SMTP_ENABLED=false "
                "runs intake without email)"
            ) from error
        log.info(
            "email channel listening",
            host=settings.smtp_host,
            port=self.port,
            max_email_bytes=settings.max_email_bytes,
            max_attachment_bytes=settings.max_attachment_bytes,
        )

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()  # no new connections
        await self._mailbox.finish_deliveries(_SHUTDOWN_GRACE_S)
        for connection in list(self._connections):
            if connection.transport is not None:
                connection.transport.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), timeout=5.0)
        self._server = None
        log.info("email channel stopped")
