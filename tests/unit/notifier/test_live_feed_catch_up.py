"""A browser misses no row between its page and its live connection, nor across a reconnect; one
whose missed rows are no longer remembered is told to reload, never left silently stale.

Found by CI: the dashboard page was drawn, then the incident's approval was pushed before the
browser's EventSource had connected (a loaded machine), and the approval never appeared.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aftercare.notifier.adapters.live_feed import LiveFeed, LiveRow


def view(incident_id: str, status: str) -> dict[str, Any]:
    return {"incident_id": incident_id, "tenant_id": "acme", "status": status, "timeline": []}


def statuses(rows: list[LiveRow] | None) -> list[tuple[str, str]]:
    assert rows is not None, "rows were lost"
    decoded = [json.loads(row.frame.decode().split("data: ", 1)[1]) for row in rows]
    return [(row["incident_id"], row["status"]) for row in decoded]


def test_a_connection_made_after_rows_were_pushed_gets_every_row_since_its_page() -> None:
    feed = LiveFeed(replay_margin_s=0)
    feed.publish(view("i0", "reported"), "e0")  # before the page: the page shows it already
    page = feed.stamp()
    feed.publish(view("i1", "reported"), "e1")
    feed.publish(view("i1", "awaiting approval"), "e2")

    subscription = feed.subscribe(since=page)
    assert statuses(subscription.take()) == [("i1", "reported"), ("i1", "awaiting approval")]
    assert subscription.take() == []
    feed.publish(view("i2", "reported"), "e3")
    assert statuses(subscription.take()) == [("i2", "reported")]


def test_rows_pushed_just_before_the_page_are_sent_again_in_order() -> None:
    # The tail pushes before the store has the event: a page read a moment later may not show it.
    feed = LiveFeed()  # the service's margin
    feed.publish(view("i1", "reported"), "e1")
    feed.publish(view("i1", "triaged"), "e2")
    page = feed.stamp()
    assert statuses(feed.subscribe(since=page).take()) == [("i1", "reported"), ("i1", "triaged")]


def test_a_reconnecting_browser_gets_the_rows_after_its_last_event_id() -> None:
    feed = LiveFeed(replay_margin_s=0)
    first = feed.subscribe()
    feed.publish(view("i1", "reported"), "e1")
    [seen] = first.take() or []
    feed.unsubscribe(first)  # the connection drops
    feed.publish(view("i1", "resolved"), "e2")

    last_event_id = seen.frame.decode().split("\n", 1)[0].removeprefix("id: ")
    again = feed.subscribe(since=float(last_event_id))
    assert statuses(again.take()) == [("i1", "resolved")]


def test_a_browser_whose_missed_rows_were_forgotten_is_told_so() -> None:
    feed = LiveFeed(remembered_rows=3, replay_margin_s=0)
    slow = feed.subscribe()
    for number in range(5):
        feed.publish(view(f"i{number}", "reported"), f"e{number}")
    assert slow.take() is None  # the first two rows are gone: reload the page

    page = feed.stamp()
    assert feed.subscribe(since=page).take() == []
    # A stamp from before the oldest remembered row (or before this instance started).
    assert LiveFeed().subscribe(since=page).take() is None


async def test_a_waiting_browser_wakes_when_a_row_arrives() -> None:
    feed = LiveFeed()
    subscription = feed.subscribe()
    assert await subscription.wait(0.01) is False
    waiting = asyncio.create_task(subscription.wait(5))
    await asyncio.sleep(0)
    feed.publish(view("i1", "reported"), "e1")
    assert await waiting is True
    assert statuses(subscription.take()) == [("i1", "reported")]
