"""The bus contract, what arrives where: a message round trip, who receives what (a queue's
receivers, a topic's subscriptions), duplicate detection, and what ``receive`` returns.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from shared.contract.bus import Delivery, EntityCounts, Message, Queue, Subscription, Topic
from tests.bus.contract_rig import (
    BoundedBus,
    ContractBase,
    Entity,
    MakeBus,
    drain,
    ids,
    message,
    two_consumers,
)


class DeliveryContract(ContractBase):
    """Messages arrive whole, once per queue or subscription, in order."""

    # -- round trip -------------------------------------------------------------------------

    async def test_round_trip_preserves_body_id_and_properties(
        self, bus: BoundedBus, entity: Entity
    ) -> None:
        await bus.ensure(entity.source)
        sent = message(1, run_id="r-1", traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01")
        before = datetime.now(UTC) - timedelta(seconds=5)
        await bus.publish(entity.target, [sent])

        [got] = await bus.receive(entity.source, max_wait_s=2.0)

        assert got.body == sent.body
        assert got.message_id == sent.message_id
        assert dict(got.properties) == dict(sent.properties)
        assert got.delivery_count == 1
        assert got.enqueued_at.tzinfo is not None
        assert got.enqueued_at >= before
        assert got.lock_token
        await bus.complete(entity.source, [got])
        assert await bus.receive(entity.source, max_wait_s=0.1) == []

    async def test_binary_body_and_empty_properties_round_trip(
        self, bus: BoundedBus, name: str
    ) -> None:
        queue = Queue(name)
        await bus.ensure(queue)
        body = bytes(range(256)) + "é\u2028".encode()
        await bus.publish(queue, [Message(body=body, message_id="bin", properties={})])

        [got] = await bus.receive(queue, max_wait_s=2.0)

        assert got.body == body
        assert dict(got.properties) == {}
        await bus.complete(queue, [got])

    async def test_ensure_is_idempotent(self, bus: BoundedBus, name: str) -> None:
        queue, subscription = Queue(f"{name}.q"), Subscription(name, "sub")
        for _ in range(2):
            await bus.ensure(queue)
            await bus.ensure(subscription)
        await bus.publish(queue, [message(1)])
        await bus.publish(Topic(name), [message(2)])

        assert ids(await bus.receive(queue, max_wait_s=2.0)) == ["m1"]
        assert ids(await bus.receive(subscription, max_wait_s=2.0)) == ["m2"]

    async def test_empty_batches_are_no_ops(self, bus: BoundedBus, name: str) -> None:
        queue = Queue(name)
        await bus.ensure(queue)
        await bus.publish(queue, [])
        await bus.complete(queue, [])
        await bus.abandon(queue, [])
        await bus.renew_locks(queue, [])
        assert await bus.replay(queue, []) == 0
        assert await bus.counts(queue) == EntityCounts(0, 0, 0, None)

    # -- who gets what ----------------------------------------------------------------------

    async def test_queue_delivers_each_message_to_one_receiver(
        self, make_bus: MakeBus, name: str
    ) -> None:
        queue = Queue(name)
        a, b = await two_consumers(make_bus, queue)
        await a.publish(queue, [message(n) for n in range(20)])

        got: dict[str, list[Delivery]] = {"a": [], "b": []}
        while True:
            batch_a = await a.receive(queue, max_messages=3, max_wait_s=0.1)
            batch_b = await b.receive(queue, max_messages=3, max_wait_s=0.1)
            got["a"] += batch_a
            got["b"] += batch_b
            if not batch_a and not batch_b:
                break

        assert got["a"]
        assert got["b"]
        assert not set(ids(got["a"])) & set(ids(got["b"]))
        assert sorted(ids(got["a"]) + ids(got["b"])) == sorted(f"m{n}" for n in range(20))
        await a.complete(queue, got["a"])
        await b.complete(queue, got["b"])

    async def test_topic_fans_out_to_every_subscription(self, bus: BoundedBus, name: str) -> None:
        first, second = Subscription(name, "prod"), Subscription(name, "test")
        await bus.ensure(first)
        await bus.ensure(second)

        await bus.publish(Topic(name), [message(n) for n in range(5)])

        for subscription in (first, second):
            got = await drain(bus, subscription, want=5)
            assert ids(got) == [f"m{n}" for n in range(5)]
            await bus.complete(subscription, got)
        # Completing in one subscription took nothing from the other.
        assert await bus.receive(first, max_wait_s=0.1) == []

    async def test_subscription_misses_what_was_published_before_it_existed(
        self, bus: BoundedBus, name: str
    ) -> None:
        early, late = Subscription(name, "early"), Subscription(name, "late")
        await bus.ensure(early)
        await bus.publish(Topic(name), [message(1)])
        await bus.ensure(late)
        await bus.publish(Topic(name), [message(2)])

        assert ids(await drain(bus, early, want=2)) == ["m1", "m2"]
        assert ids(await drain(bus, late, want=2, max_wait_s=0.3)) == ["m2"]

    # -- duplicate detection ----------------------------------------------------------------

    async def test_duplicate_message_id_within_window_is_dropped(
        self, bus: BoundedBus, entity: Entity
    ) -> None:
        await bus.ensure(entity.source)
        original = message(1)
        again = Message(body=b"changed", message_id="m1", properties={"schema": "other"})

        await bus.publish(entity.target, [original, again])  # within one batch
        await bus.publish(entity.target, [again, message(2)])  # and in a later one

        got = await drain(bus, entity.source, want=3, max_wait_s=0.2)
        assert ids(got) == ["m1", "m2"]
        assert got[0].body == original.body

    async def test_duplicate_message_id_after_window_is_kept(
        self, make_bus: MakeBus, name: str
    ) -> None:
        bus = await make_bus(duplicate_window_s=self.SHORT_WINDOW_S)
        queue = Queue(name)
        await bus.ensure(queue)
        await bus.publish(queue, [message(1)])
        await asyncio.sleep(self.SHORT_WINDOW_S + 0.2)
        await bus.publish(queue, [message(1)])

        assert ids(await drain(bus, queue, want=3, max_wait_s=0.2)) == ["m1", "m1"]

    # -- receive ----------------------------------------------------------------------------

    async def test_receive_with_nothing_waiting_returns_empty(
        self, bus: BoundedBus, entity: Entity
    ) -> None:
        await bus.ensure(entity.source)
        assert await bus.receive(entity.source, max_wait_s=0.3) == []
        assert await bus.receive(entity.source, max_wait_s=0.0) == []

    async def test_receive_wakes_for_a_message_published_while_waiting(
        self, make_bus: MakeBus, name: str
    ) -> None:
        queue = Queue(name)
        receiver, publisher = await two_consumers(make_bus, queue)

        async def publish_soon() -> None:
            await asyncio.sleep(0.2)
            await publisher.publish(queue, [message(1)])

        waiting = asyncio.ensure_future(receiver.receive(queue, max_wait_s=5.0))
        await publish_soon()
        assert ids(await waiting) == ["m1"]

    async def test_receive_honours_max_messages(self, bus: BoundedBus, name: str) -> None:
        queue = Queue(name)
        await bus.ensure(queue)
        await bus.publish(queue, [message(n) for n in range(7)])

        sizes = []
        for _ in range(3):
            sizes.append(len(await bus.receive(queue, max_messages=3, max_wait_s=1.0)))

        assert sizes == [3, 3, 1]

    async def test_single_receiver_gets_messages_in_order(
        self, bus: BoundedBus, entity: Entity
    ) -> None:
        await bus.ensure(entity.source)
        for start in range(0, 60, 20):
            await bus.publish(entity.target, [message(n) for n in range(start, start + 20)])

        got = await drain(bus, entity.source, want=60)

        assert ids(got) == [f"m{n}" for n in range(60)]
        await bus.complete(entity.source, got)
