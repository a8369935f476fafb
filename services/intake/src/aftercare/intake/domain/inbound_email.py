"""An email to a support address, read into what intake needs to open or update an incident.

Pure: bytes in, an ``InboundEmail`` out (or ``MalformedEmail`` saying what is wrong). MIME is
parsed by the standard library (``email.policy.default``); this module decides what a support
desk makes of it:

* the body is the plain-text part, else the HTML part turned into readable text; further inline
  text parts (mail clients split the text around pasted screenshots) are appended to it;
* every other part (faxed PDFs and TIFFs, screenshots, forwarded messages) is an attachment;
* text in a charset Python cannot decode is read best-effort where that is honest, and each
  such repair is recorded in ``notes`` for the incident (see ``decode_text``); text whose
  charset is unknown and that is not UTF-8 either cannot be read and is refused;
* a message whose MIME structure cannot be taken apart (a multipart without a boundary, or
  with a boundary that never appears) or that has no header section is refused.
"""

from __future__ import annotations

import base64
import codecs
import email.charset
import hashlib
import mimetypes
import quopri
import re
from dataclasses import dataclass, field
from email import errors as mime_errors
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import parseaddr
from html.parser import HTMLParser
from typing import cast

INCIDENT_TAG = re.compile(r"\[\s*(INC-\d{1,12})\s*\]", re.IGNORECASE)
_MESSAGE_ID = re.compile(r"<[^<>\s]+>")
_REPLY_PREFIX = re.compile(r"^\s*((re|aw|sv|antw|fwd?|wg)\s*(\[\d+\])?\s*:\s*)+", re.IGNORECASE)
_ENCODED_WORD = re.compile(r"=\?([^?\s*]+)(?:\*[^?\s]*)?\?([QqBb])\?([^?\s]*)\?=")
_BETWEEN_ENCODED_WORDS = re.compile(r"(\?=)\s+(=\?)")
_ASCII_CHARSETS = {"ascii", "us-ascii", "ansi_x3.4-1968", "646"}

# Beyond this the description keeps the start and says how long the text was: an incident
# document must stay far below the store's 16 MB limit, and events well below Kafka's 1 MB.
MAX_BODY_CHARS = 100_000


class MalformedEmail(ValueError):
    """The message cannot be read as an email; the text says what is wrong, for the sender."""


@dataclass(frozen=True)
class InboundAttachment:
    filename: str
    content_type: str
    content: bytes = field(repr=False)

    @property
    def size_bytes(self) -> int:
        return len(self.content)


@dataclass(frozen=True)
class InboundEmail:
    """What a support desk reads from one email."""

    sender_name: str | None
    sender_address: str | None
    recipients: tuple[str, ...]
    subject: str
    body: str
    message_id: str | None
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    incident_tag: str | None
    attachments: tuple[InboundAttachment, ...]
    automated: bool
    content_digest: str
    notes: tuple[str, ...] = ()

    @property
    def thread_message_ids(self) -> tuple[str, ...]:
        """Message-IDs this one answers, the direct parent first, then older ones newest first."""
        ordered = [*self.in_reply_to, *reversed(self.references)]
        return tuple(dict.fromkeys(ordered))

    @property
    def topic(self) -> str:
        """The subject without reply prefixes and incident tags, e.g. for 'Re: [INC-1] Re: x' -> 'x'."""
        without_tags = INCIDENT_TAG.sub(" ", self.subject)
        previous = None
        text = without_tags
        while previous != text:  # "Re: [INC-1] Re: x": prefixes can sit on both sides of a tag
            previous = text
            text = _REPLY_PREFIX.sub("", text).strip()
        return re.sub(r"\s+", " ", text)


def parse_inbound_email(raw: bytes) -> InboundEmail:
    """Read an email as received over SMTP (the DATA bytes)."""
    try:
        message = BytesParser(policy=policy.default).parsebytes(raw)
        return _read(message, raw)
    except MalformedEmail:
        raise
    except RecursionError:
        raise MalformedEmail(
            "The MIME parts are nested too deeply to be read; send the content with fewer levels of multipart."
        ) from None
    except (
        mime_errors.MessageError,
        LookupError,
        ValueError,
        TypeError,
        IndexError,
        AttributeError,
        AssertionError,
    ) as error:
        # The standard library's parser is lenient but can still trip over pathological headers.
        raise MalformedEmail(
            f"The message could not be parsed as MIME ({type(error).__name__}: {error}); "
            "check the headers and the MIME structure."
        ) from error


