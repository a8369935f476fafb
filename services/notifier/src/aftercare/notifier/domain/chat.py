"""Operators' chat rooms: incoming webhooks of Slack or Microsoft Teams that hear about incidents.

A chat webhook is registered by an admin (name, URL, format, optionally the tenants and message
kinds it wants). It is not a customer contact: it gets no quiet hours, throttling or digests,
and messages addressed to one person (intake's acknowledgements, on-call pages) never go there.
Each notice goes to each matching room once (the delivery key is notice x URL x chat), through
the same delivery worker as every other channel, so retries and the failed state are the same.

Payloads: Slack's incoming webhooks take ``{"text": ..., "blocks": [...]}`` (``text`` is the
fallback shown in notifications); Teams' incoming webhooks (the Workflows "post to a channel when
a webhook request is received" template, and the older connector) take a ``message`` whose
attachment is an Adaptive Card.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from aftercare.events.tenants import NotificationChannel
from aftercare.notifier.domain.notices import Notice, NoticeKind
from aftercare.notifier.domain.preferences import delivery_key


class ChatFormat(StrEnum):
    SLACK = "slack"
    TEAMS = "teams"


DEFAULT_CHAT_KINDS = (NoticeKind.RECEIVED, NoticeKind.TRIAGED, NoticeKind.ESCALATED, NoticeKind.RESOLVED)
# Addressed to one person or a digest of a customer's own messages: never to a room.
NEVER_TO_CHAT = frozenset({NoticeKind.UPDATED, NoticeKind.ON_CALL_PAGE, NoticeKind.DIGEST})

_HEADLINES = {
    NoticeKind.RECEIVED: "new incident",
    NoticeKind.TRIAGED: "triaged",
    NoticeKind.DIAGNOSED: "diagnosed",
    NoticeKind.REMEDIATING: "remediation started",
    NoticeKind.RESOLVED: "resolved",
    NoticeKind.ESCALATED: "escalated to a person",
    NoticeKind.PERIODIC: "still open",
    NoticeKind.ADVISORY: "advisory published",
}


class ChatWebhook(BaseModel):
    """An operators' chat room, as an admin registers it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(min_length=8, max_length=2000, description="The room's incoming-webhook URL.")
    format: ChatFormat = Field(description="'slack' or 'teams': the payload shape the room expects.")
    tenants: list[str] | None = Field(default=None, description="Only these tenants' incidents; default: all.")
    kinds: list[NoticeKind] = Field(
        default_factory=lambda: list(DEFAULT_CHAT_KINDS),
        description="Which messages the room hears about (the customer messages' names).",
    )

    def wants(self, notice: Notice) -> bool:
        if notice.recipient is not None or notice.kind in NEVER_TO_CHAT or notice.kind not in self.kinds:
            return False
        return self.tenants is None or notice.tenant_id in self.tenants


def chat_deliveries(notice: Notice, rooms: dict[str, ChatWebhook]) -> list[tuple[str, str, str]]:
    """(delivery key, room name, URL) for every room that wants ``notice``."""
    return [
        (delivery_key(notice.notice_id, room.url, NotificationChannel.CHAT), name, room.url)
        for name, room in sorted(rooms.items())
        if room.wants(notice)
    ]


def chat_line(kind: str, context: dict[str, Any]) -> tuple[str, str]:
    """The headline and the one-line detail an operator reads in the room."""
    try:
        what = _HEADLINES.get(NoticeKind(kind), kind)
    except ValueError:
        what = kind
    number = context.get("number") or "incident"
    priority = f" {context['priority']}" if context.get("priority") else ""
    headline = f"{number}{priority} {what}: {context.get('title') or ''}".strip()
    detail = " · ".join(
        part
        for part in (
            context.get("tenant_name") or context.get("tenant_id"),
            f"reason: {context['reason']}" if context.get("reason") else "",
            f"status: {context['status']}" if context.get("status") else "",
        )
        if part
    )
    return headline, detail


def chat_payload(format: ChatFormat, kind: str, context: dict[str, Any], link: str) -> dict[str, Any]:
    """The JSON body a Slack or Teams incoming webhook takes for one message."""
    headline, detail = chat_line(kind, context)
    if format is ChatFormat.SLACK:
        return {
            "text": f"{headline} ({link})",
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": f"*{_slack_escape(headline)}*"}},
                *(
                    [{"type": "context", "elements": [{"type": "mrkdwn", "text": _slack_escape(detail)}]}]
                    if detail
                    else []
                ),
                {
                    "type": "actions",
                    "elements": [
                        {"type": "button", "text": {"type": "plain_text", "text": "Open on the dashboard"}, "url": link}
                    ],
                },
            ],
        }
    card: dict[str, Any] = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [
            {"type": "TextBlock", "text": headline, "weight": "Bolder", "size": "Medium", "wrap": True},
            *([{"type": "TextBlock", "text": detail, "isSubtle": True, "wrap": True}] if detail else []),
        ],
        "actions": [{"type": "Action.OpenUrl", "title": "Open on the dashboard", "url": link}],
    }
    return {
        "type": "message",
        "summary": headline,
        "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}
        ],
    }


def _slack_escape(text: str) -> str:
    # Slack's mrkdwn treats these three as control characters.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
