"""The SMS channel through Twilio's Messages API (``POST /2010-04-01/Accounts/{sid}/Messages.json``,
form-encoded, HTTP Basic with the account SID and auth token). The base URL is configurable, so
anything with Twilio's shape works, and tests point it at a local receiver. Twilio calls the
``StatusCallback`` URL as the message moves (queued, sent, delivered, failed); the API records it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from aftercare.events.tenants import TenantUpserted
from aftercare.notifier.adapters.store import Store
from aftercare.notifier.adapters.templates import RenderedMessage
from aftercare.notifier.domain.delivery import SendError


class SmsSender:
    def __init__(
        self,
        store: Store,
        client: httpx.AsyncClient,
        *,
        base_url: str,
        account_sid: str,
        auth_token: str,
        sender: str,
        status_callback_base: str,
    ) -> None:
        self._store = store
        self._client = client
        self._url = f"{base_url.rstrip('/')}/2010-04-01/Accounts/{account_sid}/Messages.json"
        self._auth = (account_sid, auth_token)
        self._from = sender
        self._callback = status_callback_base.rstrip("/")

    async def send(
        self,
        delivery: dict[str, Any],
        message: RenderedMessage,
        tenant: TenantUpserted | None,
        claim: Callable[[], Awaitable[bool]],
    ) -> bool:
        form = {
            "To": delivery["recipient"],
            "From": self._from,
            "Body": message.sms[:1600],
            "StatusCallback": f"{self._callback}/v1/sms/status/{delivery['_id']}",
        }
        if not await claim():
            return False
        try:
            answer = await self._client.post(self._url, data=form, auth=self._auth)
        except httpx.HTTPError as error:
            raise SendError(f"SMS API unreachable: {type(error).__name__}: {error}", ambiguous=True) from None
        if answer.status_code >= 300:
            detail = answer.text[:300]
            raise SendError(
                f"SMS API answered {answer.status_code}: {detail}", permanent=400 <= answer.status_code < 500
            )
        sid = (answer.json() or {}).get("sid")
        await self._store.deliveries.update_one({"_id": delivery["_id"]}, {"$set": {"provider_id": sid}})
        return True
