async def test_a_run_waiting_on_a_slow_system_does_not_hold_up_starting_another() -> None:
    database, bus = MemoryDatabase(), MemoryBus()
    await acme_with_a_noop_runbook(database)
    db: Any = database
    store = RemediationStore(db)
    turns = Turns()
    relay = RunOutboxRelay(bus, turn=turns)  # type: ignore[arg-type]
    desk = EscalationDesk(store, relay, turns, lambda: T0, b"secret", "http://remediation", DueTimes(db))
    answering = asyncio.Event()
    probed: list[str] = []

    class SlowSystem(SystemCaller):
        async def probe(self, url: str, timeout_s: float, allowlist: list[str]) -> ProbeAnswer:
            probed.append(url)
            await answering.wait()
            return ProbeAnswer(200, 1.0, '{"status":"healthy"}')

    # One drive at a time in this process (the permits bound the store work).
    engine = RunEngine(
        store, TenantCopy(db), CredentialVault(db, None), SlowSystem(), desk, relay, turns, lambda: T0, 15.0, 1
    )
    assert await engine.consider("i-0", document=incident(0)) == "run started"
    for _ in range(100):
        if probed:
            break
        await asyncio.sleep(0)
    assert probed, "the first run never reached its verification probe"

    # The first run waits on the system's answer; the second is admitted and probes meanwhile.
    assert await engine.consider("i-1", document=incident(1)) == "run started"
    for _ in range(100):
        if len(probed) == 2:
            break
        await asyncio.sleep(0)
    started = [e.incident_id for e in bus.published if e.type == "remediation.started"]
    assert started == ["i-0", "i-1"], started
    assert len(probed) == 2

    answering.set()
    await drives_done(engine)
    for number in range(2):
        loaded = await store.load_run(f"i-{number}")
        assert loaded is not None and loaded[0].status == "succeeded", loaded
    await engine.stop()
