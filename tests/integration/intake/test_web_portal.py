"""Web form: a customer reports a problem on the tenant's portal page, with plain HTML form
posts (no JavaScript), against a real intake process, the real broker and store."""

from __future__ import annotations

import html
import json
import re
import uuid
from typing import Any

import httpx

from intake.conftest import IntakeUnderTest

from kafka_helpers import read_all, wait_until

INCIDENTS_TOPIC = "aftercare.incidents"


def portal(intake: IntakeUnderTest, tenant: str = "tenant-a") -> str:
    return f"/portal/{intake.tenants[tenant].portal_slug}"


def form_token(page: str) -> str:
    match = re.search(r'name="form_token" value="([0-9a-f]{32})"', page)
    assert match, "the form carries no one-time token"
    return match.group(1)


def filled_form(token: str, **changes: str) -> dict[str, str]:
    return {
        "form_token": token,
        "name": "Dana Kowalski",
        "email": "dana@customer.example.net",
        "phone": "+44 20 7946 0000",
        "system": "billing-db",
        "impact": "down",
        "title": f"Invoices cannot be printed {uuid.uuid4().hex[:8]}",
        "description": "Since 9 am every print job fails.\nThe whole accounts team is blocked.",
    } | changes


async def open_form(client: httpx.AsyncClient, intake: IntakeUnderTest, tenant: str = "tenant-a") -> str:
    answer = await client.get(portal(intake, tenant))
    assert answer.status_code == 200, answer.text
    return form_token(answer.text)


def status_path(answer: httpx.Response, intake: IntakeUnderTest, tenant: str = "tenant-a") -> str:
    assert answer.status_code == 303, answer.text
    location = answer.headers["location"]
    expected = re.escape(intake.base_url + portal(intake, tenant)) + r"/incidents/([0-9a-f-]{36})\?reported=1"
    match = re.fullmatch(expected, location)
    assert match, location
    return location.removeprefix(intake.base_url)


def incident_id_of(path: str) -> str:
    return path.split("/incidents/")[1].split("?")[0]


async def kafka_events_of(intake: IntakeUnderTest, incident_id: str, *, at_least: int) -> list[dict[str, Any]]:
    """The incident's events once each (the outbox publishes at least once; ids deduplicate)."""

    async def enough() -> list[dict[str, Any]] | None:
        records = await read_all(intake.infrastructure.bootstrap_servers, INCIDENTS_TOPIC, timeout=20)
        unique: dict[str, dict[str, Any]] = {}
        for record in records:
            event = json.loads(record.value)
            if event["incident_id"] == incident_id:
                unique.setdefault(event["id"], event)
        return list(unique.values()) if len(unique) >= at_least else None

    return await wait_until(enough, timeout=30, message=f"{at_least} events of {incident_id} on Kafka")


async def test_the_form_offers_the_tenants_systems_and_works_without_javascript(intake: IntakeUnderTest) -> None:
    async with httpx.AsyncClient(base_url=intake.base_url, timeout=30) as client:
        answer = await client.get(portal(intake))
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    page = answer.text
    assert "<script" not in page
    assert re.search(r'<form id="form" method="post"', page)
    assert '<option value="billing-db">billing-db</option>' in page
    assert '<option value="" selected>Not sure</option>' in page
    for field in ("name", "email", "phone", "system", "title", "description"):
        assert f'<label for="{field}">' in page, field
    assert page.count('type="radio" id="impact-') == 4
    form_token(page)
    # No framing, no referrer leaking the link's secret, no cached copies on shared computers.
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert "no-store" in answer.headers["cache-control"]
    assert "script-src" not in answer.headers["content-security-policy"]


