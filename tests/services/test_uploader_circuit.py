"""The circuit: when no record is at fault (credentials refused, Sentinel refusing every record
for one cause) nothing may be dead-lettered; the circuit opens for every replica, the batch is
held, and a probe closes the circuit once the cause is gone. An expired token only refreshes."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from shared.adapters.destination_state import CircuitState
from simulators.faults import SCHEMA_CHANGED, FaultKind
from simulators.sentinel import STIX_ROUTE
from tests.helpers import wait_for
from tests.services.uploader_rig import (
    CLIENT_ID,
    CLIENT_SECRET,
    QUEUE,
    SYSTEMIC,
    World,
    assert_committed,
    assert_recovered_once,
    assert_stored_once,
    run_until,
)


async def test_a_refusal_both_halves_share_opens_the_circuit_and_holds_the_batch(
    w: World,
) -> None:
    """A schema change on Sentinel's side refuses every request alike, naming no record.
    [8] → 400, [4] → 400, [4] → 400 with the same message: systemic. The circuit opens with
    Sentinel's message, the batch is held (its probes, refused again, are not split), the
    rest stays queued, nothing is dead-lettered; once Sentinel accepts again the probe closes
    the circuit and every record arrives once."""
    items = await w.forward(range(12))
    w.sentinel.faults.inject(FaultKind.REJECT_ALL, route=STIX_ROUTE, times=10_000)
    stop = asyncio.Event()
    task = asyncio.create_task(w.uploader(batch_size=8).run(stop))
    try:

        async def probed_twice() -> bool:
            return len(w.statuses()) >= 5

        await wait_for(probed_twice, 15)
        state, reason, _ = await w.state.circuit()
        assert state is CircuitState.OPEN
        assert reason == SYSTEMIC
        counts = await w.bus.counts(QUEUE)
        assert (counts.depth, counts.in_flight, counts.dead_letter) == (4, 8, 0)
        assert set(w.statuses()) == {400}
        sizes = [len(r.json()["stixobjects"]) for r in w.sentinel.recorder.of(STIX_ROUTE)]
        assert sizes[:3] == [8, 4, 4]
        assert set(sizes[3:]) == {8}  # each probe is the held batch, whole: never split again
        assert w.sentinel.store == {}

        w.sentinel.faults.clear()  # Sentinel's side is fixed
        await wait_for(w.drained, 15)
    finally:
        stop.set()
        await task

    await assert_recovered_once(w, items)
    counters = await w.state.counters()
    assert counters["split"] == 1
    assert counters["systemic_rejection"] >= 2
    assert "rejected" not in counters
    assert "dead_lettered" not in counters
    assert (await w.bus.counts(QUEUE)).dead_letter == 0


async def test_every_record_named_with_one_message_opens_the_circuit_without_a_split(
    w: World,
) -> None:
    items = await w.forward(range(6))
    w.sentinel.faults.inject(FaultKind.REJECT_ALL, route=STIX_ROUTE, attributed=True, times=2)

    await run_until([w.uploader()], w.drained)

    assert w.statuses() == [400, 400, 200]  # refused, probe refused again, probe accepted
    await assert_recovered_once(w, items)
    counters = await w.state.counters()
    assert counters["systemic_rejection"] == 2
    assert "split" not in counters
    assert "dead_lettered" not in counters


async def test_batches_refused_entirely_in_a_row_open_the_circuit(w: World) -> None:
    """Batches of one, refused naming no record: each alone could be its record's fault, so
    the first is dead-lettered with Sentinel's message; the second in a row is judged
    systemic (``systemic_after=2``) and held, and the rest waits for the probe."""
    items = await w.forward(range(5))
    w.sentinel.faults.inject(FaultKind.REJECT_ALL, route=STIX_ROUTE, times=3)

    await run_until([w.uploader(batch_size=1, systemic_after=2)], w.drained)

    assert w.statuses() == [400, 400, 400, 200, 200, 200, 200]
    [letter] = await w.bus.dead_letters(QUEUE)
    assert letter.message_id == items[0].message.message_id
    assert letter.description == f"InvalidStixObjects: {SCHEMA_CHANGED}"
    await assert_recovered_once(w, items[1:])
    counters = await w.state.counters()
    assert (counters["systemic_rejection"], counters["dead_lettered"]) == (2, 1)


async def test_replicas_share_a_systemic_circuit_and_dead_letter_nothing(w: World) -> None:
    """Whichever replica finds the cause first opens the circuit in Redis; a batch of the
    other refused for that same cause is held at once (not split), and so is every probe."""
    items = await w.forward(range(16))
    w.sentinel.faults.inject(FaultKind.REJECT_ALL, route=STIX_ROUTE, times=10_000)
    other: Redis = Redis.from_url(w.redis_server.url)
    stop = asyncio.Event()
    replicas = [
        w.uploader(redis=client, consumer=name, batch_size=4)
        for client, name in ((w.redis, "replica-a"), (other, "replica-b"))
    ]
    tasks = [asyncio.create_task(r.run(stop)) for r in replicas]
    try:

        async def both_held() -> bool:
            counts = await w.bus.counts(QUEUE)
            return counts.in_flight == 8 and len(w.statuses()) >= 8

        await wait_for(both_held, 15)
        assert (await w.state.circuit())[0] is CircuitState.OPEN
        counts = await w.bus.counts(QUEUE)
        assert (counts.depth, counts.dead_letter) == (8, 0)
        assert (await w.state.counters())["split"] <= 2  # at most one split per replica
        w.sentinel.faults.clear()
        await wait_for(w.drained, 15)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await other.aclose()

    assert (await w.state.circuit())[0] is CircuitState.CLOSED
    assert_stored_once(w, items)
    await assert_committed(w, items)
    assert (await w.bus.counts(QUEUE)).dead_letter == 0


async def test_an_expired_token_is_refreshed_and_the_batch_arrives(w: World) -> None:
    items = await w.forward(range(3))
    w.sentinel.faults.inject(FaultKind.EXPIRED_TOKEN, route=STIX_ROUTE)

    await run_until([w.uploader()], w.drained)

    assert w.statuses() == [401, 200]
    assert len(w.entra.tokens_issued) == 2
    assert_stored_once(w, items)
    assert (await w.state.circuit())[0] is CircuitState.CLOSED


async def test_refused_credentials_open_the_circuit_until_they_are_fixed(w: World) -> None:
    items = await w.forward(range(4))
    w.entra.add_client(CLIENT_ID, "a-rotated-secret-the-uploader-lacks")
    stop = asyncio.Event()
    task = asyncio.create_task(w.uploader().run(stop))
    try:

        async def opened() -> bool:
            return (await w.state.circuit())[0] is CircuitState.OPEN

        await wait_for(opened, 15)
        reason = (await w.state.circuit())[1]
        assert "AuthenticationFailed" in reason
        counts = await w.bus.counts(QUEUE)
        assert (counts.in_flight, counts.dead_letter) == (4, 0)  # held, not burnt
        assert w.sentinel.store == {}

        w.entra.add_client(CLIENT_ID, CLIENT_SECRET)  # the operator fixes the secret
        await wait_for(w.drained, 15)
    finally:
        stop.set()
        await task

    await assert_recovered_once(w, items)


async def test_with_lanes_an_open_circuit_is_probed_and_closed_once(w: World) -> None:
    items = await w.forward(range(6))
    w.entra.add_client(CLIENT_ID, "a-rotated-secret-the-uploader-lacks")
    stop = asyncio.Event()
    task = asyncio.create_task(w.uploader(lanes=3, batch_size=2).run(stop))
    try:

        async def opened() -> bool:
            return (await w.state.circuit())[0] is CircuitState.OPEN

        await wait_for(opened, 15)
        assert (await w.bus.counts(QUEUE)).dead_letter == 0
        assert w.sentinel.store == {}
        w.entra.add_client(CLIENT_ID, CLIENT_SECRET)
        await wait_for(w.drained, 15)
    finally:
        stop.set()
        await task

    await assert_recovered_once(w, items)
