"""Who hears what, on which channel, when: quiet hours, throttling, digest, idempotency keys."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from aftercare.events.envelope import envelope_for
from aftercare.events.incidents import Channel, IncidentReported, Reporter
from aftercare.events.tenants import Contact, NotificationChannel, Priority
from aftercare.notifier.domain.notices import Notice, NoticeKind, notice_for
from aftercare.notifier.domain.preferences import (
    Policy,
    QuietHours,
    Subscription,
    delivery_key,
    plan,
    throttle_key,
)

NOW = datetime(2026, 3, 2, 23, 30, tzinfo=UTC)  # 00:30 in Berlin (CET)
DIGEST_AT = datetime(2026, 3, 3, 8, 0, tzinfo=UTC)
DANA = Contact(name="Dana", email="dana@acme.example", phone="+15550100", preferred_channels=["email", "sms"])


def notice(kind: NoticeKind, priority: Priority | None = Priority.P2, notice_id: str = "n1") -> Notice:
    return Notice(
        kind=kind, notice_id=notice_id, tenant_id="acme", incident_id="i1", about_event_id="e1", priority=priority
    )


NIGHT = Subscription(quiet_hours=QuietHours(start=time(22, 0), end=time(7, 0), time_zone="Europe/Berlin"))


def test_each_preferred_channel_gets_one_delivery_with_its_own_key() -> None:
    planned = plan(notice(NoticeKind.RESOLVED), [DANA], {}, NOW, {}, DIGEST_AT)
    assert [(p.channel, p.recipient) for p in planned] == [
        (NotificationChannel.EMAIL, "dana@acme.example"),
        (NotificationChannel.SMS, "+15550100"),
    ]
    assert len({p.key for p in planned}) == 2


def test_the_same_notice_for_the_same_address_and_channel_is_the_same_key() -> None:
    assert delivery_key("n1", "Dana@Acme.example ", NotificationChannel.EMAIL) == delivery_key(
        "n1", "dana@acme.example", NotificationChannel.EMAIL
    )
    assert delivery_key("n1", "dana@acme.example", NotificationChannel.EMAIL) != delivery_key(
        "n2", "dana@acme.example", NotificationChannel.EMAIL
    )


def test_quiet_hours_hold_a_p2_update_until_the_morning_in_the_contacts_time_zone() -> None:
    (planned,) = plan(
        notice(NoticeKind.REMEDIATING),
        [DANA],
        {"dana@acme.example": NIGHT.model_copy(update={"channels": [NotificationChannel.EMAIL]})},
        NOW,
        {},
        DIGEST_AT,
    )
    assert planned.held_reason == "quiet-hours"
    assert planned.due_at == datetime(2026, 3, 3, 6, 0, tzinfo=UTC)  # 07:00 CET


def test_p1_and_resolution_are_not_held_by_quiet_hours() -> None:
    subscriptions = {"dana@acme.example": NIGHT.model_copy(update={"channels": [NotificationChannel.EMAIL]})}
    (p1,) = plan(notice(NoticeKind.REMEDIATING, Priority.P1), [DANA], subscriptions, NOW, {}, DIGEST_AT)
    (resolved,) = plan(notice(NoticeKind.RESOLVED, Priority.P3), [DANA], subscriptions, NOW, {}, DIGEST_AT)
    assert p1.due_at == NOW and p1.held_reason is None
    assert resolved.due_at == NOW and resolved.held_reason is None


def test_progress_updates_are_spaced_by_the_throttle_window_but_resolution_is_not() -> None:
    only_email = {"dana@acme.example": Subscription(channels=[NotificationChannel.EMAIL], throttle_minutes=20)}
    update = notice(NoticeKind.DIAGNOSED)
    last = {throttle_key(update, "dana@acme.example", NotificationChannel.EMAIL): NOW - timedelta(minutes=5)}
    (held,) = plan(update, [DANA], only_email, NOW, last, DIGEST_AT)
    assert held.held_reason == "throttled" and held.due_at == NOW + timedelta(minutes=15)
    (resolved,) = plan(notice(NoticeKind.RESOLVED), [DANA], only_email, NOW, last, DIGEST_AT)
    assert resolved.due_at == NOW


def test_low_priorities_go_into_the_digest() -> None:
    only_email = {"dana@acme.example": Subscription(channels=[NotificationChannel.EMAIL])}
    (p4,) = plan(notice(NoticeKind.TRIAGED, Priority.P4), [DANA], only_email, NOW, {}, DIGEST_AT)
    assert p4.digest and p4.due_at == DIGEST_AT
    (p4_resolved,) = plan(notice(NoticeKind.RESOLVED, Priority.P4), [DANA], only_email, NOW, {}, DIGEST_AT)
    assert not p4_resolved.digest


def test_a_contact_hears_only_the_events_and_priorities_it_chose() -> None:
    picky = Contact(name="Pat", email="pat@acme.example", notify_on=[Priority.P1])
    assert plan(notice(NoticeKind.TRIAGED, Priority.P3), [picky], {}, NOW, {}, DIGEST_AT) == []
    resolved_only = {"dana@acme.example": Subscription(events=[NoticeKind.RESOLVED])}
    assert plan(notice(NoticeKind.TRIAGED), [DANA], resolved_only, NOW, {}, DIGEST_AT) == []
    assert len(plan(notice(NoticeKind.RESOLVED), [DANA], resolved_only, NOW, {}, DIGEST_AT)) == 2


def test_a_notice_for_one_person_goes_to_that_person_by_email_at_once() -> None:
    direct = Notice(
        kind=NoticeKind.RECEIVED,
        notice_id="i1:received",
        tenant_id="acme",
        incident_id="i1",
        about_event_id="e1",
        recipient="someone@customer.example",
    )
    (planned,) = plan(direct, [DANA], {"dana@acme.example": NIGHT}, NOW, {}, DIGEST_AT, Policy())
    assert planned.recipient == "someone@customer.example" and planned.due_at == NOW
    assert planned.key == delivery_key("i1:received", "someone@customer.example", NotificationChannel.EMAIL)


def test_a_contact_who_reported_by_email_gets_intakes_acknowledgement_not_a_second_received() -> None:
    """The report's "received" and intake's acknowledgement to its sender are one delivery key:
    whichever was planned first won, and planned from the report the sender's copy lost its
    "Re:" subject and thread. The report's notice now leaves the sender's email to intake."""
    sam = Contact(name="Sam", email="sam@acme.example")
    reported = envelope_for(
        IncidentReported(
            incident_id="i1",
            number="INC-7",
            title="printer on fire",
            channel=Channel.EMAIL,
            reported_at=NOW,
            reporter=Reporter(email="Dana@Acme.example"),
        ),
        source="intake",
        tenant_id="acme",
        incident_id="i1",
    )
    received = notice_for(reported, None)
    assert received is not None

    planned = plan(received, [DANA, sam], {}, NOW, {}, DIGEST_AT)

    assert [(p.channel, p.recipient) for p in planned] == [
        (NotificationChannel.SMS, "+15550100"),
        (NotificationChannel.EMAIL, "sam@acme.example"),
    ]
    by_phone = notice_for(
        reported.model_copy(update={"data": reported.data.model_copy(update={"channel": Channel.PHONE})}), None
    )
    assert by_phone is not None and by_phone.acknowledged_by_intake is None