async def test_a_valid_report_redirects_to_a_status_page_with_the_incident_number(intake: IntakeUnderTest) -> None:
    async with httpx.AsyncClient(base_url=intake.base_url, timeout=30, follow_redirects=False) as client:
        sent = filled_form(await open_form(client, intake))
        answer = await client.post(portal(intake), data=sent)
        path = status_path(answer, intake)
        incident_id = incident_id_of(path)
        page = await client.get(path)
        stored = (await client.get(f"/v1/incidents/{incident_id}", headers=intake.auth("tenant-a"))).json()

    assert page.status_code == 200
    assert stored["number"] in page.text
    assert "Thank you, we have your report" in page.text
    assert "Received, waiting for an engineer" in page.text
    status_link = intake.base_url + path.split("?")[0]
    assert f'<a href="{status_link}">{status_link}</a>' in page.text
    assert html.escape(sent["title"]) in page.text

    assert stored["channel"] == "web"
    assert stored["title"] == sent["title"]
    assert stored["description"] == sent["description"]
    assert stored["severity"] == "critical"
    assert stored["system"] == "billing-db"
    assert stored["reporter"] == {
        "name": "Dana Kowalski",
        "email": "dana@customer.example.net",
        "phone": "+44 20 7946 0000",
        "system": None,
    }

    (reported,) = await kafka_events_of(intake, incident_id, at_least=1)
    assert reported["type"] == "incident.reported"
    assert reported["tenant_id"] == "tenant-a"
    assert reported["data"]["channel"] == "web"
    assert reported["data"]["number"] == stored["number"]
    assert reported["data"]["reporter"]["email"] == "dana@customer.example.net"


async def test_the_status_page_shows_the_current_status_when_reloaded(intake: IntakeUnderTest) -> None:
    async with httpx.AsyncClient(base_url=intake.base_url, timeout=30) as client:
        answer = await client.post(
            portal(intake), data=filled_form(await open_form(client, intake)), follow_redirects=False
        )
        path = status_path(answer, intake).split("?")[0]
        incident_id = incident_id_of(path)
        before = await client.get(path)
        resolved = await client.post(
            f"/v1/incidents/{incident_id}/resolve",
            headers=intake.auth("tenant-a"),
            json={"by": "operator", "resolution": "internal: restarted spooler on db-7"},
        )
        assert resolved.status_code == 200, resolved.text
        after = await client.get(path)
    assert "Received, waiting for an engineer" in before.text
    assert "Thank you, we have your report" not in before.text  # only right after sending
    assert "<strong>Resolved</strong>" in after.text
    assert "The problem was resolved" in after.text
    assert "restarted spooler" not in after.text  # operators' notes stay internal


async def test_invalid_input_comes_back_with_a_message_per_field_and_the_values_kept(intake: IntakeUnderTest) -> None:
    async with httpx.AsyncClient(base_url=intake.base_url, timeout=30) as client:
        token = await open_form(client, intake)
        answer = await client.post(
            portal(intake),
            data=filled_form(token, title="   ", email="dana-at-customer", impact="", name='Dana "DK" Kowalski'),
        )
    assert answer.status_code == 422
    assert answer.headers["content-type"].startswith("text/html")
    page = answer.text
    assert "Please correct 3 fields" in page
    assert "Describe the problem in one line." in page
    assert "Enter an email address like name@example.com." in page
    assert "Choose how badly the problem affects you." in page
    assert 'value="dana-at-customer"' in page
    assert 'value="Dana &#34;DK&#34; Kowalski"' in page
    assert "The whole accounts team is blocked." in page
    assert '<option value="billing-db" selected>' in page
    assert 'aria-invalid="true"' in page
    assert form_token(page) == token  # sending the corrected form still counts as the same report


async def test_an_unknown_portal_link_gets_a_404_page_saying_the_link_is_wrong(intake: IntakeUnderTest) -> None:
    async with httpx.AsyncClient(base_url=intake.base_url, timeout=30) as client:
        unknown = await client.get("/portal/NoSuchPortalLink123")
        posted = await client.post("/portal/NoSuchPortalLink123", data=filled_form("0" * 32))
        malformed = await client.get("/portal/%3Cb%3E")
    for answer in (unknown, posted, malformed):
        assert answer.status_code == 404
        assert answer.headers["content-type"].startswith("text/html")
        assert "This link is not right" in answer.text


