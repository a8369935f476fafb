"""Operators' chat rooms: which notices reach a room, and the Slack and Teams payload shapes."""

from __future__ import annotations

from aftercare.events.tenants import Priority
from aftercare.notifier.domain.chat import ChatFormat, ChatWebhook, chat_deliveries, chat_payload
from aftercare.notifier.domain.notices import Notice, NoticeKind

LINK = "https://notifier.example/dashboard/incidents/i1"
CONTEXT = {"number": "INC-7", "priority": "P1", "title": "Mail <down> & out", "tenant_name": "ACME"}


def notice(kind: NoticeKind, tenant: str = "acme", recipient: str | None = None) -> Notice:
    return Notice(kind, f"i1:{kind.value}", tenant, "i1", "ev-1", Priority.P1, dict(CONTEXT), recipient=recipient)


def test_a_room_hears_its_tenants_and_kinds_but_never_a_message_to_one_person() -> None:
    rooms = {
        "all": ChatWebhook(url="https://hooks.slack.example/a", format=ChatFormat.SLACK),
        "globex": ChatWebhook(url="https://teams.example/b", format=ChatFormat.TEAMS, tenants=["globex"]),
    }
    assert [name for _, name, _ in chat_deliveries(notice(NoticeKind.TRIAGED), rooms)] == ["all"]
    assert [name for _, name, _ in chat_deliveries(notice(NoticeKind.TRIAGED, "globex"), rooms)] == ["all", "globex"]
    assert chat_deliveries(notice(NoticeKind.PERIODIC), rooms) == []  # not among the default kinds
    assert chat_deliveries(notice(NoticeKind.RECEIVED, recipient="dana@acme.example"), rooms) == []
    assert (
        chat_deliveries(
            notice(NoticeKind.ON_CALL_PAGE), {"x": rooms["all"].model_copy(update={"kinds": list(NoticeKind)})}
        )
        == []
    )
    # The same notice to the same room is the same delivery key (once only).
    assert chat_deliveries(notice(NoticeKind.TRIAGED), rooms) == chat_deliveries(notice(NoticeKind.TRIAGED), rooms)


def test_slack_gets_text_and_blocks_with_its_control_characters_escaped() -> None:
    body = chat_payload(ChatFormat.SLACK, NoticeKind.TRIAGED.value, CONTEXT, LINK)
    assert body["text"] == f"INC-7 P1 triaged: Mail <down> & out ({LINK})"
    assert body["blocks"][0]["text"] == {"type": "mrkdwn", "text": "*INC-7 P1 triaged: Mail &lt;down&gt; &amp; out*"}
    assert body["blocks"][-1]["elements"][0]["url"] == LINK


def test_teams_gets_an_adaptive_card_message() -> None:
    body = chat_payload(ChatFormat.TEAMS, NoticeKind.ESCALATED.value, CONTEXT | {"reason": "rollback"}, LINK)
    (attachment,) = body["attachments"]
    card = attachment["content"]
    assert body["type"] == "message" and attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert (
        card["type"] == "AdaptiveCard"
        and card["body"][0]["text"] == "INC-7 P1 escalated to a person: Mail <down> & out"
    )
    assert "reason: rollback" in card["body"][1]["text"]
    assert card["actions"] == [{"type": "Action.OpenUrl", "title": "Open on the dashboard", "url": LINK}]
