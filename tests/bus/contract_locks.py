"""The bus contract's peek-locks: a held message stays invisible until its lock runs out, a
lost lock is named when its holder settles, and abandon and renewal do what they say.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from shared.contract.bus import EntityCounts, Queue
from shared.core.errors import LockLost
from tests.bus.contract_rig import BoundedBus, ContractBase, Entity, MakeBus, held_by_a, message


class LockContract(ContractBase):
    """Whose lock wins, and what its holder may still do."""

    # -- locks ------------------------------------------------------------------------------

    async def test_locked_message_is_invisible_until_lock_expires(
        self, make_bus: MakeBus, entity: Entity
    ) -> None:
        _, b, first = await held_by_a(make_bus, self.TAKEOVER_LOCK_S, entity.source, entity.target)

        assert await b.receive(entity.source, max_wait_s=0.1) == []
        [again] = await b.receive(entity.source, max_wait_s=self.TAKEOVER_LOCK_S + 3.0)

        assert again.message_id == first.message_id
        assert again.body == first.body
        assert again.delivery_count == 2
        await b.complete(entity.source, [again])

    @pytest.mark.parametrize("action", ["complete", "abandon", "dead_letter", "renew_locks"])
    async def test_settling_after_lock_lost_raises_lock_lost(
        self, make_bus: MakeBus, name: str, action: str
    ) -> None:
        queue = Queue(name)
        a, b, stale = await held_by_a(make_bus, self.SHORT_LOCK_S, queue, queue)
        [taken] = await b.receive(queue, max_wait_s=self.SHORT_LOCK_S + 3.0)

        settle: Callable[[], Awaitable[None]] = {
            "complete": lambda: a.complete(queue, [stale]),
            "abandon": lambda: a.abandon(queue, [stale]),
            "dead_letter": lambda: a.dead_letter(queue, stale, reason="r", description="d"),
            "renew_locks": lambda: a.renew_locks(queue, [stale]),
        }[action]

        with pytest.raises(LockLost) as lost:
            await settle()

        assert lost.value.message_ids == ("m1",)
        # The new holder is untouched: it still settles, and nothing went to the DLQ.
        await b.complete(queue, [taken])
        assert await a.counts(queue) == EntityCounts(0, 0, 0, None)

    async def test_complete_settles_the_rest_and_names_only_lost_messages(
        self, make_bus: MakeBus, name: str
    ) -> None:
        queue = Queue(name)
        a, b, stale = await held_by_a(make_bus, self.TAKEOVER_LOCK_S, queue, queue)
        await a.publish(queue, [message(2)])
        await asyncio.sleep(self.TAKEOVER_LOCK_S * 1.5)  # m1's lock has run out
        [taken] = await b.receive(queue, max_messages=1, max_wait_s=2.0)
        assert taken.message_id == "m1"  # expired locks are taken over before new messages
        [fresh] = await a.receive(queue, max_wait_s=2.0)

        with pytest.raises(LockLost) as lost:
            await a.complete(queue, [stale, fresh])

        assert lost.value.message_ids == ("m1",)
        assert await b.receive(queue, max_wait_s=0.1) == []  # m2 was completed
        await b.complete(queue, [taken])
        assert await a.counts(queue) == EntityCounts(0, 0, 0, None)

    async def test_abandon_redelivers_at_once_with_count_incremented(
        self, bus: BoundedBus, entity: Entity
    ) -> None:
        await bus.ensure(entity.source)
        await bus.publish(entity.target, [message(1)])
        [first] = await bus.receive(entity.source, max_wait_s=2.0)

        await bus.abandon(entity.source, [first])
        [again] = await bus.receive(entity.source, max_wait_s=2.0)

        assert again.message_id == "m1"
        assert again.delivery_count == 2
        await bus.complete(entity.source, [again])

    async def test_renew_locks_keeps_message_invisible_past_the_lock(
        self, make_bus: MakeBus, name: str
    ) -> None:
        queue = Queue(name)
        a, b, held = await held_by_a(make_bus, self.SHORT_LOCK_S, queue, queue)

        for _ in range(3):  # 3 × 0.6 of the lock: well past the original lock's end
            await asyncio.sleep(self.SHORT_LOCK_S * 0.6)
            await a.renew_locks(queue, [held])
            assert await b.receive(queue, max_wait_s=0.0) == []

        await a.complete(queue, [held])
        await asyncio.sleep(self.SHORT_LOCK_S * 0.6)
        assert await b.receive(queue, max_wait_s=0.0) == []
