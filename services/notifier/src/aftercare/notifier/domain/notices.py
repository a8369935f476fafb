"""What a customer should hear about, decided from the events of an incident's life.

A *notice* is one customer-facing message ("we received INC-1042", "INC-1042 is resolved"),
before anyone decides who gets it on which channel. Its ``notice_id`` is what makes it once-only:
the same notice for the same contact on the same channel is the same delivery, however often the
event behind it is redelivered.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from aftercare.events.envelope import Envelope
from aftercare.events.incidents import Channel, IncidentReported, IncidentResolved
from aftercare.events.notifications import NotificationRequested
from aftercare.events.remediation import IncidentEscalated, RemediationStarted
from aftercare.events.tenants import Priority
from aftercare.events.triage import DiagnosisCompleted, IncidentGrouped, IncidentTriaged


class NoticeKind(StrEnum):
    """The customer-facing messages, named as their templates are."""

    RECEIVED = "incident-received"
    UPDATED = "incident-updated"  # intake's acknowledgement of a reply that joined an incident
    TRIAGED = "incident-triaged"
    DIAGNOSED = "diagnosis-confirmed"
    REMEDIATING = "remediation-started"
    RESOLVED = "incident-resolved"
    ESCALATED = "incident-escalated"
    ON_CALL_PAGE = "on-call-page"  # to the support company's on-call people, not the customer
    PERIODIC = "incident-periodic-update"
    ADVISORY = "advisory-published"
    DIGEST = "digest"
    KNOWN = "incident-known"  # a report of a problem already being worked on under another number


# Never held by quiet hours nor spaced by throttling: the customer is waiting for exactly these.
URGENT_KINDS = frozenset({NoticeKind.RESOLVED, NoticeKind.ESCALATED, NoticeKind.ON_CALL_PAGE})
# Progress updates: at most one per incident per throttle window, per contact and channel.
THROTTLED_KINDS = frozenset({NoticeKind.TRIAGED, NoticeKind.DIAGNOSED, NoticeKind.REMEDIATING, NoticeKind.PERIODIC})
# Direct answers to a person who wrote to us: sent at once to that person.
DIRECT_KINDS = frozenset({NoticeKind.RECEIVED, NoticeKind.UPDATED, NoticeKind.KNOWN})


@dataclass(frozen=True)
class Notice:
    kind: NoticeKind
    notice_id: str
    tenant_id: str
    incident_id: str | None
    about_event_id: str
    priority: Priority | None = None
    context: dict[str, str] = field(default_factory=dict)
    # Set for messages addressed to one person (intake's acknowledgements), not to the contacts.
    recipient: str | None = None
    language: str | None = None
    subject: str | None = None
    in_reply_to: str | None = None
    # A reported email's sender: intake acknowledges it in the sender's own thread
    # (NotificationRequested), so the contacts' "received" leaves that address's email to it.
    # Both are one delivery key; planned from this notice first, the sender's copy lost its
    # subject and In-Reply-To (the two events travel on different topics, in either order).
    acknowledged_by_intake: str | None = None


def received_notice_id(incident_id: str) -> str:
    # Intake's acknowledgement and our own "received" to the same address are one message.
    return f"{incident_id}:received"


def known_notice_id(duplicate_incident_id: str) -> str:
    # Triage's "already known" to the person who wrote and ours to the contacts, for one grouped
    # report, are one message to an address that gets both.
    return f"{duplicate_incident_id}:known"


# Channels whose reporter has no email address triage could answer, so the tenant's contacts are
# told that the report is known (as they got its "received"): a phone call. Reports by email
# or web form are answered by triage's own request to the person who wrote.
TELL_CONTACTS_KNOWN = frozenset({"phone"})


def notice_for(envelope: Envelope[Any], incident: dict[str, Any] | None) -> Notice | None:
    """The notice an event calls for, or None. ``incident`` is the read model's view (number,
    title, priority), since e.g. remediation events do not carry the incident's number."""
    data = envelope.data
    view = incident or {}
    priority = Priority(view["priority"]) if view.get("priority") else None
    base: dict[str, str] = {
        "number": str(view.get("number") or getattr(data, "number", "") or ""),
        "title": str(view.get("title") or ""),
        "priority": priority.value if priority else "",
    }
    tenant, incident_id = envelope.tenant_id, envelope.incident_id

    def make(kind: NoticeKind, notice_id: str | None = None, **context: str) -> Notice:
        return Notice(
            kind=kind,
            notice_id=notice_id or f"{envelope.id}:{kind.value}",
            tenant_id=tenant,
            incident_id=incident_id,
            about_event_id=envelope.id,
            priority=priority,
            context=base | context,
        )

    if isinstance(data, NotificationRequested):
        kind = NoticeKind(data.template) if data.template in NoticeKind._value2member_map_ else NoticeKind.UPDATED
        context = dict(data.context)
        if kind is NoticeKind.RECEIVED and data.incident_id:
            notice_id = received_notice_id(data.incident_id)
        elif kind is NoticeKind.KNOWN and context.get("your_incident_id"):
            notice_id = known_notice_id(context["your_incident_id"])
        else:
            notice_id = f"requested:{data.notification_id}"
        if kind is NoticeKind.KNOWN:
            # Triage's request is in the known incident's thread: "number" is that one's.
            context = context | {"known_number": context.get("number", ""), "number": context.get("your_number", "")}
        return Notice(
            kind=kind,
            notice_id=notice_id,
            tenant_id=tenant,
            incident_id=data.incident_id,
            about_event_id=envelope.id,
            priority=priority,
            context=base | {k: v for k, v in context.items() if k != "status_url"},
            recipient=data.recipient,
            language=data.language,
            subject=data.subject,
            in_reply_to=data.in_reply_to,
        )
    if incident_id is None:
        return None
    if isinstance(data, IncidentReported):
        received = make(NoticeKind.RECEIVED, received_notice_id(incident_id), number=data.number, title=data.title)
        if data.channel is Channel.EMAIL and data.reporter.email:
            return dataclasses.replace(received, acknowledged_by_intake=data.reporter.email)
        return received
    if isinstance(data, IncidentGrouped):
        if data.channel not in TELL_CONTACTS_KNOWN:
            return None
        return make(
            NoticeKind.KNOWN,
            known_notice_id(incident_id),
            number=data.number,
            known_number=data.duplicate_of_number,
            system=str(view.get("system") or ""),
        )
    if isinstance(data, IncidentTriaged):
        if data.duplicate_of:
            return None  # grouped into another incident: that one's messages carry the news
        due = data.response_due_at.isoformat() if data.response_due_at else ""
        return Notice(
            kind=NoticeKind.TRIAGED,
            notice_id=f"{envelope.id}:{NoticeKind.TRIAGED.value}",
            tenant_id=tenant,
            incident_id=incident_id,
            about_event_id=envelope.id,
            priority=data.priority,
            context=base | {"priority": data.priority.value, "category": data.category, "response_due_at": due},
        )
    if isinstance(data, DiagnosisCompleted):
        if not (data.suspected_cause or data.conclusion):
            return None  # nothing confirmed yet: no news for the customer
        return make(NoticeKind.DIAGNOSED, conclusion=data.conclusion, cause=data.suspected_cause or "")
    if isinstance(data, RemediationStarted):
        return make(NoticeKind.REMEDIATING, f"{incident_id}:remediation:{data.run_id}", runbook=data.runbook)
    if isinstance(data, IncidentResolved):
        # One "resolved" per resolution; a reopened and resolved-again incident is news again.
        return make(NoticeKind.RESOLVED, resolution=data.resolution, by=data.by)
    if isinstance(data, IncidentEscalated):
        return make(
            NoticeKind.ESCALATED,
            f"{incident_id}:escalated:{data.level}",
            reason=data.reason,
            escalated_to=data.escalated_to or "",
        )
    return None


