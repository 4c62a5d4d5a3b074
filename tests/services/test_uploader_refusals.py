"""Refusals a record owns: Sentinel's 400s that are one record's fault dead-letter that record
alone, with Sentinel's own message, and let the rest of its batch arrive."""

from __future__ import annotations

from shared.adapters.destination_state import CircuitState
from shared.core.stix import pattern
from simulators.faults import FaultKind
from simulators.sentinel import STIX_ROUTE
from tests.services.uploader_rig import (
    QUEUE,
    World,
    assert_committed,
    assert_stored_once,
    run_until,
)


async def test_records_sentinel_rejects_are_dead_lettered_with_its_message(w: World) -> None:
    items = await w.forward(range(5))
    w.sentinel.faults.inject(FaultKind.PARTIAL_ERRORS, route=STIX_ROUTE, record_indexes=(1, 3))

    await run_until([w.uploader()], w.drained)

    rejected, accepted = [items[1], items[3]], [items[0], items[2], items[4]]
    letters = await w.bus.dead_letters(QUEUE)
    assert sorted(d.message_id for d in letters) == sorted(q.message.message_id for q in rejected)
    for letter in letters:
        assert letter.reason == "rejected_by_sentinel"
        assert "could not be ingested" in letter.description
    assert_stored_once(w, accepted)
    await assert_committed(w, accepted)
    rejected_ids = [q.stix_id for q in rejected]
    assert await w.state.seen(rejected_ids) == [None, None]
    assert await w.state.claims(rejected_ids) == [None, None]  # released: may be re-queued
    counters = await w.state.counters()
    assert (counters["uploaded"], counters["rejected"], counters["dead_lettered"]) == (3, 2, 2)


async def test_a_400_naming_no_record_is_split_until_the_refused_record_stands_alone(
    w: World,
) -> None:
    """A 400 that does not say which record is at fault (REJECT_ALL answers one, without
    ``errors[]``) is halved: [a b c d] → 400, [a b] ok, [c d] → 400, [c] ok, [d] → 400, and
    [d] is dead-lettered alone with Sentinel's message. ``after`` places the faults; a skipped
    request passes every later fault's ``after`` too."""
    items = await w.forward(range(4))
    faults = w.sentinel.faults
    refused = "Error for Property=pattern: The pattern could not be parsed."
    faults.inject(FaultKind.REJECT_ALL, route=STIX_ROUTE, message=refused)
    faults.inject(FaultKind.REJECT_ALL, route=STIX_ROUTE, message=refused, after=1)
    faults.inject(FaultKind.REJECT_ALL, route=STIX_ROUTE, message=refused, after=2)

    await run_until([w.uploader()], w.drained)

    assert w.statuses() == [400, 200, 400, 200, 400]
    assert_stored_once(w, items[:3])
    await assert_committed(w, items[:3])
    [letter] = await w.bus.dead_letters(QUEUE)
    assert letter.message_id == items[3].message.message_id
    assert letter.reason == "rejected_by_sentinel"
    assert letter.description == f"InvalidStixObjects: {refused}"
    counters = await w.state.counters()
    assert (counters["split"], counters["requests"], counters["uploaded"]) == (2, 5, 3)
    assert "systemic_rejection" not in counters
    assert (await w.state.circuit())[0] is CircuitState.CLOSED


async def test_a_400_naming_records_dead_letters_exactly_those_and_resends_the_rest(
    w: World,
) -> None:
    """No split: the answer says which records are at fault, each with its own message."""
    items = await w.forward(range(5))
    w.sentinel.faults.inject(FaultKind.REJECT_RECORDS, route=STIX_ROUTE, record_indexes=(1, 3))

    await run_until([w.uploader()], w.drained)

    assert w.statuses() == [400, 200]
    rejected, accepted = [items[1], items[3]], [items[0], items[2], items[4]]
    assert_stored_once(w, accepted)
    await assert_committed(w, accepted)
    letters = {d.message_id: d for d in await w.bus.dead_letters(QUEUE)}
    assert set(letters) == {q.message.message_id for q in rejected}
    for q in rejected:
        letter = letters[q.message.message_id]
        assert letter.reason == "rejected_by_sentinel"
        assert letter.description == (
            "Error for Property=pattern: The pattern could not be parsed. "
            f"Actual value: {pattern(q.observable)}."
        )
    assert await w.state.claims([q.stix_id for q in rejected]) == [None, None]
    counters = await w.state.counters()
    assert (counters["requests"], counters["rejected"], counters["uploaded"]) == (2, 2, 3)
    assert "split" not in counters


async def test_records_refused_each_for_its_own_reason_are_dead_lettered_without_a_split(
    w: World,
) -> None:
    """Every record fails (Sentinel's transient ingestion failure, each message naming its
    record): the simulator answers 400 with ``errors[]``. One request, four dead letters,
    each with its own message; a batch of one likewise gets its record's message, not the
    request's "None of the 1 objects ...". No circuit: the causes are the records'."""
    four = await w.forward(range(4))
    w.sentinel.faults.inject(
        FaultKind.PARTIAL_ERRORS, route=STIX_ROUTE, record_indexes=(0, 1, 2, 3)
    )
    await run_until([w.uploader()], w.drained)
    [lone] = await w.forward([4])
    w.sentinel.faults.inject(FaultKind.PARTIAL_ERRORS, route=STIX_ROUTE, record_indexes=(0,))
    await run_until([w.uploader()], w.drained)

    assert w.statuses() == [400, 400]
    assert w.sentinel.store == {}
    letters = {d.message_id: d.description for d in await w.bus.dead_letters(QUEUE)}
    assert set(letters) == {q.message.message_id for q in [*four, lone]}
    for q in [*four, lone]:
        assert letters[q.message.message_id] == (
            "Error for Property=id: The object could not be ingested, please retry later. "
            f"Actual value: {q.stix_id}."
        )
    counters = await w.state.counters()
    assert (counters["requests"], counters["rejected"], counters["dead_lettered"]) == (2, 5, 5)
    assert "split" not in counters
    assert "systemic_rejection" not in counters
    assert (await w.state.circuit())[0] is CircuitState.CLOSED
