"""The notifier's JSON API: subscriptions and preferences per tenant contact, the notification
log per incident, failed/unconfirmed notifications and resends, and Twilio's status callbacks."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Form, Header, Path, Query, Request
from pydantic import BaseModel, Field

from aftercare.events.web import Problem
from aftercare.intake.domain.twilio_signature import is_valid
from aftercare.notifier.adapters.webhook import check_webhook_url
from aftercare.notifier.domain.chat import ChatWebhook
from aftercare.notifier.domain.delivery import DeliveryState
from aftercare.notifier.domain.preferences import Subscription
from aftercare.notifier.domain.webhooks import UnacceptableUrl, new_secret
from aftercare.notifier.entrypoints.consumer import DASHBOARD_TOPICS
from aftercare.notifier.entrypoints.dependencies import Admin, Components
from aftercare.notifier.service_layer.rebuild import rebuild_read_model

router = APIRouter()

ContactKey = Annotated[
    str, Path(min_length=1, max_length=320, description="The contact's email address (or phone, or name).")
]


class SubscriptionAnswer(BaseModel):
    tenant_id: str
    contact: str
    subscription: Subscription
    webhook_secret: str | None = Field(
        default=None, description="Standard Webhooks signing secret; shown only when it is created."
    )


def _attempts(document: dict[str, Any]) -> dict[str, Any]:
    return {
        "notification_id": document["_id"],
        "incident_id": document.get("incident_id"),
        "kind": document["kind"],
        "channel": document["channel"],
        "recipient": document["recipient"],
        "state": document["state"],
        "due_at": document.get("due_at"),
        "held_reason": document.get("held_reason"),
        "sent_at": document.get("sent_at"),
        "last_error": document.get("last_error"),
        "attempts": document.get("attempts", []),
        "provider_status": document.get("provider_status"),
    }


@router.put(
    "/v1/tenants/{tenant_id}/subscriptions/{contact}",
    dependencies=[Admin],
    response_model=SubscriptionAnswer,
    tags=["subscriptions"],
)
async def put_subscription(
    tenant_id: Annotated[str, Path(min_length=1, max_length=100)],
    contact: ContactKey,
    subscription: Subscription,
    notifier: Components,
) -> SubscriptionAnswer:
    """Set a tenant contact's preferences: channels, which messages, quiet hours (in the contact's
    time zone), language, throttling, digest priorities and a webhook URL. The URL is checked
    (https, resolves to an allowed address); a new webhook gets a signing secret, shown once."""
    key = contact.strip().lower()
    current = await notifier.store.subscriptions.find_one({"_id": f"{tenant_id}|{key}"})
    secret: str | None = None
    if subscription.webhook_url:
        try:
            await check_webhook_url(
                subscription.webhook_url,
                allow_http=notifier.settings.webhook_allow_http,
                allow_private=notifier.settings.webhook_allow_private_addresses,
            )
        except UnacceptableUrl as error:
            raise Problem(422, "Webhook URL not accepted", str(error), kind="webhook-url") from None
        if (
            not (current or {}).get("webhook_secret")
            or (current or {}).get("subscription", {}).get("webhook_url") != subscription.webhook_url
        ):
            secret = new_secret()
    fields: dict[str, Any] = {
        "tenant_id": tenant_id,
        "contact": key,
        "subscription": subscription.model_dump(mode="json"),
        "updated_at": datetime.now(UTC),
    }
    if secret is not None:
        fields["webhook_secret"] = secret
    await notifier.store.subscriptions.update_one({"_id": f"{tenant_id}|{key}"}, {"$set": fields}, upsert=True)
    notifier.planner.forget_subscriptions(tenant_id)
    return SubscriptionAnswer(tenant_id=tenant_id, contact=key, subscription=subscription, webhook_secret=secret)


@router.get("/v1/tenants/{tenant_id}/subscriptions", dependencies=[Admin], tags=["subscriptions"])
async def list_subscriptions(tenant_id: str, notifier: Components) -> list[SubscriptionAnswer]:
    """Every stored subscription of a tenant (secrets are never shown again)."""
    return [
        SubscriptionAnswer(
            tenant_id=tenant_id, contact=d["contact"], subscription=Subscription.model_validate(d["subscription"])
        )
        async for d in notifier.store.subscriptions.find({"tenant_id": tenant_id}).sort("_id", 1)
    ]


@router.get("/v1/incidents/{incident_id}/notifications", dependencies=[Admin], tags=["notifications"])
async def incident_notifications(incident_id: str, notifier: Components) -> list[dict[str, Any]]:
    """Every notification about an incident, with each attempt and its outcome."""
    cursor = notifier.store.deliveries.find({"incident_id": incident_id}, {"outbox": 0}).sort("created_at", 1)
    return [_attempts(document) async for document in cursor]


@router.get("/v1/notifications", dependencies=[Admin], tags=["notifications"])
async def notifications_by_state(
    notifier: Components,
    state: Annotated[DeliveryState, Query(description="e.g. 'failed' (dead letters) or 'unconfirmed'")],
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Notifications in one state: ``failed`` are the dead letters, ``unconfirmed`` the ones a
    crash left uncertain, ``retrying`` the ones waiting for their next attempt."""
    cursor = notifier.store.deliveries.find({"state": state.value}, {"outbox": 0}).sort("due_at", 1).limit(limit)
    return [_attempts(document) async for document in cursor]


