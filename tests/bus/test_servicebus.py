"""The Service Bus bus: the shared contract through the real ``azure-servicebus`` SDK, against a
fake Service Bus AMQP 1.0 peer (``tests.servicebus_peer``), plus what only Service Bus shows.

No Service Bus or emulator is reachable here, so the broker side is the fake's. What the fake
implements itself (rather than the SDK or this backend) is listed in
``tests/servicebus_peer/broker.py``: entity existence, topic fan-out and the replay rule,
duplicate detection on ``message-id`` within the window, peek-lock with 16-byte lock tokens,
lock expiry and redelivery with the count incremented, complete/abandon/release/dead-letter
dispositions answered with ``settled=true``, ``com.microsoft:message-lock-lost`` for lost
locks, MaxDeliveryCount dead-lettering, the ``$deadletterqueue`` sub-queue, and the
``$management`` renew-lock and peek operations. The SDK code on the other side is the real,
unmodified one: every frame here went through its AMQP stack.

Entities are created the way an operator would (``az servicebus … create``, docs/servicebus.md):
the contract's ``bus_factory`` creates them in the fake with the test's lock duration, maximum
delivery count and duplicate-detection window when ``ensure`` is called, then lets the real
``ensure`` check them. Every SDK call is bounded twice: by the backend's own
``operation_timeout_s`` and by the contract's ``BoundedBus``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from azure.servicebus.aio import ServiceBusClient

from shared.adapters.servicebus import ServiceBusBus
from shared.adapters.servicebus_messages import ORIGINAL_MESSAGE_ID, REPLAY_TO, replay_rule
from shared.contract.bus import Bus, Message, Queue, Subscription, Topic
from shared.core.errors import BusEntityMissing, BusUnavailable, LockLost
from tests.bus.contract import BusContract, BusFactory, BusSettings, message
from tests.servicebus_peer import FakeServiceBus, ReplayRule

pytestmark = pytest.mark.timeout(30)

#: Bound on every SDK call the backend makes; the contract's own bound is 10 s.
OPERATION_TIMEOUT_S = 8.0


@pytest.fixture(scope="module")
def namespace() -> Iterator[FakeServiceBus]:
    with FakeServiceBus() as fake:
        yield fake
        assert fake.failure is None, f"the fake Service Bus failed: {fake.failure!r}"


def provision(
    namespace: FakeServiceBus, source: Queue | Subscription, settings: BusSettings
) -> None:
    """What the operator does with ``az`` before the services start."""
    if isinstance(source, Queue):
        namespace.create_queue(
            source.name,
            lock_duration_s=settings.lock_duration_s,
            max_delivery_count=settings.max_delivery_count,
            duplicate_window_s=settings.duplicate_window_s,
        )
        return
    namespace.create_topic(source.topic, duplicate_window_s=settings.duplicate_window_s)
    namespace.create_subscription(
        source.topic,
        source.name,
        lock_duration_s=settings.lock_duration_s,
        max_delivery_count=settings.max_delivery_count,
        rule=ReplayRule(REPLAY_TO, source.name),
    )


class ProvisionedBus(ServiceBusBus):
    """The real backend, whose ``ensure`` is preceded by the operator creating the entity."""

    def __init__(self, namespace: FakeServiceBus, settings: BusSettings, *, consumer: str) -> None:
        client = ServiceBusClient.from_connection_string(namespace.connection_string, retry_total=0)
        super().__init__(client, consumer=consumer, operation_timeout_s=OPERATION_TIMEOUT_S)
        self._owns_client = True
        self.namespace = namespace
        self.settings = settings

    async def ensure(self, source: Queue | Subscription) -> None:
        provision(self.namespace, source, self.settings)
        await super().ensure(source)


class TestServiceBusContract(BusContract):
    #: Longer than the contract's 0.5 s, for two SDK costs the contract's timing does not allow
    #: for: ``receive_messages`` keeps listening ~0.2 s after the first message arrived, and a
    #: receiver's first call opens its AMQP connection (~0.5 s), which in the renewal test falls
    #: between two renewals. (Service Bus itself allows no lock under 5 s.)
    SHORT_LOCK_S = 2.0

    #: Longer than the SDK's 5 s keep-alive, as Service Bus itself requires (no lock under
    #: 5 s): an idle receiver keeps link credit open, so the broker pushes new and expired
    #: messages into it, where they stay until that keep-alive releases them; with a shorter
    #: lock another process could not take an expired message over first
    #: (docs/servicebus.md, 'Known behaviour of the SDK').
    TAKEOVER_LOCK_S = 6.0

    @pytest.fixture
    async def bus_factory(self, namespace: FakeServiceBus) -> AsyncIterator[BusFactory]:
        made: list[ServiceBusBus] = []

        async def factory(consumer: str, settings: BusSettings) -> Bus:
            bus = ProvisionedBus(namespace, settings, consumer=consumer)
            made.append(bus)
            return bus

        yield factory
        async with asyncio.timeout(20):
            await asyncio.gather(*(bus.aclose() for bus in made))


# ------------------------------------------------------------------------------------------
# Service Bus only


@pytest.fixture
async def sb(namespace: FakeServiceBus) -> AsyncIterator[ServiceBusBus]:
    bus = ServiceBusBus.from_connection_string(
        namespace.connection_string,
        consumer="t",
        retry_total=0,
        operation_timeout_s=OPERATION_TIMEOUT_S,
    )
    yield bus
    async with asyncio.timeout(20):
        await bus.aclose()


async def test_ensure_refuses_an_entity_the_operator_did_not_create(sb: ServiceBusBus) -> None:
    with pytest.raises(BusEntityMissing, match=r"docs/servicebus\.md"):
        async with asyncio.timeout(15):
            await sb.ensure(Queue("never-created"))


async def test_a_batch_larger_than_one_transfer_is_split_and_keeps_order(
    namespace: FakeServiceBus, sb: ServiceBusBus
) -> None:
    namespace.create_queue("big")
    body = b"x" * 60_000  # the fake's SDK batches cap at the peer's max message size
    sent = [Message(body + b"%d" % n, f"m{n}", {"n": str(n)}) for n in range(40)]
    async with asyncio.timeout(20):
        await sb.publish(Queue("big"), sent)
        got = []
        while len(got) < 40:
            batch = await sb.receive(Queue("big"), max_messages=40, max_wait_s=2.0)
            assert batch
            got += batch
        await sb.complete(Queue("big"), got)
    assert [d.message_id for d in got] == [m.message_id for m in sent]
    assert [d.body for d in got] == [m.body for m in sent]


async def test_replay_of_one_subscription_reaches_no_other(
    namespace: FakeServiceBus, sb: ServiceBusBus
) -> None:
    prod, test = Subscription("fan", "prod"), Subscription("fan", "test")
    for sub in (prod, test):
        provision(namespace, sub, BusSettings())
    async with asyncio.timeout(20):
        await sb.publish(Topic("fan"), [message(1)])
        [in_test] = await sb.receive(test, max_messages=5, max_wait_s=2.0)
        await sb.complete(test, [in_test])
        [got] = await sb.receive(prod, max_messages=5, max_wait_s=2.0)
        await sb.dead_letter(prod, got, reason="r", description="d")
        assert await sb.replay(prod, await sb.dead_letters(prod)) == 1

        [again] = await sb.receive(prod, max_messages=5, max_wait_s=2.0)
        assert await sb.receive(test, max_messages=5, max_wait_s=0.3) == []
    assert again.message_id == "m1"
    assert REPLAY_TO not in again.properties
    assert ORIGINAL_MESSAGE_ID not in again.properties


async def test_settling_a_delivery_this_process_never_received_is_lock_lost(
    namespace: FakeServiceBus, sb: ServiceBusBus
) -> None:
    namespace.create_queue("foreign")
    async with asyncio.timeout(15):
        await sb.publish(Queue("foreign"), [message(1)])
        [got] = await sb.receive(Queue("foreign"), max_messages=1, max_wait_s=2.0)
        other = ServiceBusBus(sb._client, consumer="other")
        with pytest.raises(LockLost) as lost:
            await other.complete(Queue("foreign"), [got])
        assert lost.value.message_ids == ("m1",)
        with pytest.raises(ValueError, match="lock token"):
            await other.complete(
                Queue("foreign"),
                [type(got)(got.body, "x", {}, 1, got.enqueued_at, lock_token="not-a-token")],
            )
        await sb.complete(Queue("foreign"), [got])


async def test_reserved_properties_are_refused(sb: ServiceBusBus) -> None:
    with pytest.raises(ValueError, match="reserved"):
        await sb.publish(Queue("q"), [Message(b"", "m1", {REPLAY_TO: "x"})])


async def test_unreachable_namespace_is_bus_unavailable() -> None:
    from tests.servicebus_peer.amqp import free_port

    port = free_port("127.0.0.1")
    bus = ServiceBusBus.from_connection_string(
        f"Endpoint=sb://127.0.0.1:{port}/;SharedAccessKeyName=k;SharedAccessKey=c2VjcmV0;"
        "UseDevelopmentEmulator=true",
        consumer="t",
        retry_total=0,
        operation_timeout_s=3.0,
    )
    try:
        with pytest.raises(BusUnavailable) as failed:
            async with asyncio.timeout(15):
                await bus.publish(Queue("q"), [message(1)])
        assert "c2VjcmV0" not in str(failed.value)
    finally:
        async with asyncio.timeout(10):
            await bus.aclose()


def test_replay_rule_is_the_documented_sql_filter() -> None:
    assert replay_rule("prod") == "NOT EXISTS(m2s_replay_to) OR m2s_replay_to = 'prod'"
    with pytest.raises(ValueError, match="quote"):
        replay_rule("it's")