def _read(message: EmailMessage, raw: bytes) -> InboundEmail:
    if not list(message.keys()):
        raise MalformedEmail(
            "The message has no header section; an email must start with headers "
            "such as From: and Subject:, then a blank line, then the text."
        )
    notes: list[str] = []
    _check_structure(message, notes)

    subject = _header_text(message, "Subject", notes)
    sender_name, sender_address = _sender(message, notes)
    body_part = message.get_body(preferencelist=("plain", "html"))
    texts: list[str] = []
    attachments: list[InboundAttachment] = []
    alternatives = _alternatives_of(message, body_part)
    if body_part is not None:
        texts.append(_part_text(cast(EmailMessage, body_part), notes))
    for part in _leaves(message):
        if part is body_part or any(part is other for other in alternatives):
            continue
        if _is_inline_text(part):
            texts.append(_part_text(part, notes))
        else:
            attachments.append(_attachment(part, len(attachments) + 1, notes))
    body = "\n\n".join(text for text in (t.strip("\n") for t in texts) if text.strip())
    if len(body) > MAX_BODY_CHARS:
        notes.append(f"The text was {len(body)} characters long; only the first {MAX_BODY_CHARS} are kept.")
        body = body[:MAX_BODY_CHARS]

    tag = INCIDENT_TAG.search(subject)
    return InboundEmail(
        sender_name=sender_name,
        sender_address=sender_address,
        recipients=tuple(_addresses(message, "To") + _addresses(message, "Cc")),
        subject=subject,
        body=body,
        message_id=_first_id(message.get("Message-ID")),
        in_reply_to=_ids(message.get("In-Reply-To")),
        references=_ids(message.get("References")),
        incident_tag=tag.group(1).upper() if tag else None,
        attachments=tuple(attachments),
        automated=_is_automated(message),
        content_digest=_content_digest(raw),
        notes=tuple(notes),
    )


# --- structure ---------------------------------------------------------------------------


def _check_structure(message: EmailMessage, notes: list[str]) -> None:
    for part in message.walk():
        kind = part.get_content_type()
        for defect in part.defects:
            if isinstance(defect, mime_errors.NoBoundaryInMultipartDefect):
                raise MalformedEmail(
                    f"A {kind} part has no boundary parameter in its Content-Type, so its "
                    'parts cannot be separated; add boundary="..." or send plain text.'
                )
            if isinstance(defect, mime_errors.StartBoundaryNotFoundDefect):
                raise MalformedEmail(
                    f"The boundary {part.get_boundary()!r} declared for a {kind} part never "
                    "appears in the message, so its parts cannot be separated."
                )
            if isinstance(defect, mime_errors.CloseBoundaryNotFoundDefect):
                notes.append(
                    f"The {kind} part ended without its closing MIME boundary; the message may have been cut off."
                )


def _leaves(message: EmailMessage) -> list[EmailMessage]:
    """Every part that carries content; a forwarded message (message/rfc822) counts as one."""
    if message.get_content_maintype() == "multipart":
        parts = message.get_payload()
        if not isinstance(parts, list):
            return []
        return [leaf for part in parts for leaf in _leaves(cast(EmailMessage, part))]
    return [message]


def _path_to(part: EmailMessage, target: Message) -> list[EmailMessage] | None:
    if part is target:
        return [part]
    children = part.get_payload() if part.get_content_maintype() == "multipart" else None
    for child in children if isinstance(children, list) else ():
        path = _path_to(cast(EmailMessage, child), target)
        if path is not None:
            return [part, *path]
    return None


