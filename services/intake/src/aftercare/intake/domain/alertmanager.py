"""Prometheus Alertmanager webhook messages (payload version 4) and the incidents their alerts become.

Alertmanager sends every alert of a group in each notification, firing and resolved, and sends
them again each repeat interval. Each alert is one incident, found by its fingerprint (dedup key
``alertmanager:<fingerprint>``): a firing alert opens it or adds an occurrence, a resolved alert
resolves it. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from aftercare.events.incidents import Channel, Reporter, Severity
from aftercare.intake.domain import field_limits as limits
from aftercare.intake.domain.field_limits import FieldTooLong
from aftercare.intake.domain.incident import IncidentReport
from aftercare.intake.domain.moments import in_utc
from aftercare.intake.domain.pagerduty import clean_text, storable, storable_key

SUPPORTED_VERSION = "4"
DEDUP_PREFIX = "alertmanager:"
ACTOR = "alertmanager"
# Alertmanager sends every alert of a group in one notification and retries only on 5xx, so a
# mass outage's group must be taken whole: at least 10,000 alerts (its own limits decide).
MAX_ALERTS = 50_000
MAX_TITLE_CHARS = limits.SUMMARY_CHARS
MAX_DESCRIPTION_CHARS = limits.DESCRIPTION_CHARS
# A Prometheus generator URL carries the alert's whole PromQL expression; beyond this it is not one.
MAX_GENERATOR_URL_CHARS = 16_384

# Severity label values seen in the wild (Prometheus rules, kube-prometheus, Grafana) and what they
# mean here; anything else is "error", as the issue asks: loud enough to be looked at.
_SEVERITIES = {
    Severity.CRITICAL: ("critical", "crit", "page", "emergency", "fatal", "disaster", "p1", "sev1"),
    Severity.ERROR: ("error", "err", "high", "major", "p2", "sev2"),
    Severity.WARNING: ("warning", "warn", "medium", "minor", "average", "p3", "sev3"),
    Severity.INFO: ("info", "informational", "information", "notice", "low", "none", "ok", "p4", "p5", "sev4", "sev5"),
}
_SEVERITY_OF = {word: severity for severity, words in _SEVERITIES.items() for word in words}


class AlertStatus(StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"


class Alert(BaseModel):
    """One alert of a notification (field names are Alertmanager's, camelCase included)."""

    model_config = ConfigDict(extra="ignore")

    status: AlertStatus
    labels: dict[str, str] = Field(min_length=1, description="Identify the alert; alertname at least.")
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime | None = None
    endsAt: datetime | None = None
    generatorURL: str = ""
    fingerprint: str | None = Field(
        default=None, min_length=1, max_length=200, description="Alertmanager's id of the label set (sent since 0.19)."
    )


class WebhookMessage(BaseModel):
    """The body Alertmanager's webhook receiver POSTs (payload version 4)."""

    model_config = ConfigDict(extra="ignore")

    version: Literal["4"] = Field(description="Payload version; only '4' is understood.")
    groupKey: str = ""
    truncatedAlerts: int = Field(default=0, ge=0)
    status: AlertStatus
    receiver: str = ""
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    externalURL: str = ""
    alerts: list[Alert] = Field(max_length=MAX_ALERTS)


def version_problem(document: dict[str, Any]) -> str | None:
    """Why the message's version is not one this endpoint reads, or None if it is (or is missing)."""
    version = document.get("version")
    if version is None or str(version) == SUPPORTED_VERSION:
        return None
    return (
        f"This endpoint reads Alertmanager webhook payload version {SUPPORTED_VERSION}; the message says "
        f"version {str(version)[:40]!r}. Point a webhook receiver of a current Alertmanager here (they send "
        f"version {SUPPORTED_VERSION}), or send that format"
    )


def normalised(document: dict[str, Any]) -> dict[str, Any]:
    """Alertmanager sends the version as a string; accept the number 4 as well."""
    if document.get("version") == int(SUPPORTED_VERSION):
        return document | {"version": SUPPORTED_VERSION}
    return document


def fingerprint(alert: Alert) -> str:
    """Alertmanager's fingerprint, or (older releases send none) a stable hash of the label set."""
    if alert.fingerprint:
        return alert.fingerprint
    canonical = "\x1f".join(f"{name}\x1e{value}" for name, value in sorted(alert.labels.items()))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def field_problems(alert: Alert, index: int) -> list[FieldTooLong]:
    """What of an alert is over the limits of ``field_limits`` (it identifies the alert, so it is
    refused rather than cut); annotations are prose and are cut instead (see ``kept_annotations``)."""
    prefix = f"alerts[{index}]"
    problems = limits.label_problems(alert.labels, f"{prefix}.labels", most=limits.ALERT_LABELS)
    url = limits.too_long(f"{prefix}.generatorURL", alert.generatorURL, MAX_GENERATOR_URL_CHARS)
    return problems + ([url] if url else [])


def kept_annotations(alert: Alert) -> dict[str, str]:
    """The annotations kept with the incident: at most ``ANNOTATIONS``, each cut at ``ANNOTATION_CHARS``."""
    kept = {
        limits.cut(name, limits.LABEL_NAME_CHARS): limits.cut(value, limits.ANNOTATION_CHARS)
        for name, value in list(alert.annotations.items())[: limits.ANNOTATIONS]
    }
    dropped = len(alert.annotations) - len(kept)
    if dropped > 0:
        kept["aftercare_note"] = f"{dropped} more annotations were not kept (at most {limits.ANNOTATIONS})"
    return kept


def sighting(alert: Alert) -> str | None:
    """One firing of the alert: its fingerprint and start. Alertmanager repeats a firing in every
    notification of its group (and an HA pair sends each one twice); it is one occurrence."""
    started = real_time(alert.startsAt)
    return f"{fingerprint(alert)}@{started.isoformat()}" if started else None


def dedup_key(alert: Alert) -> str:
    return DEDUP_PREFIX + clean_text(fingerprint(alert))


def severity(labels: dict[str, str]) -> Severity:
    return _SEVERITY_OF.get(labels.get("severity", "").strip().lower(), Severity.ERROR)


def title(alert: Alert) -> str:
    text = (
        alert.annotations.get("summary")
        or alert.annotations.get("title")
        or alert.labels.get("alertname")
        or "Alert from Alertmanager"
    ).strip() or "Alert from Alertmanager"
    text = " ".join(text.split())  # a title is one line; templates often leave newlines in
    return clean_text(text if len(text) <= MAX_TITLE_CHARS else text[: MAX_TITLE_CHARS - 3] + "...")


def description(alert: Alert, message: WebhookMessage) -> str:
    parts = [alert.annotations.get("description") or alert.annotations.get("message") or ""]
    summary = alert.annotations.get("summary", "")
    if summary and len(" ".join(summary.split())) > MAX_TITLE_CHARS:
        parts.insert(0, summary)  # the title had to be cut: keep the whole text here
    links = [
        f"Source: {alert.generatorURL}" if alert.generatorURL else "",
        f"Runbook: {alert.annotations['runbook_url']}" if alert.annotations.get("runbook_url") else "",
        f"Alertmanager: {message.externalURL}" if message.externalURL else "",
    ]
    text = "\n\n".join(part for part in [*parts, "\n".join(link for link in links if link)] if part.strip())
    if len(text) > MAX_DESCRIPTION_CHARS:
        text = text[: MAX_DESCRIPTION_CHARS - 3] + "..."
    return clean_text(text)


def real_time(moment: datetime | None) -> datetime | None:
    """Alertmanager's timestamps, without its "zero time" (0001-01-01) for an end not yet known."""
    if moment is None or moment.year <= 1:
        return None
    try:
        return in_utc(moment)
    except ValueError:  # outside the calendar in UTC: as unknown as the zero time
        return None


def incident_report(alert: Alert, message: WebhookMessage, *, first_time: bool) -> IncidentReport:
    """What a firing alert reports. ``first_time``: no open incident yet, so its start time is the
    incident's first sighting; on a repeat the sighting is now (startsAt stays the original start)."""
    return IncidentReport(
        title=title(alert),
        description=description(alert, message),
        channel=Channel.ALERTMANAGER,
        severity=severity(alert.labels),
        reporter=Reporter(
            system=clean_text(
                limits.cut(f"alertmanager/{message.receiver}", limits.NAME_CHARS) if message.receiver else ACTOR
            )
        ),
        source=clean_text(alert.labels["instance"]) if alert.labels.get("instance") else None,
        dedup_key=dedup_key(alert),
        labels=storable_labels(alert.labels),
        occurred_at=real_time(alert.startsAt) if first_time else None,
        sighting=sighting(alert),
        details={
            "alertmanager": storable(
                {
                    "fingerprint": fingerprint(alert),
                    "annotations": kept_annotations(alert),
                    "generator_url": alert.generatorURL or None,
                    "starts_at": real_time(alert.startsAt),
                    "group_key": limits.cut(message.groupKey, limits.LABEL_VALUE_CHARS) or None,
                    "receiver": limits.cut(message.receiver, limits.NAME_CHARS) or None,
                    "external_url": limits.cut(message.externalURL, limits.URL_CHARS) or None,
                }
            )
        },
    )


def storable_labels(labels: dict[str, str]) -> dict[str, str]:
    """Labels as the store keeps them (Prometheus 3 allows dots in label names; the store does not)."""
    return {storable_key(name): clean_text(value) for name, value in labels.items()}


def resolution(alert: Alert) -> str:
    ended = real_time(alert.endsAt)
    return "Alertmanager reports the alert resolved" + (f" (ended {ended.isoformat()})" if ended else "")
