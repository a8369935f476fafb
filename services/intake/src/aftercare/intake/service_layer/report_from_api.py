"""What happens when a report arrives on the JSON API, with or without an Idempotency-Key.

With a key, the key is claimed first with the incident id allocated up front, and the incident
is then opened under that id: a retry (even after a crash in between) finds the claim and lands
on the same incident; the same key with another body is refused.
"""

from __future__ import annotations

from aftercare.intake.adapters.idempotency_keys import IdempotencyConflict, IdempotencyKeys
from aftercare.intake.adapters.incident_store import IncidentNotFound, IncidentStore
from aftercare.intake.domain.incident import IncidentReport
from aftercare.intake.service_layer.report_incident import Outcome, report

__all__ = ["IdempotencyConflict", "report_from_api"]


async def report_from_api(
    store: IncidentStore,
    keys: IdempotencyKeys,
    tenant_id: str,
    incident: IncidentReport,
    *,
    idempotency_key: str | None,
    body_digest: str,
) -> Outcome:
    """Open (or count an occurrence of) the reported incident once per Idempotency-Key.

    Raises ``IdempotencyConflict`` when the key was used with another body.
    """
    if not idempotency_key:
        return await report(store, tenant_id, incident)
    claim = await keys.claim(tenant_id, idempotency_key, body_digest)
    if not claim.first_use:
        try:
            existing = await store.get(tenant_id, claim.incident_id)
        except IncidentNotFound:
            pass  # the first attempt died before opening it: open it now under the same id
        else:
            # The first attempt may have died between its write and its publish: a 202 promises
            # the event is in Kafka, so publish whatever it left pending before answering.
            await store.flush(claim.incident_id)
            return Outcome(existing, created=False)
    outcome = await report(store, tenant_id, incident, incident_id=claim.incident_id)
    if outcome.incident.incident_id != claim.incident_id:
        # The report went to an open incident with the same dedup_key: a retry must find that
        # one, not add a second occurrence to it.
        await keys.settle(tenant_id, idempotency_key, outcome.incident.incident_id)
    return outcome
