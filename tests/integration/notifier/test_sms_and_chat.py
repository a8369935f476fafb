"""SMS through Twilio's Messages API shape and operators' chat rooms (Slack and Teams incoming
webhooks), each against a real local HTTP receiver standing where the provider would be.

Twilio's status callbacks are posted back to the notifier as Twilio posts them, signed with
X-Twilio-Signature (computed here from Twilio's documented algorithm, not with our own code)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from aftercare.events.incidents import Channel, IncidentReported
from aftercare.events.producer import EventProducer
from aftercare.events.tenants import Contact, Priority
from aftercare.events.triage import IncidentTriaged

from .conftest import NotifierUnderTest, ProviderReceiver, new_tenant, notifications_of, wait_for

pytestmark = pytest.mark.integration


def twilio_signature(auth_token: str, url: str, params: dict[str, str]) -> str:
    """Twilio's documented request signature: HMAC-SHA1 over the URL followed by each POST
    parameter's name and value, sorted by name, base64-encoded."""
    payload = url + "".join(name + params[name] for name in sorted(params))
    return base64.b64encode(hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()).decode()


def reported(number: str, incident_id: str) -> IncidentReported:
    return IncidentReported(
        incident_id=incident_id,
        number=number,
        title="Payroll export stuck",
        channel=Channel.API,
        reported_at=datetime.now(UTC),
    )


async def test_an_sms_goes_out_in_twilios_shape_once_and_its_status_callbacks_are_recorded(
    notifier: NotifierUnderTest, provider_receiver: ProviderReceiver, publisher: EventProducer
) -> None:
    customer = new_tenant()
    phone = "+4930" + str(secrets.randbelow(10**8)).zfill(8)
    await publisher.publish(
        customer.tenant_event(contacts=[Contact(name="Sam Mobile", phone=phone, preferred_channels=["sms"])])
    )
    incident_id = str(uuid.uuid4())
    await publisher.publish(customer.event(reported("INC-8301", incident_id), incident_id))

    messages_path = f"/2010-04-01/Accounts/{provider_receiver.account_sid}/Messages.json"

    def sms_to_phone() -> list[dict[str, str]]:
        forms = [
            {k: v[0] for k, v in parse_qs(body.decode()).items()}
            for _, _, body in provider_receiver.received(messages_path)
        ]
        return [form for form in forms if form.get("To") == phone]

    [form] = await wait_for("the SMS at the Twilio-shaped API", sms_to_phone)
    [headers] = [
        request_headers
        for _, request_headers, body in provider_receiver.received(messages_path)
        if parse_qs(body.decode()).get("To") == [phone]
    ]
    expected_auth = base64.b64encode(f"{provider_receiver.account_sid}:{provider_receiver.auth_token}".encode())
    assert headers["authorization"] == "Basic " + expected_auth.decode()
    assert form["From"] == "+15550001111" and "INC-8301" in form["Body"]
    callback = form["StatusCallback"]
    assert callback.startswith(notifier.base_url + "/v1/sms/status/")

    async def sms_sent() -> dict[str, Any] | None:
        log = await notifications_of(notifier, incident_id)
        return next((entry for entry in log if entry["channel"] == "sms" and entry["state"] == "sent"), None)

    await wait_for("the SMS recorded as sent", sms_sent)
    async with httpx.AsyncClient(timeout=10) as twilio:
        for status in ("sent", "delivered"):
            params = {"MessageSid": "SM" + "0" * 32, "MessageStatus": status, "To": phone}
            answer = await twilio.post(
                callback,
                data=params,
                headers={"X-Twilio-Signature": twilio_signature(provider_receiver.auth_token, callback, params)},
            )
            assert answer.status_code == 204, answer.text
        forged = await twilio.post(
            callback, data={"MessageStatus": "failed"}, headers={"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"}
        )
        assert forged.status_code == 403 and forged.headers["content-type"] == "application/problem+json"

    [delivery] = [e for e in await notifications_of(notifier, incident_id) if e["channel"] == "sms"]
    assert delivery["provider_status"] == "delivered"  # the forged "failed" changed nothing
    assert [a["outcome"] for a in delivery["attempts"]] == ["sent", "sms-sent", "sms-delivered"]
    assert len(sms_to_phone()) == 1


async def test_operators_chat_rooms_hear_about_incidents_in_slack_and_teams_shapes(
    notifier: NotifierUnderTest, provider_receiver: ProviderReceiver, publisher: EventProducer
) -> None:
    customer = new_tenant()
    rooms = {f"slack-{uuid.uuid4().hex[:8]}": "slack", f"teams-{uuid.uuid4().hex[:8]}": "teams"}
    async with httpx.AsyncClient(base_url=notifier.base_url, timeout=10) as http:
        for name, shape in rooms.items():
            answer = await http.put(
                f"/v1/chat-webhooks/{name}",
                json={"url": f"{provider_receiver.url}/chat/{name}", "format": shape, "tenants": [customer.tenant_id]},
                headers=notifier.admin(),
            )
            assert answer.status_code == 200, answer.text
        refused = await http.put(
            "/v1/chat-webhooks/ops",
            json={"url": "ftp://chat.example/hook", "format": "slack"},
            headers=notifier.admin(),
        )
        assert refused.status_code == 422 and "https" in refused.json()["detail"]
    await publisher.publish(customer.tenant_event())
    incident_id = str(uuid.uuid4())
    await publisher.publish(customer.event(reported("INC-8302", incident_id), incident_id))
    await publisher.publish(
        customer.event(
            IncidentTriaged(incident_id=incident_id, number="INC-8302", priority=Priority.P2, category="application"),
            incident_id,
            source="triage",
        )
    )

    def posted(name: str) -> list[dict[str, Any]] | None:
        bodies = [json.loads(body) for _, _, body in provider_receiver.received(f"/chat/{name}")]
        return bodies if len(bodies) >= 2 else None

    slack_name, teams_name = list(rooms)
    slack = await wait_for("both messages in the Slack room", lambda: posted(slack_name))
    teams = await wait_for("both messages in the Teams room", lambda: posted(teams_name))
    link = f"{notifier.base_url}/dashboard/incidents/{incident_id}"

    texts = sorted(message["text"] for message in slack)
    assert texts[0].startswith("INC-8302 P2 triaged: Payroll export stuck") and link in texts[0]
    assert texts[1].startswith("INC-8302 new incident: Payroll export stuck")
    assert all(message["blocks"][-1]["elements"][0]["url"] == link for message in slack)

    cards = [message["attachments"][0] for message in teams]
    assert all(message["type"] == "message" for message in teams)
    assert {card["contentType"] for card in cards} == {"application/vnd.microsoft.card.adaptive"}
    headlines = sorted(card["content"]["body"][0]["text"] for card in cards)
    assert headlines == ["INC-8302 P2 triaged: Payroll export stuck", "INC-8302 new incident: Payroll export stuck"]
    assert all(card["content"]["actions"][0]["url"] == link for card in cards)

    async def chat_log() -> list[dict[str, Any]] | None:
        entries = [e for e in await notifications_of(notifier, incident_id) if e["channel"] == "chat"]
        return entries if len(entries) == 4 and all(e["state"] == "sent" for e in entries) else None

    await wait_for("four chat deliveries recorded as sent", chat_log)
    assert len(provider_receiver.received(f"/chat/{slack_name}")) == 2  # once per message and room
