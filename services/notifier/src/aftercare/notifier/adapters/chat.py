"""The chat channel: a Slack- or Teams-shaped JSON message POSTed to a room's incoming webhook."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from aftercare.events.tenants import TenantUpserted
from aftercare.notifier.adapters.templates import RenderedMessage
from aftercare.notifier.domain.chat import ChatFormat, chat_payload
from aftercare.notifier.domain.delivery import SendError


class ChatSender:
    def __init__(self, client: httpx.AsyncClient, dashboard_base_url: str) -> None:
        self._client = client
        self._dashboard = dashboard_base_url.rstrip("/") + "/dashboard"

    async def send(
        self,
        delivery: dict[str, Any],
        message: RenderedMessage,
        tenant: TenantUpserted | None,
        claim: Callable[[], Awaitable[bool]],
    ) -> bool:
        context = dict(delivery.get("context") or {}) | {"tenant_id": delivery["tenant_id"]}
        incident_id = delivery.get("incident_id")
        link = f"{self._dashboard}/incidents/{incident_id}" if incident_id else self._dashboard
        body = chat_payload(ChatFormat(delivery.get("chat_format") or "slack"), delivery["kind"], context, link)
        if not await claim():
            return False
        try:
            answer = await self._client.post(delivery["recipient"], json=body)
        except httpx.ConnectError as error:
            raise SendError(f"chat webhook unreachable: {error}") from None  # nothing went out
        except httpx.HTTPError as error:
            raise SendError(f"chat webhook: {type(error).__name__}: {error}", ambiguous=True) from None
        if 200 <= answer.status_code < 300:
            return True
        # Slack answers 4xx for a revoked or mistyped hook ("no_service", "invalid_payload"): retrying
        # does not help; 429 and 5xx pass.
        permanent = 400 <= answer.status_code < 500 and answer.status_code not in (408, 429)
        raise SendError(f"chat webhook answered {answer.status_code}: {answer.text[:200]}", permanent=permanent)
