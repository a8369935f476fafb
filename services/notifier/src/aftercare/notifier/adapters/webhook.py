"""The webhook channel: a JSON payload signed per Standard Webhooks, POSTed with httpx.

The ``webhook-id`` is the delivery key, the same on every retry, so a receiver that deduplicates
on it (as the specification asks) sees each notification once even when we send it again.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from aftercare.events.tenants import TenantUpserted
from aftercare.notifier.adapters.store import Store
from aftercare.notifier.adapters.templates import RenderedMessage
from aftercare.notifier.domain.delivery import SendError
from aftercare.notifier.domain.webhooks import check_addresses, check_url_shape, sign


async def check_webhook_url(url: str, *, allow_http: bool, allow_private: bool) -> None:
    """Raise ``UnacceptableUrl`` unless ``url`` may be registered (scheme, resolves, allowed)."""
    host = check_url_shape(url, allow_http=allow_http)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        infos = []
    check_addresses(host, sorted({str(info[4][0]) for info in infos}), allow_private=allow_private)


def payload_of(delivery: dict[str, Any], message: RenderedMessage) -> dict[str, Any]:
    context = delivery.get("context") or {}
    return {
        "type": delivery["kind"],
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": {
            "notification_id": delivery["_id"],
            "incident_id": delivery.get("incident_id"),
            "number": context.get("number") or None,
            "title": context.get("title") or None,
            "priority": delivery.get("priority"),
            "status_url": context.get("status_url") or None,
            "subject": message.subject,
            "text": message.text,
        },
    }


class WebhookSender:
    def __init__(self, store: Store, client: httpx.AsyncClient) -> None:
        self._store = store
        self._client = client

    async def send(
        self,
        delivery: dict[str, Any],
        message: RenderedMessage,
        tenant: TenantUpserted | None,
        claim: Callable[[], Awaitable[bool]],
    ) -> bool:
        subscription = await self._store.subscriptions.find_one(
            {"_id": f"{delivery['tenant_id']}|{delivery['contact']}"}, {"webhook_secret": 1}
        )
        secret = (subscription or {}).get("webhook_secret")
        if not secret:
            raise SendError(
                "the webhook has no signing secret; register it through the subscriptions API", permanent=True
            )
        body = json.dumps(payload_of(delivery, message), separators=(",", ":")).encode()
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": delivery["_id"],
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, delivery["_id"], timestamp, body),
        }
        if not await claim():
            return False
        try:
            answer = await self._client.post(delivery["recipient"], content=body, headers=headers)
        except httpx.HTTPError as error:
            raise SendError(f"webhook unreachable: {type(error).__name__}: {error}", ambiguous=True) from None
        if 200 <= answer.status_code < 300:
            return True
        # 410 Gone is the receiver saying "stop"; everything else may pass (Standard Webhooks).
        raise SendError(f"webhook answered {answer.status_code}", permanent=answer.status_code == 410)
