"""Impact in the customer's words (the web form's choice) and the severity it means for triage."""

from __future__ import annotations

from aftercare.events.incidents import Severity

IMPACTS: dict[str, tuple[str, Severity]] = {
    "down": ("We cannot work: it is down or unusable", Severity.CRITICAL),
    "degraded": ("Something important is broken or very slow", Severity.ERROR),
    "minor": ("A minor problem; we can work around it", Severity.WARNING),
    "question": ("A question or a request", Severity.INFO),
}


def severity_for(impact: str) -> Severity:
    """The severity of an impact the form offers; KeyError for one it does not."""
    return IMPACTS[impact][1]


def impact_words(impact: str) -> str:
    """The impact as the customer chose it, kept with the incident."""
    return IMPACTS[impact][0]
