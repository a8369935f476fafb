"""What happens when a phone call (or a later part of it: recording, transcription) arrives.

Retries: Twilio retries a webhook it got no answer to, with the same CallSid. A ``phone_calls``
record per (tenant, CallSid), claimed before the incident is touched, makes a retried request
return the same incident: one call never opens two incidents. Each piece of a call is applied
once, keyed by its Twilio SID; a crash between adding a comment and recording that it was added
can repeat that comment on retry — a repeated comment is better than a lost voice message.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from aftercare.events.incidents import Channel
from aftercare.intake.adapters.incident_store import IncidentNotFound, IncidentStore
from aftercare.intake.adapters.phone_calls import PhoneCalls
from aftercare.intake.domain.callers import caller_key, title_after_transcript
from aftercare.intake.domain.incident import Incident
from aftercare.intake.domain.phone_call import TwilioCallback, report_for, reporter_of, update_for
from aftercare.intake.service_layer.report_incident import add_information, report


@dataclass(frozen=True)
class CallOutcome:
    incident: Incident
    opened: bool  # the call opened this incident (rather than updating the caller's open one)


async def take_call(store: IncidentStore, calls: PhoneCalls, tenant_id: str, call: TwilioCallback) -> CallOutcome:
    """Open the call's incident or add this part of the call to it, exactly once per part."""
    record = await calls.find(tenant_id, call.call_sid)
    if record is None:
        key = caller_key(call.caller)
        open_one = await store.find_open(tenant_id, key) if key else None
        planned = open_one.incident_id if open_one else str(uuid.uuid4())
        record = await calls.claim(
            tenant_id,
            call.call_sid,
            caller=call.caller,
            first_piece=call.piece(),
            incident_id=planned,
            opens=open_one is None,
        )
    piece = call.piece()

    if record.opens:
        try:
            incident = await store.get(tenant_id, record.incident_id)
        except IncidentNotFound:
            # First time here (or the first attempt died before opening): open it under the claimed id.
            # A racing retry of this same call lands on the same id, and that is a repeat of the
            # report, not a second occurrence.
            outcome = await report(store, tenant_id, report_for(call), incident_id=record.incident_id)
            await calls.mark_applied(tenant_id, call.call_sid, piece)
            if outcome.incident.incident_id != record.incident_id:
                # The caller's other call opened an incident a moment ago; this one became its repeat.
                await calls.point_to(tenant_id, call.call_sid, outcome.incident.incident_id)
                return CallOutcome(outcome.incident, opened=False)
            return CallOutcome(outcome.incident, opened=True)
    else:
        incident = await store.get(tenant_id, record.incident_id)

    if piece not in record.applied:
        kind, message = update_for(call)
        updated = await add_information(
            store,
            tenant_id,
            incident.incident_id,
            channel=Channel.PHONE,
            kind=kind,
            message=message,
            author=reporter_of(call),
            retitle=lambda current: title_after_transcript(current.title, call.caller, call.words),
        )
        await calls.mark_applied(tenant_id, call.call_sid, piece)
        incident = updated.incident
    return CallOutcome(incident, opened=record.opens)
