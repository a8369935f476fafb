"""An escalation pages its level's on-call people by email, each with the acknowledge link."""

from __future__ import annotations

from datetime import UTC, datetime

from aftercare.events.envelope import envelope_for
from aftercare.events.remediation import EscalationContact, IncidentEscalated
from aftercare.events.tenants import NotificationChannel, Priority
from aftercare.events.triage import IncidentTriaged
from aftercare.notifier.adapters.templates import MessageTemplates
from aftercare.notifier.domain.incident_view import add_entry, entry_of, fold
from aftercare.notifier.domain.notices import NoticeKind, notice_for, pages_for
from aftercare.notifier.domain.preferences import plan

NOW = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)
VIEW = {"number": "INC-1042", "title": "billing-api is down", "priority": "P1"}


def escalation(level: int = 1) -> IncidentEscalated:
    return IncidentEscalated(
        incident_id="i1",
        reason="verification failed after restart; rolled back",
        level=level,
        escalation_id="esc-1",
        contacts=[
            EscalationContact(name="Olga On-Call", email="Olga@Support.example"),
            EscalationContact(name="Phone Only", phone="+15550100"),
        ],
        acknowledge_url="http://127.0.0.1:8003/v1/escalations/esc-1/acknowledge?token=t0k3n",
        acknowledge_by=datetime(2026, 3, 2, 3, 15, tzinfo=UTC),
    )


def test_each_paged_person_with_an_email_gets_one_page_carrying_the_acknowledge_link() -> None:
    envelope = envelope_for(escalation(), source="test", tenant_id="acme", incident_id="i1")
    pages = pages_for(envelope, VIEW)
    assert [(page.kind, page.recipient) for page in pages] == [(NoticeKind.ON_CALL_PAGE, "Olga@Support.example")]
    page = pages[0]
    assert page.context["acknowledge_url"].endswith("token=t0k3n")
    assert page.context["contact_name"] == "Olga On-Call"
    assert page.notice_id == "esc-1:page:1:olga@support.example"
    # The customer still hears its own message about the same event, separately.
    customer_notice = notice_for(envelope, VIEW)
    assert customer_notice is not None and customer_notice.kind is NoticeKind.ESCALATED


def test_a_redelivered_escalation_is_the_same_page_and_the_next_level_a_new_one() -> None:
    first = pages_for(envelope_for(escalation(), source="t", tenant_id="acme", incident_id="i1"), VIEW)
    again = pages_for(envelope_for(escalation(), source="t", tenant_id="acme", incident_id="i1"), VIEW)
    level_two = pages_for(envelope_for(escalation(level=2), source="t", tenant_id="acme", incident_id="i1"), VIEW)
    assert [p.notice_id for p in first] == [p.notice_id for p in again]
    assert {p.notice_id for p in first}.isdisjoint(p.notice_id for p in level_two)


def test_a_page_goes_out_at_once_by_email_to_that_person_only() -> None:
    (page,) = pages_for(envelope_for(escalation(), source="t", tenant_id="acme", incident_id="i1"), VIEW)
    (delivery,) = plan(page, [], {}, NOW, {}, NOW)
    assert delivery.channel is NotificationChannel.EMAIL
    assert delivery.recipient == "Olga@Support.example"
    assert delivery.due_at == NOW and delivery.held_reason is None


def test_the_page_template_renders_the_link_and_the_templates_still_check() -> None:
    templates = MessageTemplates()
    templates.check()
    (page,) = pages_for(envelope_for(escalation(), source="t", tenant_id="acme", incident_id="i1"), VIEW)
    message = templates.render(page.kind.value, "de", page.context | {"tenant_name": "ACME Logistics"})
    assert message.subject == "[INC-1042] PAGE level 1: billing-api is down"
    assert "token=t0k3n" in message.text and "token=t0k3n" in message.html and "token=t0k3n" in message.sms
    assert "Olga On-Call" in message.text


def test_nobody_is_paged_for_an_incident_triage_holds_as_flapping() -> None:
    flapping = IncidentTriaged(incident_id="i1", number="INC-1042", priority=Priority.P1, category="application")
    triaged = envelope_for(
        flapping.model_copy(update={"hold_paging": True}), source="triage", tenant_id="acme", incident_id="i1"
    )
    view = fold("i1", "acme", add_entry([], entry_of(triaged)) or [])
    assert view["hold_paging"] is True
    envelope = envelope_for(escalation(), source="t", tenant_id="acme", incident_id="i1")
    assert pages_for(envelope, view) == []
    assert pages_for(envelope, VIEW) != []
    # The customer still hears that a person will look at it.
    notice = notice_for(envelope, VIEW | {"hold_paging": True})
    assert notice is not None and notice.kind is NoticeKind.ESCALATED
