"""The operators' view of one incident, folded from every service's events about it.

Built only from events, safe against order: each event becomes a timeline entry (deduplicated by
event id), and the view's fields are recomputed by folding the entries in event-time order, so a
triage event that arrives before the incident's report (different topics) still ends right. The
same fold rebuilds the view from Kafka after the read model was dropped.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aftercare.events.envelope import Envelope
from aftercare.events.incidents import (
    IncidentAcknowledged,
    IncidentClosed,
    IncidentReopened,
    IncidentReported,
    IncidentResolved,
    IncidentUpdated,
)
from aftercare.events.notifications import NotificationFailed, NotificationSent
from aftercare.events.remediation import (
    ApprovalGranted,
    ApprovalRejected,
    ApprovalRequested,
    IncidentEscalated,
    RemediationFailed,
    RemediationStarted,
    RemediationStepCompleted,
    RemediationSucceeded,
)
from aftercare.events.triage import DiagnosisCompleted, IncidentGrouped, IncidentTriaged

MAX_ENTRIES = 300
OPEN_STATUSES = ("reported", "acknowledged", "triaged", "remediating", "reopened", "escalated")

_STATUS_AFTER: dict[type[Any], str] = {
    IncidentReported: "reported",
    IncidentAcknowledged: "acknowledged",
    IncidentTriaged: "triaged",
    RemediationStarted: "remediating",
    IncidentEscalated: "escalated",
    IncidentResolved: "resolved",
    IncidentReopened: "reopened",
    IncidentClosed: "closed",
}


def _summary(data: Any) -> str:
    match data:
        case IncidentReported():
            return f"reported via {data.channel.value}: {data.title}"
        case IncidentUpdated():
            return f"{data.kind} ({data.occurrence_count}x){': ' + data.message[:120] if data.message else ''}"
        case IncidentAcknowledged():
            return f"acknowledged by {data.by}"
        case IncidentGrouped():
            return f"same problem as {data.duplicate_of_number}: {data.detail or data.reason}"
        case IncidentTriaged():
            return f"triaged {data.priority.value} {data.category}" + (f" (rule {data.rule})" if data.rule else "")
        case DiagnosisCompleted():
            healthy = sum(1 for r in data.results if r.healthy)
            return f"diagnosis: {data.conclusion or 'no conclusion'} ({healthy}/{len(data.results)} probes healthy)"
        case RemediationStarted():
            return f"remediation started: runbook {data.runbook}"
        case RemediationStepCompleted():
            return f"step {data.step_index + 1} {data.step}: {data.outcome}"
        case ApprovalRequested():
            return f"approval requested for {data.step}: {data.reason}"
        case ApprovalGranted():
            return f"approved by {data.by}"
        case ApprovalRejected():
            return f"rejected by {data.by}: {data.reason}"
        case RemediationSucceeded():
            return f"remediation succeeded: {data.verification}"
        case RemediationFailed():
            return f"remediation failed: {data.error}"
        case IncidentEscalated():
            return f"escalated (level {data.level}) to {data.escalated_to or 'on-call'}: {data.reason}"
        case IncidentResolved():
            return f"resolved by {data.by}{': ' + data.resolution if data.resolution else ''}"
        case IncidentReopened():
            return f"reopened by {data.by}: {data.reason}"
        case IncidentClosed():
            return f"closed by {data.by}"
        case NotificationSent():
            return f"{data.template} sent by {data.channel.value} to {data.recipient}"
        case NotificationFailed():
            return f"{data.template} by {data.channel.value} to {data.recipient} failed: {data.error}"
    return type(data).__name__


def entry_of(envelope: Envelope[Any]) -> dict[str, Any]:
    """The timeline entry an event becomes (flat values only: the store takes no nested arrays)."""
    data = envelope.data
    fields: dict[str, Any] = {}
    match data:
        case IncidentReported():
            fields = {
                "number": data.number,
                "title": data.title,
                "channel": data.channel.value,
                "severity": data.severity.value,
                "system": data.system,
                "reported_at": data.reported_at,
            }
        case IncidentTriaged():
            fields = {
                "number": data.number,
                "priority": data.priority.value,
                "category": data.category,
                "response_due_at": data.response_due_at,
                "resolution_due_at": data.resolution_due_at,
                "hold_paging": data.hold_paging,
            }
        case DiagnosisCompleted():
            fields = {
                "verdict": data.conclusion or ("healthy" if all(r.healthy for r in data.results) else "unhealthy")
            }
        case ApprovalRequested():
            fields = {
                "approval_id": data.approval_id,
                "run_id": data.run_id,
                "step": data.step,
                "reason": data.reason,
                "expires_at": data.expires_at,
            }
        case ApprovalGranted() | ApprovalRejected():
            fields = {"approval_id": data.approval_id}
        case IncidentGrouped():
            fields = {"duplicate_of_number": data.duplicate_of_number}
        case IncidentAcknowledged() | IncidentResolved() | IncidentReopened() | IncidentClosed():
            fields = {"number": data.number}
    return {
        "event_id": envelope.id,
        "trace_id": trace_id_of(envelope.traceparent),
        "type": envelope.type,
        "source": envelope.source,
        "time": envelope.time,
        "summary": _summary(data),
        "status": _STATUS_AFTER.get(type(data)),
        "fields": fields,
    }


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id in a W3C ``traceparent`` (``00-<32 hex>-<16 hex>-<flags>``), if valid."""
    parts = (traceparent or "").split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or parts[1] == "0" * 32:
        return None
    try:
        int(parts[1], 16)
    except ValueError:
        return None
    return parts[1]