def _alternatives_of(message: EmailMessage, body_part: Message | None) -> list[EmailMessage]:
    """The other renderings (e.g. the HTML next to the plain text) of the chosen body."""
    if body_part is None:
        return []
    ancestors = (_path_to(message, body_part) or [])[:-1]
    for ancestor in reversed(ancestors):
        if ancestor.get_content_type() == "multipart/alternative":
            return [leaf for leaf in _leaves(ancestor) if leaf.get_content_maintype() == "text"]
    return []


def _is_inline_text(part: EmailMessage) -> bool:
    return (
        part.get_content_type() in ("text/plain", "text/html")
        and part.get_content_disposition() != "attachment"
        and part.get_filename() is None
    )


def _part_text(part: EmailMessage, notes: list[str]) -> str:
    content = part.get_payload(decode=True)
    payload = content if isinstance(content, bytes) else b""
    text = decode_text(payload, part.get_content_charset(), f"the {part.get_content_type()} part", notes)
    if part.get_content_subtype() == "html":
        text = html_to_text(text)
    return text.replace("\r\n", "\n")


def _attachment(part: EmailMessage, number: int, notes: list[str]) -> InboundAttachment:
    content_type = part.get_content_type()
    filename = _safe_filename(part.get_filename()) or f"attachment-{number}{_extension(content_type)}"
    if content_type == "message/rfc822":
        inner = part.get_payload()
        first = inner[0] if isinstance(inner, list) and inner else None
        content = first.as_bytes(policy=policy.SMTP) if isinstance(first, Message) else b""
    else:
        decoded = part.get_payload(decode=True)
        content = decoded if isinstance(decoded, bytes) else b""
    damaged = [
        d
        for d in part.defects
        if isinstance(
            d,
            (
                mime_errors.InvalidBase64PaddingDefect,
                mime_errors.InvalidBase64CharactersDefect,
                mime_errors.InvalidBase64LengthDefect,
            ),
        )
    ]
    if damaged:
        notes.append(f"The base64 encoding of attachment {filename!r} is damaged; the file may be incomplete.")
    return InboundAttachment(filename=filename, content_type=content_type, content=content)


def _safe_filename(name: str | None) -> str | None:
    if not name:
        return None
    # A filename is the sender's choice: keep only the last path part, without control characters.
    name = re.split(r"[\\/]", name)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip().strip(".")
    return name[:200] or None


def _extension(content_type: str) -> str:
    if content_type == "message/rfc822":
        return ".eml"
    return mimetypes.guess_extension(content_type) or ".bin"


# --- headers -----------------------------------------------------------------------------


def _raw_header(message: EmailMessage, name: str) -> str | None:
    for key, value in message.raw_items():
        if key.lower() == name.lower():
            return re.sub(r"\r?\n[ \t]+", " ", str(value))
    return None


def _damaged(text: str) -> bool:
    # policy.default shows undecodable bytes as U+FFFD or as lone surrogates (raw 8-bit headers).
    return "\ufffd" in text or any("\udc80" <= ch <= "\udcff" for ch in text)


def _header_text(message: EmailMessage, name: str, notes: list[str]) -> str:
    value = message.get(name)
    if value is None:
        return ""
    text = str(value)
    if _damaged(text):
        raw = _raw_header(message, name)
        if raw is not None:
            text = decode_header_text(raw, f"the {name} header", notes)
    return re.sub(r"\s+", " ", text).strip()


def _sender(message: EmailMessage, notes: list[str]) -> tuple[str | None, str | None]:
    header = message.get("From")
    if header is None:
        return None, None
    name: str | None = None
    address: str | None = None
    addresses = getattr(header, "addresses", ())
    if addresses:
        first: Address = addresses[0]
        name = first.display_name or None
        address = first.addr_spec if first.username and first.domain else None
    if _damaged(str(header)) or (name is not None and _damaged(name)):
        raw = _raw_header(message, "From") or ""
        parsed_name, parsed_address = parseaddr(decode_header_text(raw, "the From header", notes))
        name = parsed_name or None
        address = address or (parsed_address if "@" in parsed_address else None)
    return (name.strip() or None) if name else None, address


def _addresses(message: EmailMessage, name: str) -> list[str]:
    header = message.get(name)
    found = []
    for address in getattr(header, "addresses", ()) if header is not None else ():
        if address.username and address.domain:
            found.append(address.addr_spec.lower())
    return found


