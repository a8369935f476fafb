"""Reads of a tenant, its kill switch or a runbook's head that many drives need at one moment are
made once (in the 500-run bench every drive found the one-second copy stale together and read it
again: about one read of each per run)."""

from __future__ import annotations

import asyncio

from aftercare.remediation.adapters.shared_reads import SharedReads


class Store:
    def __init__(self) -> None:
        self.reads = 0
        self.value = "before"
        self.answer = asyncio.Event()

    async def read(self, key: str) -> str:
        self.reads += 1
        value = self.value  # as it was when the read began
        await self.answer.wait()
        return f"{key}:{value}"


async def test_callers_that_need_a_value_being_read_wait_for_that_read() -> None:
    store = Store()
    reads = SharedReads(store.read)
    waiting = [asyncio.create_task(reads.get("acme", 1.0)) for _ in range(10)]
    await asyncio.sleep(0)
    store.answer.set()
    assert await asyncio.gather(*waiting) == ["acme:before"] * 10
    assert store.reads == 1
    assert await reads.get("acme", 1.0) == "acme:before"  # kept for a second
    assert store.reads == 1
    assert await reads.get("acme", 0.0) == "acme:before"  # max age 0: read now
    assert store.reads == 2


async def test_a_value_forgotten_while_it_is_read_is_not_kept_from_that_read() -> None:
    store = Store()
    reads = SharedReads(store.read)
    first = asyncio.create_task(reads.get("acme", 1.0))
    await asyncio.sleep(0)
    reads.forget("acme")  # this process changed it (a kill switch set through its API)
    store.value = "after"
    store.answer.set()
    assert await first == "acme:before"  # asked before the change
    assert await reads.get("acme", 1.0) == "acme:after"
    assert store.reads == 2


async def test_a_value_the_caller_does_not_keep_is_read_again() -> None:
    store = Store()
    store.answer.set()
    reads = SharedReads(store.read, keep=lambda value: value.endswith("after"))
    assert await reads.get("acme", 1.0) == "acme:before"  # e.g. a tenant not known yet
    store.value = "after"
    assert await reads.get("acme", 1.0) == "acme:after"
    assert await reads.get("acme", 1.0) == "acme:after"
    assert store.reads == 2