def add_entry(entries: list[dict[str, Any]], entry: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The timeline with ``entry`` in event-time order; None if it is there already (redelivery)."""
    if any(existing["event_id"] == entry["event_id"] for existing in entries):
        return None
    merged = sorted([*entries, entry], key=lambda e: (e["time"], e["event_id"]))
    if len(merged) > MAX_ENTRIES:
        # Keep the report and the latest history; repeated occurrences are what piles up.
        merged = merged[:1] + merged[-(MAX_ENTRIES - 1) :]
    return merged


def fold(incident_id: str, tenant_id: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The incident's current fields from its timeline (entries in event-time order)."""
    view: dict[str, Any] = {
        "incident_id": incident_id,
        "tenant_id": tenant_id,
        "number": None,
        "title": None,
        "channel": None,
        "severity": None,
        "system": None,
        "priority": None,
        "category": None,
        "status": "unknown",
        "reported_at": None,
        "response_due_at": None,
        "resolution_due_at": None,
        "verdict": None,
        "resolved_at": None,
        "notifications_sent": 0,
        "notifications_failed": 0,
        "trace_id": None,
        "hold_paging": False,
    }
    approvals: dict[str, dict[str, Any]] = {}
    for entry in entries:
        fields = entry.get("fields") or {}
        for name in ("number", "title", "channel", "severity", "system", "reported_at", "priority", "category"):
            if fields.get(name) is not None:
                view[name] = fields[name]
        for name in ("response_due_at", "resolution_due_at", "verdict", "hold_paging"):
            if name in fields:
                view[name] = fields[name]
        # The incident's trace is the one its report started; later events continue it.
        if view["trace_id"] is None and entry.get("trace_id"):
            view["trace_id"] = entry["trace_id"]
        if entry.get("status"):
            view["status"] = entry["status"]
            view["resolved_at"] = entry["time"] if entry["status"] in ("resolved", "closed") else None
        if entry["type"] == ApprovalRequested.TYPE:
            approvals[fields["approval_id"]] = dict(fields)
        elif entry["type"] in (ApprovalGranted.TYPE, ApprovalRejected.TYPE):
            approvals.pop(fields.get("approval_id", ""), None)
        elif entry["type"] == NotificationSent.TYPE:
            view["notifications_sent"] += 1
        elif entry["type"] == NotificationFailed.TYPE:
            view["notifications_failed"] += 1
    view["pending_approvals"] = list(approvals.values())
    view["updated_at"] = entries[-1]["time"] if entries else None
    return view


def is_open(view: dict[str, Any]) -> bool:
    return view.get("status") in OPEN_STATUSES


def sla_state(view: dict[str, Any], now: datetime) -> tuple[str, float | None]:
    """('met' | 'running' | 'breached' | 'none', seconds left) for the resolution deadline."""
    due = view.get("resolution_due_at") or view.get("response_due_at")
    if due is None:
        return "none", None
    if not is_open(view):
        resolved = view.get("resolved_at")
        return ("met" if resolved is None or resolved <= due else "breached"), None
    left = (due - now).total_seconds()
    return ("running" if left >= 0 else "breached"), left


def opened_per_hour(views: list[dict[str, Any]], now: datetime, hours: int = 24) -> dict[str, list[int]]:
    """Per tenant, how many incidents were reported in each of the last ``hours`` hours, oldest
    hour first (the dashboard's sparklines)."""
    counts: dict[str, list[int]] = {}
    for view in views:
        reported = view.get("reported_at")
        if not isinstance(reported, datetime):
            continue
        age = (now - reported).total_seconds() // 3600
        if not 0 <= age < hours:
            continue
        series = counts.setdefault(str(view.get("tenant_id")), [0] * hours)
        series[hours - 1 - int(age)] += 1
    return dict(sorted(counts.items()))


def row_json(view: dict[str, Any], now: datetime) -> dict[str, Any]:
    """An incident as a row of the operators' list (page and live stream alike)."""
    state, left = sla_state(view, now)
    due = view.get("resolution_due_at") or view.get("response_due_at")
    return {
        "incident_id": view["incident_id"],
        "number": view.get("number") or "",
        "tenant_id": view.get("tenant_id"),
        "title": view.get("title") or "",
        "priority": view.get("priority") or "",
        "status": view.get("status"),
        "channel": view.get("channel") or "",
        "verdict": view.get("verdict") or "",
        "sla": state,
        "sla_due": due.isoformat() if isinstance(due, datetime) else None,
        "sla_left_s": left,
        "notifications_sent": view.get("notifications_sent", 0),
        "approvals": pending_approvals(view),
    }


def pending_approvals(view: dict[str, Any]) -> list[dict[str, Any]]:
    """The incident's runs waiting for a person, as the dashboard lists them."""
    return [
        {
            "approval_id": approval.get("approval_id"),
            "run_id": approval.get("run_id"),
            "step": approval.get("step"),
            "reason": approval.get("reason"),
            "incident_id": view.get("incident_id"),
            "number": view.get("number") or "",
        }
        for approval in view.get("pending_approvals") or []
    ]
