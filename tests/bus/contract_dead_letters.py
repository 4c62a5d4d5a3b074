"""The bus contract's dead letters: what a dead letter keeps, the deliveries that end there,
and a replay that puts them back as fresh messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from shared.contract import bus as contract
from shared.contract.bus import DeadLetter, EntityCounts, Queue
from tests.bus.contract_rig import BoundedBus, ContractBase, Entity, MakeBus, drain, ids, message


class DeadLetterContract(ContractBase):
    """Dead-lettering, its limit, and replay."""

    # -- dead letters -----------------------------------------------------------------------

    async def test_dead_letter_keeps_reason_and_description(
        self, bus: BoundedBus, entity: Entity
    ) -> None:
        await bus.ensure(entity.source)
        sent = message(1, run_id="r-9")
        await bus.publish(entity.target, [sent])
        [got] = await bus.receive(entity.source, max_wait_s=2.0)

        await bus.dead_letter(
            entity.source, got, reason="Unparseable", description="missing 'value' field"
        )

        [letter] = await bus.dead_letters(entity.source)
        assert letter.reason == "Unparseable"
        assert letter.description == "missing 'value' field"
        assert letter.body == sent.body
        assert letter.message_id == sent.message_id
        assert dict(letter.properties) == dict(sent.properties)
        assert letter.delivery_count == 1
        assert letter.dead_lettered_at.tzinfo is not None
        assert await bus.counts(entity.source) == EntityCounts(0, 0, 1, None)
        assert await bus.receive(entity.source, max_wait_s=0.1) == []

    async def test_max_delivery_count_exceeded_is_dead_lettered(
        self, make_bus: MakeBus, entity: Entity
    ) -> None:
        bus = await make_bus(max_delivery_count=2)
        await bus.ensure(entity.source)
        await bus.publish(entity.target, [message(1)])

        for expected_count in (1, 2):
            [got] = await bus.receive(entity.source, max_wait_s=2.0)
            assert got.delivery_count == expected_count
            await bus.abandon(entity.source, [got])

        assert await bus.receive(entity.source, max_wait_s=0.3) == []
        [letter] = await bus.dead_letters(entity.source)
        assert letter.reason == contract.MAX_DELIVERY_REASON
        assert letter.message_id == "m1"
        assert letter.delivery_count >= 2
        assert (await bus.counts(entity.source)).dead_letter == 1

    async def test_expired_locks_count_toward_max_delivery(
        self, make_bus: MakeBus, name: str
    ) -> None:
        bus = await make_bus(lock_duration_s=self.SHORT_LOCK_S, max_delivery_count=1)
        queue = Queue(name)
        await bus.ensure(queue)
        await bus.publish(queue, [message(1)])
        [_] = await bus.receive(queue, max_wait_s=2.0)  # never settled: the lock runs out
        await asyncio.sleep(self.SHORT_LOCK_S * 1.2)

        assert await bus.receive(queue, max_wait_s=0.2) == []
        [letter] = await bus.dead_letters(queue)
        assert letter.reason == contract.MAX_DELIVERY_REASON

    async def test_replay_puts_dead_letters_back_and_empties_the_dlq(
        self, bus: BoundedBus, entity: Entity
    ) -> None:
        await bus.ensure(entity.source)
        sent = [message(1), message(2)]
        await bus.publish(entity.target, sent)
        for got in await drain(bus, entity.source, want=2):
            await bus.dead_letter(entity.source, got, reason="Rejected", description="400")
        letters = await bus.dead_letters(entity.source)
        assert ids_of(letters) == ["m1", "m2"]

        assert await bus.replay(entity.source, letters) == 2

        assert await bus.dead_letters(entity.source) == []
        # Fresh deliveries, even though the ids are inside the duplicate-detection window.
        back = await drain(bus, entity.source, want=2)
        assert ids(back) == ["m1", "m2"]
        assert [d.delivery_count for d in back] == [1, 1]
        assert [d.body for d in back] == [m.body for m in sent]
        assert [dict(d.properties) for d in back] == [dict(m.properties) for m in sent]
        await bus.complete(entity.source, back)
        assert await bus.counts(entity.source) == EntityCounts(0, 0, 0, None)

    async def test_dead_letters_honours_limit(self, bus: BoundedBus, name: str) -> None:
        queue = Queue(name)
        await bus.ensure(queue)
        await bus.publish(queue, [message(n) for n in range(5)])
        for got in await drain(bus, queue, want=5):
            await bus.dead_letter(queue, got, reason="r", description="d")

        assert ids_of(await bus.dead_letters(queue, limit=3)) == ["m0", "m1", "m2"]


def ids_of(letters: Sequence[DeadLetter]) -> list[str]:
    return [letter.message_id for letter in letters]
