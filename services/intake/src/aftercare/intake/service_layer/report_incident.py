"""What happens when any channel reports a problem: open an incident, or count an occurrence of
the open one with the same dedup key. Every channel's use case ends here (the API, PagerDuty,
Alertmanager, email, phone, web form).

Also: adding information (a comment, details) to an incident.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from aftercare.events.envelope import Envelope
from aftercare.events.incidents import AttachmentRef, Channel, Reporter
from aftercare.intake import clock
from aftercare.intake.adapters.incident_store import IncidentNotFound, IncidentStore
from aftercare.intake.domain import reporting
from aftercare.intake.domain.changes import FollowUps
from aftercare.intake.domain.incident import Incident, IncidentReport

log = structlog.stdlib.get_logger("aftercare.intake.report_incident")

# How often a new incident gets another number when the one it got is taken (a counter document
# lost or restored from a backup; the unique index on (tenant, number) has the last word).
NUMBER_ATTEMPTS = 5
# Occurrences of one incident counted by other instances between a read and its write.
OCCURRENCE_ATTEMPTS = 50


@dataclass(frozen=True)
class Outcome:
    """What a use case did: the incident as it is now and whether it was new."""

    incident: Incident
    created: bool
    events: Sequence[Envelope[Any]] = ()
    # The report was a sighting the incident had counted already (see IncidentReport.sighting).
    repeated: bool = False


async def report(
    store: IncidentStore,
    tenant_id: str,
    report: IncidentReport,
    *,
    incident_id: str | None = None,
    email_message_ids: Sequence[str] = (),
    also_publish: FollowUps | None = None,
) -> Outcome:
    """Open an incident, or, when ``report.dedup_key`` names an open one, add an occurrence.

    ``incident_id`` makes opening idempotent (the API's Idempotency-Key pre-allocates it):
    reporting twice with the same id opens it once. ``also_publish`` events go out with the
    incident's event, from the same write (not again when the report was a repeat).
    """
    if report.dedup_key:
        existing = await store.find_open(tenant_id, report.dedup_key)
        if existing is not None and existing.incident_id == incident_id:
            # A retry of the very report that opened it (same id): not a new occurrence.
            return Outcome(existing, created=False)
        if existing is not None:
            return await _occurrence(store, existing, report, also_publish)
    fresh = incident_id is None  # a new random id: no earlier attempt can have written it
    # Found written when opening, the incident is another request's (not this one's earlier
    # attempt): then this report is one more occurrence of it.
    repeat_if_written = fresh
    incident_id = incident_id or str(uuid.uuid4())
    if report.dedup_key:
        claimed = await store.claim_open_key(tenant_id, report.dedup_key, incident_id)
        if claimed != incident_id:
            # Another request opened it a moment ago: this report is a repeat of that one.
            try:
                return await _occurrence(store, await store.get(tenant_id, claimed), report, also_publish)
            except IncidentNotFound:
                pass
            # Not written yet: usually still being opened by this process, so wait for its turn.
            async with store.turn(claimed):
                pass
            try:
                return await _occurrence(store, await store.get(tenant_id, claimed), report, also_publish)
            except IncidentNotFound:
                # The other request crashed before writing, or it is still opening it on another
                # instance: take its place under its id (one of the two writes wins).
                incident_id, fresh, repeat_if_written = claimed, False, True
    outcome = await _open(store, tenant_id, incident_id, report, email_message_ids, also_publish, fresh=fresh)
    if not outcome.created and repeat_if_written:
        return await _occurrence(store, outcome.incident, report, also_publish)
    return outcome


async def _open(
    store: IncidentStore,
    tenant_id: str,
    incident_id: str,
    report: IncidentReport,
    email_message_ids: Sequence[str],
    also_publish: FollowUps | None,
    *,
    fresh: bool,
) -> Outcome:
    async with store.turn(incident_id):
        if not fresh:
            holder = await store.tenant_of(incident_id)
            if holder is not None:
                await store.flush(incident_id)  # finish what a crash or an outage left pending
                return Outcome(await store.get(holder, incident_id), created=False)
        for _ in range(NUMBER_ATTEMPTS):
            number = await store.next_number(tenant_id)
            opening = reporting.open_incident(
                tenant_id,
                incident_id,
                number,
                report,
                now=clock.now(),
                email_message_ids=email_message_ids,
                also_publish=also_publish,
            )
            # Returns once the incident is stored and its events are on Kafka.
            written = await store.insert(opening)
            if written == "exists":
                # Same incident id written concurrently (a retried Idempotency-Key request).
                return Outcome(await store.get(tenant_id, incident_id), created=False)
            if written == "inserted":
                break
            log.warning("incident number already taken; taking the next", tenant_id=tenant_id, number=number)
        else:
            raise RuntimeError(f"no free incident number for {tenant_id} after {NUMBER_ATTEMPTS} attempts")
    # Kept at info although it costs ~5 % of intake's CPU in an alert storm (py-spy under
    # bench/intake_accept_rate.py): it is intake's line with the incident's trace id, where an
    # operator following one incident from its report to its "resolved" email starts (issue 12).
    log.info(
        "incident opened", tenant_id=tenant_id, incident_id=incident_id, number=number, channel=report.channel.value
    )
    # The document as written is the incident: no need to read it back.
    return Outcome(Incident.model_validate(opening.fields), created=True, events=opening.events)


async def _occurrence(
    store: IncidentStore, incident: Incident, report: IncidentReport, also_publish: FollowUps | None
) -> Outcome:
    async with store.turn(incident.incident_id):
        for _ in range(OCCURRENCE_ATTEMPTS):
            # Read again in turn: another report of the same problem may have counted itself meanwhile.
            incident = await store.get(incident.tenant_id, incident.incident_id)
            if reporting.already_counted(incident, report):
                return Outcome(incident, created=False, repeated=True)
            change = reporting.add_occurrence(incident, report, now=clock.now(), also_publish=also_publish)
            # The write only matches the count read (the event announces the next one); another
            # instance, whose turns are its own, may have counted one in between: decide again.
            if await store.apply(change):
                return Outcome(
                    await store.get(incident.tenant_id, incident.incident_id), created=False, events=change.events
                )
        raise RuntimeError(f"occurrence of {incident.incident_id} not counted after {OCCURRENCE_ATTEMPTS} attempts")


async def add_information(
    store: IncidentStore,
    tenant_id: str,
    incident_id: str,
    *,
    channel: Channel,
    kind: str,
    message: str,
    author: Reporter,
    attachments: Sequence[AttachmentRef] = (),
    email_message_ids: Sequence[str] = (),
    also_publish: FollowUps | None = None,
    retitle: Callable[[Incident], str | None] | None = None,
) -> Outcome:
    """Append a comment or details (an email reply, a caller's new information).

    ``also_publish`` events go out with the IncidentUpdated, from the same write. ``retitle``,
    when given, is called with the incident as it is and returns a new title or None.
    """
    async with store.turn(incident_id):
        incident = await store.get(tenant_id, incident_id)
        new_title = retitle(incident) if retitle is not None else None
        change = reporting.add_information(
            incident,
            channel=channel,
            kind=kind,
            message=message,
            author=author,
            now=clock.now(),
            attachments=attachments,
            email_message_ids=email_message_ids,
            set_fields={"title": new_title} if new_title else None,
            also_publish=also_publish,
        )
        await store.apply(change)
        return Outcome(await store.get(tenant_id, incident_id), created=False, events=change.events)
