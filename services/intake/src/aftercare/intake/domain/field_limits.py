"""How long each field a sender fills in may be, in every channel: the one place to read or change it.

Why bounded: every field of a report travels in the incident's events, and an event must stay
below Kafka's message limit (``aftercare.events.producer.MAX_MESSAGE_BYTES``, 1,000,000 bytes),
or the report is refused at the last line (``EventTooLarge``) after the sender typed it all.
Bounding each field at the door says *which* field to shorten instead. The limits are
generous for what a person or a monitoring tool writes: a title is one line, a name a name.

Each channel answers a field over its limit in its own way, naming the field and the limit:

=================  ========================================================================
JSON API           422 problem, one ``errors`` entry per field (``body.labels.<name>``, ...)
PagerDuty          400 in PagerDuty's format: ``errors: ["'payload.source' is too long ..."]``
Alertmanager       422 problem naming ``alerts[i].labels.<name>``; the other alerts are applied
phone (Twilio)     422 problem naming the parameter (``TranscriptionText``, ``CallerName``)
web form           the form again (422) with a message at the field
email (SMTP)       ``552 5.3.4`` naming the header (``Subject``, the sender's name)
whole request      413 (HTTP body over the service's limit; email over ``max_email_bytes``)
=================  ========================================================================

Where a protocol documents its own limit (PagerDuty's summary, 1,024 characters) that limit is
used, so a sender that works against the original works here.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# --- what a person or a tool writes about a problem --------------------------------------------

TITLE_CHARS = 300
"""A report's one-line title (JSON API, web form, an email's title taken from its subject)."""
SUMMARY_CHARS = 1024
"""PagerDuty's documented limit of ``payload.summary``; also Alertmanager titles (cut there)."""
DESCRIPTION_CHARS = 20_000
"""What happened, in words (JSON API, web form, a transcript, PagerDuty/Alertmanager text)."""
NOTE_CHARS = 5000
"""A note with a status move: acknowledgement note, resolution, reason to reopen or close."""
EMAIL_BODY_CHARS = 100_000
"""An email's text beyond this is cut (and the cut noted); a mail is not refused for its length."""

# --- who and where -----------------------------------------------------------------------------

NAME_CHARS = 200
"""A person's or system's name: reporter name, who moved an incident, caller name, system."""
EMAIL_ADDRESS_CHARS = 254
"""RFC 5321's longest forward path."""
PHONE_CHARS = 40
SOURCE_CHARS = 500
"""The host or component with the problem (JSON API)."""
PAGERDUTY_FIELD_CHARS = 1024
"""PagerDuty's ``source``, ``component``, ``group``, ``class``, ``client``, link texts and image alts."""
URL_CHARS = 2048
"""Links: ``client_url``, link ``href``, image ``src``/``href``, a recording URL."""
PAGERDUTY_LINKS = 50
"""Links (and images) on one PagerDuty event."""

# --- keys and labels ---------------------------------------------------------------------------

DEDUP_KEY_CHARS = 255
"""PagerDuty's documented ``dedup_key`` limit; the JSON API's ``dedup_key`` and Idempotency-Key too."""
LABELS = 50
"""Labels on one report (JSON API)."""
ALERT_LABELS = 100
"""Labels on one Alertmanager alert (Prometheus alerts carry their series' labels)."""
LABEL_NAME_CHARS = 256
LABEL_VALUE_CHARS = 1024
ANNOTATIONS = 50
"""Annotations kept per Alertmanager alert (further ones are dropped, with a note)."""
ANNOTATION_CHARS = 2000
"""An Alertmanager annotation kept with the incident is cut here (the description keeps up to
``DESCRIPTION_CHARS`` of the ``description`` annotation): annotations are prose for people."""

# --- email headers -----------------------------------------------------------------------------

SUBJECT_CHARS = 2000
"""An email's Subject (after decoding). RFC 5322 lines stop at 998 characters; a folded subject
longer than two such lines is not a subject a person wrote."""
MESSAGE_ID_CHARS = 998
"""Message-ID and each id of In-Reply-To/References: one RFC 5322 line."""


@dataclass(frozen=True)
class FieldTooLong:
    """A field over its limit: ``field`` as the sender names it, its length and the limit."""

    field: str
    length: int
    limit: int
    unit: str = "characters"

    def sentence(self) -> str:
        """What to change, for a person: names the field, its length and the limit."""
        if self.unit == "characters":
            return f"'{self.field}' is {self.length:,} characters long; at most {self.limit:,} are accepted"
        return f"'{self.field}' has {self.length:,} {self.unit}; at most {self.limit:,} are accepted"


def too_long(field: str, value: str | None, limit: int) -> FieldTooLong | None:
    """``value`` over ``limit`` characters, or None (also for no value)."""
    if value is None or len(value) <= limit:
        return None
    return FieldTooLong(field, len(value), limit)


def label_problems(
    labels: Mapping[str, str],
    prefix: str,
    *,
    most: int,
    name_chars: int = LABEL_NAME_CHARS,
    value_chars: int = LABEL_VALUE_CHARS,
    kind: str = "labels",
) -> list[FieldTooLong]:
    """Every way a set of labels is over its limits (how many; each name; each value)."""
    problems: list[FieldTooLong] = []
    if len(labels) > most:
        problems.append(FieldTooLong(prefix, len(labels), most, unit=kind))
    for name, value in labels.items():
        shown = name if len(name) <= 40 else name[:37] + "..."
        if len(name) > name_chars:
            problems.append(FieldTooLong(f"{prefix} name {shown}", len(name), name_chars))
        if isinstance(value, str) and len(value) > value_chars:
            problems.append(FieldTooLong(f"{prefix}.{shown}", len(value), value_chars))
    return problems


def cut(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, with an ellipsis where it was cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
