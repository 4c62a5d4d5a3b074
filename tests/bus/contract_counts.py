"""The bus contract's counts and peek: what an operator reads about an entity (waiting, in
flight, dead-lettered, the oldest's age) without taking anything from it.
"""

from __future__ import annotations

from shared.contract.bus import EntityCounts
from tests.bus.contract_rig import BoundedBus, ContractBase, Entity, drain, ids, message


class CountContract(ContractBase):
    """Counts through a message's life, and a peek that takes nothing."""

    # -- counts -----------------------------------------------------------------------------

    async def test_counts_follow_a_message_through_its_life(
        self, bus: BoundedBus, entity: Entity
    ) -> None:
        await bus.ensure(entity.source)
        assert await bus.counts(entity.source) == EntityCounts(0, 0, 0, None)

        await bus.publish(entity.target, [message(n) for n in range(3)])
        counts = await bus.counts(entity.source)
        assert (counts.depth, counts.in_flight, counts.dead_letter) == (3, 0, 0)
        assert counts.oldest_age_s is not None
        assert counts.oldest_age_s >= 0

        first, second = await bus.receive(entity.source, max_messages=2, max_wait_s=2.0)
        counts = await bus.counts(entity.source)
        assert (counts.depth, counts.in_flight, counts.dead_letter) == (1, 2, 0)

        await bus.complete(entity.source, [first])
        await bus.dead_letter(entity.source, second, reason="r", description="d")
        counts = await bus.counts(entity.source)
        assert (counts.depth, counts.in_flight, counts.dead_letter) == (1, 0, 1)

        [third] = await bus.receive(entity.source, max_wait_s=2.0)
        await bus.complete(entity.source, [third])
        assert await bus.counts(entity.source) == EntityCounts(0, 0, 1, None)

    async def test_peek_shows_what_waits_without_taking_it(
        self, bus: BoundedBus, entity: Entity
    ) -> None:
        await bus.ensure(entity.source)
        assert await bus.peek(entity.source) == []
        sent = [message(n) for n in range(3)]
        await bus.publish(entity.target, sent)
        [held] = await bus.receive(entity.source, max_messages=1, max_wait_s=2.0)

        peeked = await bus.peek(entity.source, limit=10)
        assert [p.message_id for p in peeked] == ["m0", "m1", "m2"]
        assert [p.body for p in peeked] == [m.body for m in sent]
        assert [dict(p.properties) for p in peeked] == [dict(m.properties) for m in sent]
        assert [p.locked for p in peeked] == [True, False, False]
        assert all(p.enqueued_at.tzinfo is not None for p in peeked)
        assert [p.message_id for p in await bus.peek(entity.source, limit=2)] == ["m0", "m1"]

        # Peeking took nothing: the rest comes as first deliveries, the held lock still settles.
        rest = await drain(bus, entity.source, want=2)
        assert ids(rest) == ["m1", "m2"]
        assert [d.delivery_count for d in rest] == [1, 1]
        await bus.complete(entity.source, [held, *rest])
        assert await bus.peek(entity.source) == []