@router.post(
    "/v1/notifications/{notification_id}/resend", dependencies=[Admin], tags=["notifications"], status_code=202
)
async def resend(notification_id: str, notifier: Components) -> dict[str, str]:
    """Send a failed or unconfirmed notification again (same Message-ID / webhook-id)."""
    if not await notifier.worker.resend(notification_id):
        raise Problem(
            409,
            "Not resendable",
            "Only a notification in state 'failed' or 'unconfirmed' can be sent again; check its id and state.",
            kind="not-resendable",
        )
    notifier.wake.set()
    return {"notification_id": notification_id, "state": DeliveryState.PENDING.value}


@router.post("/v1/sms/status/{notification_id}", tags=["sms"], status_code=204)
async def sms_status(
    notification_id: str,
    request: Request,
    notifier: Components,
    message_status: Annotated[str, Form(alias="MessageStatus", max_length=40)],
    x_twilio_signature: Annotated[str | None, Header()] = None,
) -> None:
    """Twilio's status callback for an SMS we sent: the status is recorded on the notification."""
    form = await request.form()
    params = {key: str(value) for key, value in form.items()}
    url = f"{notifier.settings.public_base_url.rstrip('/')}{request.url.path}"
    if not is_valid(notifier.settings.twilio_auth_token, url, params, x_twilio_signature):
        raise Problem(403, "Bad signature", "X-Twilio-Signature does not match this callback.", kind="bad-signature")
    result = await notifier.store.deliveries.update_one(
        {"_id": notification_id, "channel": "sms"},
        {
            "$set": {"provider_status": message_status},
            "$push": {
                "attempts": {"at": datetime.now(UTC), "attempt": 0, "outcome": f"sms-{message_status}", "detail": ""}
            },
        },
    )
    if result.matched_count == 0:
        raise Problem(404, "Unknown notification", f"No SMS notification {notification_id}.", kind="not-found")


ChatName = Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]


@router.put("/v1/chat-webhooks/{name}", dependencies=[Admin], tags=["chat"])
async def put_chat_webhook(name: ChatName, room: ChatWebhook, notifier: Components) -> dict[str, Any]:
    """Register (or change) an operators' chat room: a Slack or Teams incoming-webhook URL, and
    optionally which tenants and which messages it hears about. The URL is checked like a
    customer webhook's (https, resolves to an allowed address)."""
    try:
        await check_webhook_url(
            room.url,
            allow_http=notifier.settings.webhook_allow_http,
            allow_private=notifier.settings.webhook_allow_private_addresses,
        )
    except UnacceptableUrl as error:
        raise Problem(422, "Chat webhook URL not accepted", str(error), kind="webhook-url") from None
    await notifier.store.chat_webhooks.update_one(
        {"_id": name}, {"$set": {"room": room.model_dump(mode="json"), "updated_at": datetime.now(UTC)}}, upsert=True
    )
    notifier.planner.forget_chat_rooms()
    return {"name": name} | room.model_dump(mode="json")


@router.get("/v1/chat-webhooks", dependencies=[Admin], tags=["chat"])
async def list_chat_webhooks(notifier: Components) -> list[dict[str, Any]]:
    """Every registered operators' chat room."""
    return [{"name": d["_id"]} | d["room"] async for d in notifier.store.chat_webhooks.find({}).sort("_id", 1)]


@router.delete("/v1/chat-webhooks/{name}", dependencies=[Admin], tags=["chat"], status_code=204)
async def delete_chat_webhook(name: ChatName, notifier: Components) -> None:
    """Stop sending to a chat room (messages already planned for it still go)."""
    deleted = (await notifier.store.chat_webhooks.delete_one({"_id": name})).deleted_count
    notifier.planner.forget_chat_rooms()
    if deleted == 0:
        raise Problem(404, "Unknown chat webhook", f"No chat webhook named {name!r}.", kind="not-found")


@router.post("/admin/read-model/rebuild", dependencies=[Admin], tags=["admin"])
async def rebuild(notifier: Components) -> dict[str, int]:
    """Drop the dashboard's read model and rebuild it from Kafka (every incident topic from the
    start). Notifications are not sent again: delivery state is kept apart."""
    applied = await rebuild_read_model(notifier.settings.kafka_bootstrap_servers, DASHBOARD_TOPICS, notifier.read_model)
    return {"events_applied": applied}


@router.get("/admin/read-model/incidents/{incident_id}", dependencies=[Admin], tags=["admin"])
async def read_model_incident(incident_id: str, notifier: Components) -> dict[str, Any]:
    """The read model's view of one incident with its timeline (to compare after a rebuild)."""
    view = await notifier.read_model.get(incident_id)
    if view is None:
        raise Problem(404, "Unknown incident", f"The read model has no incident {incident_id}.", kind="not-found")
    return view | {"timeline": await notifier.read_model.timeline(incident_id)}
