"""What happens when a customer sends the web form: open the incident of the form's token, once."""

from __future__ import annotations

from aftercare.intake.adapters.incident_store import IncidentNotFound, IncidentStore
from aftercare.intake.domain.incident import Incident, IncidentReport
from aftercare.intake.domain.web_form import incident_id_for, same_submission
from aftercare.intake.service_layer.report_incident import Outcome, report


class FormAlreadyUsed(Exception):
    """The form's token opened another report already; this one was not sent."""

    def __init__(self, incident: Incident) -> None:
        super().__init__(incident.number)
        self.incident = incident


async def form_sent_before(store: IncidentStore, tenant_id: str, form_token: str) -> bool:
    """Whether this form (its token) opened an incident already."""
    return await store.tenant_of(incident_id_for(tenant_id, form_token)) == tenant_id


async def submit_web_form(store: IncidentStore, tenant_id: str, form_token: str, incident: IncidentReport) -> Outcome:
    """Open the form's incident; the same form sent again gives the same incident.

    Raises ``FormAlreadyUsed`` when the token already opened an incident with other content.
    """
    incident_id = incident_id_for(tenant_id, form_token)
    try:
        existing = await store.get(tenant_id, incident_id)
    except IncidentNotFound:
        return await report(store, tenant_id, incident, incident_id=incident_id)
    if same_submission(existing, incident):
        return Outcome(existing, created=False)
    raise FormAlreadyUsed(existing)