async def test_an_incident_of_another_tenant_is_not_shown_on_this_portal(intake: IntakeUnderTest) -> None:
    async with httpx.AsyncClient(base_url=intake.base_url, timeout=30) as client:
        answer = await client.post(
            portal(intake, "tenant-b"), data=filled_form(await open_form(client, intake, "tenant-b"))
        )
        path_b = status_path(answer, intake, "tenant-b")
        on_a = await client.get(portal(intake, "tenant-a") + "/incidents/" + incident_id_of(path_b))
        nonsense = await client.get(portal(intake, "tenant-a") + "/incidents/not-an-id")
    for page in (on_a, nonsense):
        assert page.status_code == 404
        assert "No incident at this link" in page.text


async def test_sending_the_same_form_twice_gives_the_same_incident(intake: IntakeUnderTest) -> None:
    async with httpx.AsyncClient(base_url=intake.base_url, timeout=30) as client:
        sent = filled_form(await open_form(client, intake))
        first = await client.post(portal(intake), data=sent)
        again = await client.post(portal(intake), data=sent)
        # The browser's "resend" after the user changed a word is still the same submission.
        edited = await client.post(portal(intake), data=sent | {"description": "More words."})
    assert status_path(first, intake) == status_path(again, intake) == status_path(edited, intake)
    events = await kafka_events_of(intake, incident_id_of(status_path(first, intake)), at_least=1)
    assert [event["type"] for event in events] == ["incident.reported"]


async def test_another_report_sent_with_a_used_form_comes_back_with_its_text_and_a_message(
    intake: IntakeUnderTest,
) -> None:
    async with httpx.AsyncClient(base_url=intake.base_url, timeout=30) as client:
        token = await open_form(client, intake)
        first = await client.post(portal(intake), data=filled_form(token))
        other = filled_form(token, title="The scanner in hall 2 is offline", description="Since noon.")
        refused = await client.post(portal(intake), data=other)
        assert refused.status_code == 409, refused.text
        assert "The scanner in hall 2 is offline" in refused.text and "Since noon." in refused.text
        number = (await client.get(status_path(first, intake))).text
        assert "already sent as incident INC-" in refused.text and "NOT sent yet" in refused.text
        # Sending it again from the page it came back on (a fresh token) reports it as a new incident.
        resent = await client.post(portal(intake), data=other | {"form_token": form_token(refused.text)})
    assert incident_id_of(status_path(resent, intake)) != incident_id_of(status_path(first, intake))
    assert number


async def test_html_in_what_the_customer_typed_is_shown_as_text(intake: IntakeUnderTest) -> None:
    title = "<script>alert('pwned')</script> printer & <b>scanner</b>"
    async with httpx.AsyncClient(base_url=intake.base_url, timeout=30) as client:
        answer = await client.post(
            portal(intake),
            data=filled_form(await open_form(client, intake), title=title, name="<img src=x onerror=alert(1)>"),
        )
        page = await client.get(status_path(answer, intake))
        invalid = await client.post(
            portal(intake), data=filled_form(await open_form(client, intake), title=title, email="bad")
        )
    for body in (page.text, invalid.text):
        assert "<script>alert" not in body
        assert "<b>scanner</b>" not in body
        assert "<img src=x" not in body
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt; printer &amp; &lt;b&gt;scanner&lt;/b&gt;" in page.text


async def test_a_portal_over_its_rate_limit_gets_a_429_page_with_retry_after(limited_intake: IntakeUnderTest) -> None:
    async with httpx.AsyncClient(base_url=limited_intake.base_url, timeout=30) as client:
        # 3 a minute: 8 quick reports span at most two one-minute windows, so at least 2 are refused.
        answers = [
            await client.post(portal(limited_intake), data=filled_form(await open_form(client, limited_intake)))
            for _ in range(8)
        ]
    statuses = [answer.status_code for answer in answers]
    assert set(statuses) == {303, 429}, statuses
    refused = next(answer for answer in answers if answer.status_code == 429)
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["content-type"].startswith("text/html")
    assert "Too many reports right now" in refused.text
