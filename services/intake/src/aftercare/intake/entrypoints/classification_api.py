"""Operators' corrections of an incident: set its priority or category by hand.

Operators (the support company's people, ``responder`` role or higher, with their API token)
rather than the customer's API key: the priority decides the SLA and who is paged, so it is
the support company's call. The person's choice is kept over every later triage.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, model_validator

from aftercare.events.operators import Operator, require_role
from aftercare.events.tenants import Priority
from aftercare.events.web import Problem
from aftercare.intake.adapters.incident_store import IncidentNotFound
from aftercare.intake.domain.classification import ReclassifyRefused
from aftercare.intake.domain.incident import Incident
from aftercare.intake.entrypoints.dependencies import Components
from aftercare.intake.service_layer.reclassify_incident import reclassify

router = APIRouter(prefix="/v1/incidents", tags=["operators: incidents"])

Responder = Annotated[Operator, Depends(require_role("responder"))]

PROBLEMS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Invalid JSON"},
    401: {"description": "Missing or unknown operator token"},
    403: {"description": "Role too low (responder needed) or operator deactivated"},
    404: {"description": "No such incident, or not one of the operator's tenants"},
    409: {"description": "The incident is closed"},
    422: {"description": "Missing or wrong fields"},
}

Category = Literal["database", "network", "application", "hardware", "security", "performance", "access", "other"]


class Reclassification(BaseModel):
    """A person's priority and/or category for an incident; triage keeps them from now on."""

    model_config = ConfigDict(extra="forbid")

    priority: Priority | None = Field(default=None, description="P1 (most urgent) to P5.")
    category: Category | None = Field(default=None, description="The kind of problem.")
    reason: str = Field(default="", max_length=1000, description="Why, for the timeline and triage's explanation.")

    @model_validator(mode="after")
    def _names_something(self) -> Reclassification:
        if self.priority is None and self.category is None:
            raise ValueError("send 'priority', 'category' or both")
        return self


@router.post("/{incident_id}/reclassify", response_model=Incident, responses=PROBLEMS)
async def reclassify_incident(
    incident_id: str, body: Reclassification, intake: Components, operator: Responder
) -> Incident:
    """Set the incident's priority and/or category by hand (operator token, responder or higher).

    Recorded on the incident's timeline with who did it, announced as IncidentReclassified, and
    never overwritten by triage afterwards. Sending the same choice again changes nothing.
    """
    not_found = Problem(
        404,
        "Incident not found",
        f"No incident {incident_id} among the tenants operator '{operator.operator_id}' may see.",
        kind="incident-not-found",
    )
    tenant_id = await intake.incidents.tenant_of(incident_id)
    if tenant_id is None or not operator.may_see(tenant_id):
        raise not_found
    try:
        outcome = await reclassify(
            intake.incidents,
            tenant_id,
            incident_id,
            priority=body.priority,
            category=body.category,
            by=operator.email,
            reason=body.reason,
        )
    except IncidentNotFound:
        raise not_found from None
    except ReclassifyRefused as refused:
        raise Problem(409, "Not possible now", str(refused), kind="reclassify-refused") from None
    return outcome.incident
