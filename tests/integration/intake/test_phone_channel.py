"""Phone channel: Twilio voice, <Record> and transcription webhooks to a tenant's support line,
against a real intake process, the real broker and store.

Requests are signed here with ``twilio_sign``, written from Twilio's documented algorithm
(independently of intake's validator), over the URL Twilio would call: the public base URL
of the intake under test plus the path.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import secrets
import uuid
from typing import Any

import httpx
from pymongo import AsyncMongoClient

from intake.conftest import IntakeUnderTest

from kafka_helpers import read_all, wait_until

INCIDENTS_TOPIC = "aftercare.incidents"
VOICE = "/v1/phone/twilio/voice"
RECORDED = "/v1/phone/twilio/recorded"
TRANSCRIPTION = "/v1/phone/twilio/transcription"


def twilio_sign(auth_token: str, url: str, params: dict[str, str]) -> str:
    data = url + "".join(name + params[name] for name in sorted(params))
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def new_caller() -> str:
    return "+1555" + "".join(secrets.choice("0123456789") for _ in range(7))


def call_params(
    intake: IntakeUnderTest, caller: str, *, tenant: str = "tenant-a", call_sid: str | None = None, **extra: str
) -> dict[str, str]:
    return {
        "AccountSid": "AC" + uuid.uuid4().hex,
        "CallSid": call_sid or "CA" + uuid.uuid4().hex,
        "From": caller,
        "To": intake.tenants[tenant].phone_number,
        "CallStatus": "ringing",
        "Direction": "inbound",
        "ApiVersion": "2010-04-01",
        "ForwardedFrom": "",  # Twilio sends empty parameters; they are signed too
        **extra,
    }


async def post_signed(
    client: httpx.AsyncClient,
    intake: IntakeUnderTest,
    path: str,
    params: dict[str, str],
    *,
    token: str | None = None,
    tenant: str = "tenant-a",
) -> httpx.Response:
    signature = twilio_sign(token or intake.tenants[tenant].phone_auth_token, intake.base_url + path, params)
    return await client.post(path, data=params, headers={"X-Twilio-Signature": signature})


def spoken_number(twiml: str) -> str:
    """The incident number as the TwiML spells it out: 'I N C, 1 0 4 2' -> 'INC-1042'."""
    match = re.search(r"I N C, ((?:[0-9] )*[0-9])", twiml)
    assert match, f"no spelled incident number in {twiml}"
    return "INC-" + match.group(1).replace(" ", "")


async def incidents_of_caller(
    client: httpx.AsyncClient, intake: IntakeUnderTest, caller: str, tenant: str = "tenant-a"
) -> list[dict[str, Any]]:
    answer = await client.get("/v1/incidents", params={"channel": "phone", "limit": 200}, headers=intake.auth(tenant))
    assert answer.status_code == 200, answer.text
    return [item for item in answer.json()["items"] if item["reporter"]["phone"] == caller]


async def incident(client: httpx.AsyncClient, intake: IntakeUnderTest, incident_id: str) -> dict[str, Any]:
    answer = await client.get(f"/v1/incidents/{incident_id}", headers=intake.auth("tenant-a"))
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


async def kafka_events(intake: IntakeUnderTest) -> list[dict[str, Any]]:
    """Every incident event once, in publish order: the outbox publishes at least once, and
    consumers deduplicate by event id, so a repeat of the same event is not a second event."""
    records = await read_all(intake.infrastructure.bootstrap_servers, INCIDENTS_TOPIC, timeout=20)
    unique: dict[str, dict[str, Any]] = {}
    for record in records:
        event = json.loads(record.value)
        unique.setdefault(event["id"], event)
    return list(unique.values())


async def events_of(intake: IntakeUnderTest, incident_id: str, *, at_least: int) -> list[dict[str, Any]]:
    async def enough() -> list[dict[str, Any]] | None:
        mine = [event for event in await kafka_events(intake) if event["incident_id"] == incident_id]
        return mine if len(mine) >= at_least else None

    return await wait_until(enough, timeout=30, message=f"{at_least} events of {incident_id} on Kafka")


async def test_a_signed_call_with_its_transcription_opens_a_phone_incident_and_reads_the_number_back(
    intake: IntakeUnderTest,
) -> None:
    caller = new_caller()
    params = call_params(
        intake,
        caller,
        CallStatus="completed",
        TranscriptionText="The billing database is down. Nobody can send invoices since 9 am.",
        TranscriptionStatus="completed",
        TranscriptionSid="TR" + uuid.uuid4().hex,
        RecordingSid="RE" + uuid.uuid4().hex,
        RecordingUrl="https://api.twilio.com/2010-04-01/Accounts/AC1/Recordings/RE1",
    )
    async with httpx.AsyncClient(base_url=intake.base_url, timeout=30) as client:
        answer = await post_signed(client, intake, VOICE, params)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith("text/xml")
        assert answer.text.startswith('<?xml version="1.0" encoding="UTF-8"?><Response><Say>')
        assert "<Hangup/>" in answer.text  # the message is already here: nothing more to record
        number = spoken_number(answer.text)

        (listed,) = await incidents_of_caller(client, intake, caller)
        stored = await incident(client, intake, listed["incident_id"])
    assert stored["number"] == number
    assert stored["channel"] == "phone"
    assert stored["title"] == "The billing database is down."
    assert "Nobody can send invoices since 9 am." in stored["description"]
    assert params["RecordingUrl"] in stored["description"]

    (reported,) = await events_of(intake, stored["incident_id"], at_least=1)
    assert reported["type"] == "incident.reported"
    assert reported["tenant_id"] == "tenant-a"
    assert reported["data"]["channel"] == "phone"
    assert reported["data"]["number"] == number
    assert reported["data"]["reporter"]["phone"] == caller


async def test_a_call_records_a_message_whose_transcription_joins_the_incident_later(intake: IntakeUnderTest) -> None:
    caller = new_caller()
    call_sid = "CA" + uuid.uuid4().hex
    recording_sid = "RE" + uuid.uuid4().hex
    recording_url = f"https://api.twilio.com/2010-04-01/Accounts/AC1/Recordings/{recording_sid}"
    async with httpx.AsyncClient(base_url=intake.base_url, timeout=30) as client:
        ringing = await post_signed(client, intake, VOICE, call_params(intake, caller, call_sid=call_sid))
        assert ringing.status_code == 200, ringing.text
        number = spoken_number(ringing.text)
        # The caller is asked to speak, and Twilio is told where to send the recording and its text.
        assert f'action="{intake.base_url}{RECORDED}"' in ringing.text
        assert f'transcribeCallback="{intake.base_url}{TRANSCRIPTION}"' in ringing.text
        assert 'transcribe="true"' in ringing.text

        recorded = await post_signed(
            client,
            intake,
            RECORDED,
            call_params(
                intake,
                caller,
                call_sid=call_sid,
                CallStatus="in-progress",
                RecordingUrl=recording_url,
                RecordingSid=recording_sid,
                RecordingDuration="14",
                Digits="#",
            ),
        )
        assert recorded.status_code == 200, recorded.text
        assert spoken_number(recorded.text) == number
        assert "<Hangup/>" in recorded.text

        transcribed = await post_signed(
            client,
            intake,
            TRANSCRIPTION,
            call_params(
                intake,
                caller,
                call_sid=call_sid,
                CallStatus="completed",
                RecordingUrl=recording_url,
                RecordingSid=recording_sid,
                TranscriptionSid="TR" + uuid.uuid4().hex,
                TranscriptionStatus="completed",
                TranscriptionText="The label printer in the warehouse prints blank pages.",
            ),
        )
        assert transcribed.status_code == 200, transcribed.text
        assert transcribed.text.endswith("<Response></Response>")

        (listed,) = await incidents_of_caller(client, intake, caller)
        stored = await incident(client, intake, listed["incident_id"])
    assert stored["number"] == number
    # Titled by the caller's first words once they are known (issue 8, item 9).
    assert stored["title"] == "The label printer in the warehouse prints blank pages."
    words = [entry for entry in stored["timeline"] if "label printer" in entry["summary"]]
    assert [entry["kind"] for entry in words] == ["comment"]
    assert any(recording_url in entry["summary"] for entry in stored["timeline"])

    events = await events_of(intake, stored["incident_id"], at_least=3)
    assert [event["type"] for event in events] == ["incident.reported", "incident.updated", "incident.updated"]
    assert "label printer" in events[2]["data"]["message"]
    assert events[2]["data"]["channel"] == "phone"


async def test_a_second_call_from_the_same_caller_updates_the_open_incident(intake: IntakeUnderTest) -> None:
    caller = new_caller()
    async with httpx.AsyncClient(base_url=intake.base_url, timeout=30) as client:
        first = await post_signed(
            client,
            intake,
            VOICE,
            call_params(intake, caller, TranscriptionText="Our VPN is down.", TranscriptionStatus="completed"),
        )
        second = await post_signed(
            client,
            intake,
            VOICE,
            call_params(
                intake,
                caller,
                TranscriptionText="It is still down and now email fails too.",
                TranscriptionStatus="completed",
            ),
        )
        assert first.status_code == second.status_code == 200, second.text
        assert spoken_number(second.text) == spoken_number(first.text)
        assert "added this call to your open incident" in second.text

        (listed,) = await incidents_of_caller(client, intake, caller)
        stored = await incident(client, intake, listed["incident_id"])
    assert stored["occurrence_count"] == 1  # a comment with new words, not a repeat of the alert
    events = await events_of(intake, stored["incident_id"], at_least=2)
    assert [event["type"] for event in events] == ["incident.reported", "incident.updated"]
    assert events[1]["data"]["kind"] == "comment"
    assert "now email fails too" in events[1]["data"]["message"]


async def test_a_retried_webhook_with_the_same_call_sid_opens_one_incident(intake: IntakeUnderTest) -> None:
    caller = new_caller()
    params = call_params(
        intake, caller, TranscriptionText="The web shop shows error 502.", TranscriptionStatus="completed"
    )
    async with httpx.AsyncClient(base_url=intake.base_url, timeout=30) as client:
        # Twilio retries when it got no answer in time: one retry racing the first, one after it.
        racing = await asyncio.gather(*(post_signed(client, intake, VOICE, params) for _ in range(2)))
        later = await post_signed(client, intake, VOICE, params)
        answers = [*racing, later]
        assert [answer.status_code for answer in answers] == [200, 200, 200]
        assert len({answer.text for answer in answers}) == 1  # every attempt hears the same answer
        assert "Your incident number is" in later.text

        (listed,) = await incidents_of_caller(client, intake, caller)
    assert listed["occurrence_count"] == 1
    events = await events_of(intake, listed["incident_id"], at_least=1)
    assert [event["type"] for event in events] == ["incident.reported"]


def _refusal_is_a_403_problem(answer: httpx.Response) -> dict[str, Any]:
    assert answer.status_code == 403, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = answer.json()
    assert "X-Twilio-Signature" in body["detail"]
    return body


async def _nothing_reached_kafka_or_the_store(client: httpx.AsyncClient, intake: IntakeUnderTest, caller: str) -> None:
    assert await incidents_of_caller(client, intake, caller) == []
    mentioning = [event for event in await kafka_events(intake) if caller in json.dumps(event)]
    assert mentioning == []


async def test_a_wrong_signature_is_refused_and_nothing_reaches_kafka(intake: IntakeUnderTest) -> None:
    caller = new_caller()
    params = call_params(intake, caller, TranscriptionText="Please reset my password.")
    signature = twilio_sign(intake.tenants["tenant-a"].phone_auth_token, intake.base_url + VOICE, params)
    tampered = params | {"TranscriptionText": "Please delete all our data."}
    async with httpx.AsyncClient(base_url=intake.base_url, timeout=30) as client:
        answer = await client.post(VOICE, data=tampered, headers={"X-Twilio-Signature": signature})
        body = _refusal_is_a_403_problem(answer)
        assert intake.base_url + VOICE in body["detail"]  # tells the operator which URL must be configured
        await _nothing_reached_kafka_or_the_store(client, intake, caller)


async def test_a_request_without_signature_is_refused(intake: IntakeUnderTest) -> None:
    caller = new_caller()
    async with httpx.AsyncClient(base_url=intake.base_url, timeout=30) as client:
        answer = await client.post(VOICE, data=call_params(intake, caller, TranscriptionText="Hello?"))
        _refusal_is_a_403_problem(answer)
        await _nothing_reached_kafka_or_the_store(client, intake, caller)


async def test_a_signature_made_with_another_tenants_token_is_refused(intake: IntakeUnderTest) -> None:
    caller = new_caller()
    params = call_params(intake, caller, tenant="tenant-a", TranscriptionText="Our printer is on fire.")
    async with httpx.AsyncClient(base_url=intake.base_url, timeout=30) as client:
        answer = await post_signed(client, intake, VOICE, params, token=intake.tenants["tenant-b"].phone_auth_token)
        _refusal_is_a_403_problem(answer)
        await _nothing_reached_kafka_or_the_store(client, intake, caller)


async def test_an_unknown_number_gets_the_same_answer_as_a_wrong_signature(intake: IntakeUnderTest) -> None:
    caller = new_caller()
    unknown = call_params(intake, caller) | {"To": "+15550009999"}
    wrong = call_params(intake, caller)
    async with httpx.AsyncClient(base_url=intake.base_url, timeout=30) as client:
        to_unknown = await post_signed(client, intake, VOICE, unknown, token="a-token-nobody-registered")
        to_known = await post_signed(client, intake, VOICE, wrong, token="a-token-nobody-registered")
        assert _refusal_is_a_403_problem(to_unknown) == _refusal_is_a_403_problem(to_known)
        await _nothing_reached_kafka_or_the_store(client, intake, caller)


async def test_a_signed_request_missing_call_fields_gets_a_problem_naming_them(intake: IntakeUnderTest) -> None:
    params = {"To": intake.tenants["tenant-a"].phone_number, "CallStatus": "ringing"}
    async with httpx.AsyncClient(base_url=intake.base_url, timeout=30) as client:
        answer = await post_signed(client, intake, VOICE, params)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert {error["field"] for error in answer.json()["errors"]} == {"CallSid", "From"}


async def test_a_body_that_is_not_a_form_is_refused_with_415(intake: IntakeUnderTest) -> None:
    async with httpx.AsyncClient(base_url=intake.base_url, timeout=30) as client:
        answer = await client.post(VOICE, json={"CallSid": "CA1"}, headers={"X-Twilio-Signature": "x"})
    assert answer.status_code == 415, answer.text
    assert "application/x-www-form-urlencoded" in answer.json()["detail"]


async def test_a_line_over_its_rate_limit_gets_429_with_retry_after(limited_intake: IntakeUnderTest) -> None:
    caller = new_caller()
    async with httpx.AsyncClient(base_url=limited_intake.base_url, timeout=30) as client:
        # 3 a minute: 8 quick calls span at most two one-minute windows, so at least 2 are refused.
        answers = [
            await post_signed(client, limited_intake, VOICE, call_params(limited_intake, caller)) for _ in range(8)
        ]
    statuses = [answer.status_code for answer in answers]
    assert set(statuses) == {200, 429}, statuses
    refused = next(answer for answer in answers if answer.status_code == 429)
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert "3 requests a minute" in refused.json()["detail"]


async def test_a_title_a_person_changed_is_kept_when_the_transcript_arrives(intake: IntakeUnderTest) -> None:
    caller = new_caller()
    call_sid = "CA" + uuid.uuid4().hex
    async with httpx.AsyncClient(base_url=intake.base_url, timeout=30) as client:
        ringing = await post_signed(client, intake, VOICE, call_params(intake, caller, call_sid=call_sid))
        assert ringing.status_code == 200, ringing.text
        (listed,) = await incidents_of_caller(client, intake, caller)
        assert listed["title"] == f"Voice message from {caller}"
        # An operator renamed it meanwhile (written straight to the store: intake has no rename API yet).
        store: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(intake.infrastructure.mongo_url)
        try:
            await store[intake.database]["incidents"].update_one(
                {"_id": listed["incident_id"]}, {"$set": {"title": "Warehouse printers"}}
            )
        finally:
            await store.close()
        transcribed = await post_signed(
            client,
            intake,
            TRANSCRIPTION,
            call_params(
                intake,
                caller,
                call_sid=call_sid,
                TranscriptionSid="TR" + uuid.uuid4().hex,
                TranscriptionStatus="completed",
                TranscriptionText="All label printers print blank pages.",
            ),
        )
        assert transcribed.status_code == 200, transcribed.text
        stored = await incident(client, intake, listed["incident_id"])
    assert stored["title"] == "Warehouse printers"
    assert any("All label printers" in entry["summary"] for entry in stored["timeline"])