def pages_for(envelope: Envelope[Any], incident: dict[str, Any] | None) -> list[Notice]:
    """The on-call pages an escalation calls for: one email per paged person of its level, each
    carrying the acknowledge link (a person who acknowledges stops the next level's page).

    Once per escalation, level and address, however often the event is redelivered; a person
    paged again at a later level of the same escalation is paged again, on purpose.
    """
    data = envelope.data
    if not isinstance(data, IncidentEscalated) or envelope.incident_id is None:
        return []
    view = incident or {}
    if view.get("hold_paging"):
        # Triage found its source flapping (opened and resolved again and again): the incident
        # stays escalated on the dashboard, but nobody is woken for it again.
        return []
    context = {
        "number": str(view.get("number") or ""),
        "title": str(view.get("title") or ""),
        "priority": str(view.get("priority") or ""),
        "reason": data.reason,
        "level": str(data.level),
        "escalated_to": data.escalated_to or "",
        "acknowledge_url": data.acknowledge_url or "",
        "acknowledge_by": data.acknowledge_by.isoformat() if data.acknowledge_by else "",
    }
    escalation = data.escalation_id or envelope.id
    return [
        Notice(
            kind=NoticeKind.ON_CALL_PAGE,
            notice_id=f"{escalation}:page:{data.level}:{contact.email.lower()}",
            tenant_id=envelope.tenant_id,
            incident_id=envelope.incident_id,
            about_event_id=envelope.id,
            context=context | {"contact_name": contact.name},
            recipient=contact.email,
        )
        for contact in data.contacts
        if contact.email
    ]
