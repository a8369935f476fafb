"""Bounded field sizes in every channel (domain/field_limits.py), through the real HTTP server and
real SMTP: a field over its limit is refused in the channel's own way, naming the field and the
limit, and nothing reaches Kafka (an event over Kafka's message limit never gets that far)."""

from __future__ import annotations

import uuid
from email.message import EmailMessage

import httpx
import pytest

from aftercare.intake.domain import field_limits as limits

from .answers import assert_problem
from .conftest import IntakeUnderTest
from .test_alertmanager import topic_mentions
from .test_email_channel import deliver, plain_email
from .test_pagerduty import ENQUEUE, trigger
from .test_phone_channel import VOICE, call_params, new_caller, post_signed
from .test_web_portal import filled_form, open_form, portal

pytestmark = pytest.mark.integration


def marker() -> str:
    return f"limits-{uuid.uuid4().hex[:10]}"


async def test_the_json_api_names_each_field_over_its_limit_in_a_422_problem(
    intake: IntakeUnderTest, client: httpx.AsyncClient
) -> None:
    mark = marker()
    answer = await client.post(
        "/v1/incidents",
        headers=intake.auth("tenant-a"),
        json={
            "title": mark,
            "labels": {"team": "t" * (limits.LABEL_VALUE_CHARS + 1)},
            "reporter": {"name": "n" * (limits.NAME_CHARS + 1)},
        },
    )

    problem = assert_problem(answer, 422)
    fields = {error["field"]: error["message"] for error in problem["errors"]}
    assert set(fields) == {"labels.team", "reporter.name"}, fields
    assert str(limits.LABEL_VALUE_CHARS) in fields["labels.team"]
    assert str(limits.NAME_CHARS) in fields["reporter.name"]
    assert await topic_mentions(intake, mark) == []


async def test_pagerduty_gets_its_own_400_naming_the_field(intake: IntakeUnderTest, client: httpx.AsyncClient) -> None:
    mark = marker()
    event = trigger(intake.tenants["tenant-a"].routing_key, mark, mark)
    event["payload"]["source"] = "h" * (limits.PAGERDUTY_FIELD_CHARS + 1)

    answer = await client.post(ENQUEUE, json=event)

    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.json() == {
        "status": "invalid event",
        "message": "Event object is invalid",
        "errors": [f"'payload.source' is too long (maximum is {limits.PAGERDUTY_FIELD_CHARS} characters)"],
    }
    assert await topic_mentions(intake, mark) == []


async def test_a_pagerduty_body_over_intakes_limit_is_refused_in_pagerdutys_format(client: httpx.AsyncClient) -> None:
    answer = await client.post(ENQUEUE, content=b"{" + b" " * (2 * 1024 * 1024) + b"}")

    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["status"] == "invalid event" and "512 KB" in body["errors"][0]


async def test_a_phone_parameter_over_its_limit_is_a_422_problem_naming_it(intake: IntakeUnderTest) -> None:
    caller = new_caller()
    params = call_params(intake, caller, CallerName="c" * (limits.NAME_CHARS + 1))
    async with httpx.AsyncClient(base_url=intake.base_url, timeout=30.0) as client:
        answer = await post_signed(client, intake, VOICE, params)

    problem = assert_problem(answer, 422)
    assert [error["field"] for error in problem["errors"]] == ["CallerName"]
    assert str(limits.NAME_CHARS) in problem["errors"][0]["message"]
    assert await topic_mentions(intake, caller) == []


async def test_the_web_form_comes_back_with_a_message_at_the_field_over_its_limit(intake: IntakeUnderTest) -> None:
    async with httpx.AsyncClient(base_url=intake.base_url, timeout=30.0) as client:
        token = await open_form(client, intake)
        mark = marker()
        answer = await client.post(portal(intake), data=filled_form(token, title=mark + "t" * limits.TITLE_CHARS))

    assert answer.status_code == 422, answer.text
    assert f"Use at most {limits.TITLE_CHARS} characters here" in answer.text
    assert await topic_mentions(intake, mark) == []


async def test_an_email_whose_subject_is_over_its_limit_gets_552_naming_the_subject(intake: IntakeUnderTest) -> None:
    mark = marker()
    message: EmailMessage = plain_email(
        mark + " " + "word " * (limits.SUBJECT_CHARS // 5 + 10),
        "The printer is on fire.",
        to=intake.tenants["tenant-a"].inbound_email,
    )

    code, reply = await deliver(intake, message)

    assert code == 552, reply
    assert "5.3.4" in reply and "'Subject'" in reply and f"{limits.SUBJECT_CHARS:,}" in reply
    assert await topic_mentions(intake, mark) == []
