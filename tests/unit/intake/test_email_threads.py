"""Email threads are found by ``_id`` (issue 6): each Message-ID an incident holds is an
``email_threads`` document ``<tenant>:<Message-ID>``; the incidents' arrays are not searched."""

from __future__ import annotations

from aftercare.events.incidents import Channel, Reporter
from aftercare.events.testing import MemoryBus, MemoryDatabase
from aftercare.intake.adapters.incident_store import IncidentStore
from aftercare.intake.domain.incident import IncidentReport
from aftercare.intake.service_layer.report_incident import add_information, report


async def test_a_reply_to_a_reply_is_found_through_the_thread_keys_alone() -> None:
    database = MemoryDatabase()
    store = IncidentStore(database, MemoryBus())  # type: ignore[arg-type]
    opened = await report(
        store, "acme", IncidentReport(title="Printer stuck", channel=Channel.EMAIL), email_message_ids=["<a@mail>"]
    )
    incident_id = opened.incident.incident_id
    await add_information(
        store,
        "acme",
        incident_id,
        channel=Channel.EMAIL,
        kind="comment",
        message="Floor 2 too",
        author=Reporter(email="ann@acme.example"),
        email_message_ids=["<b@mail>"],
    )
    threads = database["email_threads"]
    assert {d["_id"]: d["incident_id"] async for d in threads.find({})} == {
        "acme:<a@mail>": incident_id,
        "acme:<b@mail>": incident_id,
    }
    # The lookup must not depend on the incident's array (a scan on the embedded store).
    await store.collection.update_one({"_id": incident_id}, {"$unset": {"email_message_ids": ""}})

    reply_to_reply = await store.find_by_email_message_id("acme", ["<unknown@mail>", "<b@mail>", "<a@mail>"])
    assert reply_to_reply is not None and reply_to_reply.incident_id == incident_id
    assert await store.find_by_email_message_id("globex", ["<b@mail>"]) is None  # another tenant's keys
    assert await store.find_by_email_message_id("acme", ["<unknown@mail>"]) is None


async def test_a_message_id_threads_to_the_first_incident_that_held_it() -> None:
    store = IncidentStore(MemoryDatabase(), MemoryBus())  # type: ignore[arg-type]
    first = await report(store, "acme", IncidentReport(title="one", channel=Channel.EMAIL), email_message_ids=["<m>"])
    await report(store, "acme", IncidentReport(title="two", channel=Channel.EMAIL), email_message_ids=["<m>"])
    found = await store.find_by_email_message_id("acme", ["<m>"])
    assert found is not None and found.incident_id == first.incident.incident_id
