"""The customer web form's rules: which incident a submission opens, and what counts as sending
the same form twice.

The form carries a random one-time ``form_token``. The incident id is derived from it (UUIDv5
of tenant and token), so pressing "Send" twice, or the browser re-posting, leads to the same
incident. The id is derived rather than taken as sent so a chosen token can never name another
tenant's incident. A *different* report sent with a token already used (a form kept open in a
second tab, given another title and sent again) is not the same submission: it must not
vanish into the first incident.
"""

from __future__ import annotations

import uuid

from aftercare.intake.domain.incident import Incident, IncidentReport

PORTAL_NAMESPACE = uuid.UUID("7c0b7f0e-4d51-4d7e-9c7a-0f2a3d6b1e55")


def incident_id_for(tenant_id: str, form_token: str) -> str:
    """The incident a form submission opens: the same for the same form, per tenant only."""
    return str(uuid.uuid5(PORTAL_NAMESPACE, f"{tenant_id}|{form_token}"))


def same_submission(incident: Incident, report: IncidentReport) -> bool:
    """Whether ``report`` is the form that opened ``incident`` sent again (not a new report).

    The same person and the same one-line title: a browser's resend, even after a word of the
    description was changed, is still the report already received. Another title is another
    problem.
    """
    return incident.title == report.title and incident.reporter == report.reporter