def _ids(value: object) -> tuple[str, ...]:
    return tuple(dict.fromkeys(_MESSAGE_ID.findall(str(value)))) if value is not None else ()


def _first_id(value: object) -> str | None:
    if value is None:
        return None
    found = _ids(value)
    if found:
        return found[0]
    bare = str(value).strip()
    # Some senders omit the angle brackets; anything without spaces still identifies the message.
    return f"<{bare}>" if bare and not re.search(r"\s", bare) else None


def _is_automated(message: EmailMessage) -> bool:
    """Bounces, auto-replies and list mail, which must never get an automatic answer (RFC 3834)."""
    auto_submitted = str(message.get("Auto-Submitted", "no")).strip().lower()
    precedence = str(message.get("Precedence", "")).strip().lower()
    return (
        auto_submitted != "no"
        or precedence in ("bulk", "junk", "list", "auto_reply")
        or message.get("List-Id") is not None
        or message.get("X-Autoreply") is not None
        or message.get("X-Autorespond") is not None
    )


def _content_digest(raw: bytes) -> str:
    # Of the body only: a sender's server that retries a message may add trace headers to it.
    separator = re.search(rb"\r?\n\r?\n", raw)
    body = raw[separator.end() :] if separator else raw
    return hashlib.sha256(body).hexdigest()


# --- charsets ----------------------------------------------------------------------------


def _codec(charset: str) -> codecs.CodecInfo | None:
    name = charset.strip().strip('"').lower()
    try:
        codec = codecs.lookup(email.charset.ALIASES.get(name, name))
    except LookupError:
        return None
    # 'base64', 'rot13', 'zlib'... are codecs too, but not character sets.
    return codec if getattr(codec, "_is_text_encoding", True) else None


def decode_text(content: bytes, charset: str | None, what: str, notes: list[str]) -> str:
    """Bytes to text, honestly: a best-effort reading is recorded in ``notes``.

    * no charset declared: UTF-8 if it is valid UTF-8 (plain ASCII is), else Windows-1252
      (the usual unlabelled 8-bit text), noted;
    * a known charset: decoded with it; bytes invalid in it are replaced by U+FFFD, noted
      (declared US-ASCII with 8-bit text is read as UTF-8 or Windows-1252 instead);
    * an unknown charset: read as UTF-8 if it is valid UTF-8, noted; otherwise the text cannot
      be read and ``MalformedEmail`` says so.
    """
    if charset is None:
        return _unlabelled(content, what, notes, declared=None)
    codec = _codec(charset)
    if codec is None:
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedEmail(
                f"{_capital(what)} declares charset {charset!r}, which is not a known character set, and "
                "it is not valid UTF-8 either, so it cannot be read; send it as UTF-8 "
                "(or another standard charset such as ISO-8859-1)."
            ) from None
        notes.append(
            f"{_capital(what)} declared the unknown charset {charset!r}; it was valid UTF-8 and was read as such."
        )
        return text
    try:
        return content.decode(codec.name)
    except UnicodeDecodeError:
        pass
    if codec.name in _ASCII_CHARSETS:
        return _unlabelled(content, what, notes, declared=charset)
    text = content.decode(codec.name, errors="replace")
    notes.append(
        f"{_capital(what)} was not valid {charset}; {text.count(chr(0xFFFD))} undecodable "
        "character(s) were replaced by \ufffd."
    )
    return text


