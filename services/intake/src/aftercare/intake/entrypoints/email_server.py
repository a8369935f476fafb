"""The email channel: an SMTP server for the tenants' inbound support addresses.

It runs in the service's own event loop (``loop.create_server`` with aiosmtpd's ``SMTP``
protocol, not aiosmtpd's ``Controller``, which would start a second loop in a thread), so its
handlers use the same store and Kafka clients as the HTTP channels.

What the sending mail server is told, and when:

=========  =====================================================================================
RCPT TO    ``250 2.1.5`` a tenant's support address; ``550 5.1.1`` any other address;
           ``451 4.7.1`` over the per-address rate limit; ``451 4.3.0`` store unreachable
MAIL FROM  ``552 5.3.4`` when the declared SIZE is over ``max_email_bytes`` (advertised in EHLO)
DATA       ``552 5.3.4`` message over ``max_email_bytes``, an attachment over
           ``max_attachment_bytes``, a header over its limit (``Subject``, the sender's name;
           see ``domain/field_limits.py``; the reply names it) or too large to record;
           ``554 5.6.0`` MIME that cannot be taken apart or text in an unknown charset that is
           not UTF-8 (the reply says which); ``451 4.3.0`` when the
           store or Kafka cannot take it (the sender's server retries later); ``250 2.0.0`` with
           the incident number(s) only once every incident write and its events are in Kafka
=========  =====================================================================================

Text that could only be read best-effort (a wrong or missing charset label) is accepted; what
was repaired is noted at the end of the incident's description (see ``domain.inbound_email``).

A message to several tenants' addresses opens (or updates) one incident per tenant. What each
tenant's copy becomes (a reply to an incident, a new incident, the acknowledgement owed to the
sender, a retried delivery recognised) is ``service_layer/receive_email.py``; this module is
the SMTP conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any, AnyStr

import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session
from opentelemetry.trace import SpanKind

from aftercare.events.producer import EventTooLarge
from aftercare.events.tracing import tracer
from aftercare.intake.adapters.attachments import AttachmentTooLarge
from aftercare.intake.components import IntakeComponents
from aftercare.intake.domain import field_limits as limits
from aftercare.intake.domain.field_limits import FieldTooLong
from aftercare.intake.domain.inbound_email import InboundEmail, MalformedEmail, parse_inbound_email
from aftercare.intake.service_layer.receive_email import Receipt, receive_email

log = structlog.stdlib.get_logger("aftercare.intake.email")

PORT_SETTING = "AFTERCARE_INTAKE_SMTP_PORT"
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


def header_problems(email: InboundEmail) -> list[FieldTooLong]:
    """Headers over the limits of ``domain/field_limits.py`` (the text itself is cut, not refused)."""
    checks = [
        limits.too_long("Subject", email.subject, limits.SUBJECT_CHARS),
        limits.too_long("From (the sender's name)", email.sender_name, limits.NAME_CHARS),
        limits.too_long("From (the sender's address)", email.sender_address, limits.EMAIL_ADDRESS_CHARS),
        limits.too_long("Message-ID", email.message_id, limits.MESSAGE_ID_CHARS),
    ]
    return [problem for problem in checks if problem is not None]


def _megabytes(size: int) -> str:
    return f"{size / 1_048_576:.1f} MB"


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
            if not credential.active:
                log.info("email refused: tenant deactivated", recipient=address, tenant_id=credential.tenant_id)
                return _reply(
                    550,
                    "5.2.1",
                    f"<{address}>: this support address belongs to a deactivated account and takes no mail; "
                    "contact your support provider another way",
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
        over = header_problems(email)
        if over:
            log.info("email refused: header over its limit", sender=envelope.mail_from, field=over[0].field)
            return _reply(
                552,
                "5.3.4",
                "Message not accepted: "
                + "; ".join(problem.sentence() for problem in over)
                + ". Shorten it and send the message again.",
            )
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
            except EventTooLarge:
                # The last line: each part is within its limit, together they are too much to record.
                log.info("email refused: too large to record", sender=envelope.mail_from)
                return _reply(
                    552,
                    "5.3.4",
                    "Message not accepted: its text and headers together are too large to record as one "
                    "incident. Send a shorter text (attach long logs as files) and send it again.",
                )
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
            if credential is not None and credential.active:
                tenants.setdefault(credential.tenant_id, address.lower())
        null_sender = envelope.mail_from in (None, "", "<>")
        receipts = []
        for tenant_id, address in tenants.items():
            structlog.contextvars.bind_contextvars(tenant_id=tenant_id)
            try:
                receipts.append(
                    await receive_email(self._intake, tenant_id, address, email, envelope.mail_from, null_sender)
                )
            finally:
                structlog.contextvars.unbind_contextvars("tenant_id")
        return receipts

    # --- shutdown ------------------------------------------------------------------------

    async def finish_deliveries(self, timeout_s: float) -> None:
        if self._deliveries:
            await asyncio.wait(set(self._deliveries), timeout=timeout_s)


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
