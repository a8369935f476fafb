"""Email through any SMTP relay (aiosmtplib): host, port, implicit TLS or STARTTLS, AUTH.

The SMTP dialogue is split at the point of no return: MAIL FROM and RCPT TO are reversible (a
dropped connection delivers nothing), the message data is not. ``send`` calls
``point_of_no_return()`` between the two, which is where the delivery is claimed in the store;
see ``domain/delivery.py`` for what that buys when the process dies.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from typing import Any

import aiosmtplib

from aftercare.events.tenants import TenantUpserted
from aftercare.notifier.adapters.templates import RenderedMessage
from aftercare.notifier.domain.delivery import SendError, message_id, thread_root_id

# CRLF line ends, and headers folded only past SMTP's own limit: Python's folding of a long
# subject that starts with a bracket puts the whole subject on a continuation line.
WIRE = policy.SMTP.clone(max_line_length=998)


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    use_tls: bool = False
    starttls: bool = False
    username: str | None = None
    password: str | None = None
    timeout_s: float = 30.0
    validate_certs: bool = True


@dataclass(frozen=True)
class OutgoingEmail:
    sender: str
    recipient: str
    subject: str
    text: str
    html: str
    message_id: str
    reply_to: str | None = None
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()

    def to_message(self) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = self.recipient
        message["Subject"] = self.subject
        message["Date"] = formatdate(localtime=False, usegmt=True)
        message["Message-ID"] = self.message_id or make_msgid()
        if self.reply_to:
            message["Reply-To"] = self.reply_to
        if self.in_reply_to:
            message["In-Reply-To"] = self.in_reply_to
        if self.references:
            message["References"] = " ".join(self.references)
        message["Auto-Submitted"] = "auto-generated"  # so out-of-office replies do not loop back
        for name, value in self.headers:
            message[name] = value
        message.set_content(self.text)
        message.add_alternative(self.html, subtype="html")
        return message


class EmailRelay:
    """One SMTP connection per concurrent sender slot, reused between messages."""

    def __init__(self, settings: SmtpSettings, connections: int = 2) -> None:
        self._settings = settings
        self._idle: asyncio.Queue[aiosmtplib.SMTP] = asyncio.Queue()
        self._slots = asyncio.Semaphore(connections)

    async def _connect(self) -> aiosmtplib.SMTP:
        s = self._settings
        client = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            use_tls=s.use_tls,
            start_tls=s.starttls,
            username=s.username,
            password=s.password,
            timeout=s.timeout_s,
            validate_certs=s.validate_certs,
        )
        await client.connect()
        return client

    async def send(self, email: OutgoingEmail, point_of_no_return: Callable[[], Awaitable[bool]]) -> bool:
        """Send ``email``; False if ``point_of_no_return`` declined (someone else has it).

        Raises ``SendError``: permanent for 5xx answers, ambiguous when the connection broke
        after the message data went (the relay may have it).
        """
        async with self._slots:
            client: aiosmtplib.SMTP | None = None
            with contextlib.suppress(asyncio.QueueEmpty):
                client = self._idle.get_nowait()
            claimed = False
            try:
                if client is None or not client.is_connected:
                    client = await self._connect()
                try:
                    # No RSET first: a connection goes back idle only after a finished
                    # transaction (250 to DATA, or RSET after a declined claim).
                    await client.mail(parseaddr(email.sender)[1])
                except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPResponseException, OSError) as error:
                    if isinstance(error, aiosmtplib.SMTPResponseException) and error.code != 421:
                        raise
                    client.close()  # an idle connection the relay closed (or is closing) meanwhile
                    client = await self._connect()
                    await client.mail(parseaddr(email.sender)[1])
                await client.rcpt(email.recipient)
                if not await point_of_no_return():
                    await client.rset()
                    self._idle.put_nowait(client)
                    return False
                claimed = True
                await client.data(email.to_message().as_bytes(policy=WIRE))
            except aiosmtplib.SMTPResponseException as error:
                await self._discard(client)
                raise SendError(
                    f"relay answered {error.code} {error.message}", permanent=500 <= error.code < 600
                ) from None
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
                await self._discard(client)
                raise SendError(f"relay unreachable: {type(error).__name__}: {error}", ambiguous=claimed) from None
            self._idle.put_nowait(client)
            return True

    @staticmethod
    async def _discard(client: aiosmtplib.SMTP | None) -> None:
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    async def close(self) -> None:
        while not self._idle.empty():
            client = self._idle.get_nowait()
            with contextlib.suppress(Exception):
                await client.quit()


class EmailSender:
    """The email channel: a delivery rendered, threaded per incident and handed to the relay."""

    def __init__(self, relay: EmailRelay, sender: str, message_id_domain: str) -> None:
        self.relay = relay
        self._sender = sender
        self._domain = message_id_domain

    def compose(
        self, delivery: dict[str, Any], message: RenderedMessage, tenant: TenantUpserted | None
    ) -> OutgoingEmail:
        own_id = message_id(delivery["_id"], self._domain)
        references: list[str] = []
        in_reply_to = delivery.get("in_reply_to")
        if in_reply_to:
            references.append(in_reply_to)  # the customer's own email this answers
        incident_id = delivery.get("incident_id")
        if incident_id:
            root = thread_root_id(incident_id, delivery["recipient"], self._domain)
            if root != own_id:
                references.append(root)
                in_reply_to = in_reply_to or root
        if "reply_to" in delivery:  # the tenant's inbound address, taken when it was planned
            reply_to = delivery["reply_to"]
        else:
            inbound = tenant.inbound_emails if tenant else []
            reply_to = inbound[0] if inbound else None
        return OutgoingEmail(
            sender=self._sender,
            recipient=delivery["recipient"],
            subject=message.subject,
            text=message.text,
            html=message.html,
            message_id=own_id,
            reply_to=reply_to,
            in_reply_to=in_reply_to,
            references=tuple(references),
            headers=(("X-Aftercare-Notification", delivery["_id"]),)
            + ((("X-Aftercare-Incident", incident_id),) if incident_id else ()),
        )

    async def send(
        self,
        delivery: dict[str, Any],
        message: RenderedMessage,
        tenant: TenantUpserted | None,
        claim: Callable[[], Awaitable[bool]],
    ) -> bool:
        return await self.relay.send(self.compose(delivery, message, tenant), claim)
