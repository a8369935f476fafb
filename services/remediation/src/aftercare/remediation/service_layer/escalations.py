"""Use cases of escalation: hand an incident to people, step up a level when nobody acknowledges
in time, stop when someone does (API, the page's link, or the incident acknowledged in intake)."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import structlog

from aftercare.events.envelope import Envelope, envelope_for
from aftercare.events.outbox import OutboxRelay
from aftercare.events.remediation import EscalationAcknowledged, IncidentEscalated
from aftercare.events.schedule import DueItem, DueTimes
from aftercare.remediation.adapters.store import RemediationStore
from aftercare.remediation.domain import escalation as rules
from aftercare.remediation.domain.escalation import Escalation, Page
from aftercare.remediation.domain.run import Run
from aftercare.remediation.domain.runbook import IncidentFacts
from aftercare.remediation.service_layer.turns import Turns

log = structlog.stdlib.get_logger("aftercare.remediation.escalations")

SOURCE = "remediation"
DEADLINE = "escalation.deadline"  # the kind of stored due time: a level's acknowledgement deadline


class LinkRefused(ValueError):
    pass


class EscalationDesk:
    def __init__(
        self,
        store: RemediationStore,
        relay: OutboxRelay,
        turns: Turns,
        clock: Callable[[], datetime],
        link_secret: bytes,
        public_base_url: str,
        due_times: DueTimes,
    ) -> None:
        self._due = due_times
        self._store = store
        self._relay = relay
        self._turns = turns
        self._clock = clock
        self._secret = link_secret
        self._base_url = public_base_url.rstrip("/")

    def link_token(self, escalation_id: str) -> str:
        """The secret in a page's acknowledge link: derived, so every level's page can carry it."""
        return hmac.new(self._secret, escalation_id.encode(), hashlib.sha256).hexdigest()[:40]

    def acknowledge_url(self, escalation_id: str) -> str:
        return f"{self._base_url}/v1/escalations/{escalation_id}/acknowledge?token={self.link_token(escalation_id)}"

    def _page_event(self, escalation: Escalation, page: Page, caused_by: Envelope[Any] | None) -> Envelope[Any]:
        return envelope_for(
            IncidentEscalated(
                incident_id=escalation.incident_id,
                reason=escalation.reason,
                level=page.level,
                escalated_to=page.level_name,
                escalation_id=escalation.escalation_id,
                run_id=escalation.run_id,
                runbook=escalation.runbook,
                tried=escalation.tried,
                rollback_outcome=escalation.rollback_outcome,
                contacts=page.contacts,
                acknowledge_url=self.acknowledge_url(escalation.escalation_id),
                acknowledge_by=page.acknowledge_by,
            ),
            source=SOURCE,
            tenant_id=escalation.tenant_id,
            incident_id=escalation.incident_id,
            caused_by=caused_by,
        )

    async def escalate(
        self,
        purpose: str,
        incident: IncidentFacts,
        reason: str,
        run: Run | None = None,
        caused_by: Envelope[Any] | None = None,
    ) -> bool:
        """Page level 1 of the tenant's policy; once per incident and purpose (False if done already)."""
        now = self._clock()
        policy = await self._store.policy(incident.tenant_id) or rules.DEFAULT_POLICY
        escalation = Escalation(
            escalation_id=str(uuid.uuid4()),
            key=f"{incident.incident_id}:{purpose}",
            incident_id=incident.incident_id,
            tenant_id=incident.tenant_id,
            reason=reason,
            run_id=run.run_id if run else None,
            runbook=run.runbook.name if run else None,
            tried=run.reports() if run else [],
            rollback_outcome=run.rollback_outcome() if run else None,
            policy=policy,
        )
        escalation, page = rules.page_level(escalation, 1, now)
        # The deadline is stored before the escalation: a crash in between leaves a due time
        # that finds nothing to do, never an escalation that nobody follows up.
        await self._schedule(escalation.key, page.acknowledge_by)
        inserted = await self._store.insert_escalation(escalation, [self._page_event(escalation, page, caused_by)])
        if not inserted:
            existing = await self._store.load_escalation(escalation.key)
            if existing is not None and existing[0].next_at is not None:
                await self._schedule(escalation.key, existing[0].next_at)
            elif existing is not None:
                await self._due.cancel(self._due_key(escalation.key))
        if inserted:
            log.info("incident escalated", incident_id=incident.incident_id, purpose=purpose, reason=reason)
            async with self._turns(escalation.key):
                await self._relay.flush(self._store.escalations, escalation.key)
        return inserted

    @staticmethod
    def _due_key(key: str) -> str:
        return f"escalation:{key}"

    async def _schedule(self, key: str, at: datetime) -> None:
        await self._due.schedule(self._due_key(key), at, DEADLINE, {"key": key})

    async def deadline_due(self, item: DueItem) -> None:
        """Handler of the stored due time ``escalation.deadline`` (idempotent: it checks the state)."""
        await self.on_deadline(str(item.payload["key"]))

    async def on_deadline(self, key: str) -> None:
        """A level's acknowledgement deadline passed: page the next level (or note it ran out)."""
        async with self._turns(key):
            loaded = await self._store.load_escalation(key)
            if loaded is None:
                return
            escalation, rev = loaded
            decision = rules.on_deadline(escalation, self._clock())
            if isinstance(decision, rules.NotYet):
                if decision.until is not None:
                    await self._schedule(key, decision.until)
                return
            if isinstance(decision, rules.Exhausted):
                await self._store.save_escalation(decision.escalation, rev)
                log.warning("escalation ran out of levels unacknowledged", incident_id=escalation.incident_id)
                return
            event = self._page_event(decision.escalation, decision.page, None)
            await self._schedule(key, decision.page.acknowledge_by)
            if await self._store.save_escalation(decision.escalation, rev, [event]) is not None:
                await self._relay.flush(self._store.escalations, key)
                log.info("escalated to the next level", incident_id=escalation.incident_id, level=decision.page.level)

    async def acknowledge_incident(
        self, incident_id: str, by: str, via: str, caused_by: Envelope[Any] | None = None
    ) -> int:
        """Acknowledge every open escalation of the incident; how many were open."""
        count = 0
        for document in await self._store.escalations_of(incident_id):
            if await self._acknowledge(str(document["_id"]), by, via, caused_by):
                count += 1
        return count

    async def acknowledge_link(self, escalation_id: str, token: str) -> Escalation:
        document = await self._store.escalation_by_id(escalation_id)
        if document is None or not hmac.compare_digest(token, self.link_token(escalation_id)):
            raise LinkRefused("this acknowledge link is not valid (wrong or mistyped token)")
        await self._acknowledge(str(document["_id"]), "link from page", "link", None)
        loaded = await self._store.load_escalation(str(document["_id"]))
        assert loaded is not None
        return loaded[0]

    async def _acknowledge(self, key: str, by: str, via: str, caused_by: Envelope[Any] | None) -> bool:
        async with self._turns(key):
            loaded = await self._store.load_escalation(key)
            if loaded is None:
                return False
            escalation, rev = loaded
            changed = rules.acknowledge(escalation, by, via, self._clock())
            if changed is None:
                return False
            event = envelope_for(
                EscalationAcknowledged(
                    incident_id=escalation.incident_id,
                    escalation_id=escalation.escalation_id,
                    level=max(escalation.level, 1),
                    by=by,
                    via=via,
                ),
                source=SOURCE,
                tenant_id=escalation.tenant_id,
                incident_id=escalation.incident_id,
                caused_by=caused_by,
            )
            if await self._store.save_escalation(changed, rev, [event]) is None:
                return False
            await self._due.cancel(self._due_key(key))
            await self._relay.flush(self._store.escalations, key)
            log.info("escalation acknowledged", incident_id=escalation.incident_id, by=by, via=via)
            return True