def _unlabelled(content: bytes, what: str, notes: list[str], declared: str | None) -> str:
    try:
        text = content.decode("utf-8")
        if declared is not None:
            notes.append(f"{_capital(what)} declared {declared} but contains 8-bit text; it was read as UTF-8.")
        return text
    except UnicodeDecodeError:
        label = f"declared {declared} but is" if declared else "declares no charset and is"
        notes.append(f"{_capital(what)} {label} not UTF-8; it was read as Windows-1252.")
        return content.decode("windows-1252", errors="replace")


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def decode_header_text(raw: str, what: str, notes: list[str]) -> str:
    """A raw header value (with RFC 2047 encoded words and/or raw 8-bit bytes) to text.

    Used where the standard library had to give up on part of a header, so that the same
    charset rules as for the body apply and the repair is noted.
    """
    raw = _BETWEEN_ENCODED_WORDS.sub(r"\1\2", raw)  # whitespace between encoded words is not text
    pieces: list[str] = []
    position = 0
    for match in _ENCODED_WORD.finditer(raw):
        pieces.append(_raw_8bit(raw[position : match.start()], what, notes))
        charset, encoding, payload = match.groups()
        try:
            if encoding.upper() == "B":
                content = base64.b64decode(payload + "=" * (-len(payload) % 4))
            else:
                content = quopri.decodestring(
                    payload.replace("_", " ").encode("ascii", "surrogateescape"), header=False
                )
        except (ValueError, UnicodeError):
            pieces.append(match.group(0))
            notes.append(f"{_capital(what)} contains a damaged encoded word, kept as it was.")
        else:
            pieces.append(decode_text(content, charset, what, notes))
        position = match.end()
    pieces.append(_raw_8bit(raw[position:], what, notes))
    return "".join(pieces)


def _raw_8bit(text: str, what: str, notes: list[str]) -> str:
    if not _damaged(text):
        return text
    content = text.encode("utf-8", "surrogateescape")
    return _unlabelled(content, what, notes, declared=None) if not content.isascii() else text


# --- HTML --------------------------------------------------------------------------------


_SKIP_TAGS = frozenset({"script", "style", "head", "title", "template", "noscript"})
_BLOCK_TAGS = frozenset(
    {
        "p",
        "div",
        "section",
        "article",
        "header",
        "footer",
        "table",
        "tr",
        "ul",
        "ol",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "blockquote",
        "pre",
        "hr",
        "address",
        "dl",
        "dt",
        "dd",
        "form",
    }
)


_PRE_SPACE, _PRE_TAB = "\ue000", "\ue001"  # private-use characters, never in real text


class _ReadableText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._out: list[str] = []
        self._skipping = 0
        self._pre = 0
        self._links: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self._skipping += 1
        elif tag == "br":
            self._out.append("\n")
        elif tag == "li":
            self._out.append("\n- ")
        elif tag in ("td", "th"):
            self._out.append(" \t")
        elif tag in _BLOCK_TAGS:
            self._out.append("\n\n" if tag in ("p", "h1", "h2", "h3", "table", "blockquote") else "\n")
            if tag == "pre":
                self._pre += 1
        if tag == "a":
            self._links.append(dict(attrs).get("href"))
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt:
                self._out.append(f"[{alt}]")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self._skipping = max(0, self._skipping - 1)
        elif tag == "pre":
            self._pre = max(0, self._pre - 1)
            self._out.append("\n")
        elif tag in _BLOCK_TAGS:
            self._out.append("\n")
        elif tag == "a" and self._links:
            href = self._links.pop()
            # Show where a link goes when its text does not (customers paste error page links).
            if href and href.startswith(("http://", "https://")) and href not in "".join(self._out[-3:]):
                self._out.append(f" <{href}>")

    def handle_data(self, data: str) -> None:
        if self._skipping:
            return
        if self._pre:
            # Spaces in <pre> (log lines, stack traces) are content: hide them from the tidying below.
            self._out.append(data.replace(" ", _PRE_SPACE).replace("\t", _PRE_TAB))
        else:
            self._out.append(re.sub(r"\s+", " ", data))

    def text(self) -> str:
        lines = [line.strip(" \t") for line in "".join(self._out).replace("\xa0", " ").split("\n")]
        text = "\n".join(re.sub(r"[ \t]{2,}", " ", line) for line in lines)
        text = re.sub(r"\n{3,}", "\n\n", text).strip()
        return text.replace(_PRE_SPACE, " ").replace(_PRE_TAB, "\t")


def html_to_text(html: str) -> str:
    """Readable plain text from an HTML email body: paragraphs, lists, links; no markup."""
    reader = _ReadableText()
    reader.feed(html)
    reader.close()
    return reader.text()
