"""Service Bus letting the client down, and the product's ``ServiceBusBus`` recovering by itself.

The fake peer (``tests.servicebus_peer``) injects the faults a real namespace shows (faults.py
there says how each looks on the wire): a connection dropped under the client, before or after
the operation took effect; ``ServerBusy``; a lock lost before its holder settles or renews it.
The client is the real SDK with the services' retry count (``retry_total=3``), so what the SDK
retries away is part of what is tested; only its back-off is shortened (``BACKOFF_FACTOR``),
since how long it waits is not.

Each test plays a service's part with the calls the services make (``shared.contract.bus``)
and holds the bus to what they rely on:

- only the documented errors escape: ``BusUnavailable`` (back off, try again) and
  ``LockLost`` (another delivery owns the message now); any other exception fails the test;
- nothing is lost: every message published is received, and in the end the broker holds
  nothing of it (none left behind, none dead-lettered);
- nothing is acknowledged before it was handled: a message leaves the broker only after the
  consumer handled it and asked to complete it, and no message is completed twice (a
  ``complete`` that returned did not leave it to come back, a retried send did not store it
  twice).

The broker's own state (``namespace.broker``) is the oracle; no test asserts on timing. Locks
are short (``LOCK_S``) so that a message whose lock died with a connection comes back within
the test.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import pytest
from azure.servicebus.aio import ServiceBusClient

from harness.chaos.phases import client_ports
from shared.adapters.servicebus import ServiceBusBus
from shared.contract.bus import Delivery, Message, Queue
from shared.core.errors import BusUnavailable, LockLost
from tests.bus.contract import message
from tests.helpers import wait_for
from tests.servicebus_peer import FakeServiceBus, FaultKind, Operation

pytestmark = pytest.mark.timeout(60)

#: The entities' lock duration: a lock held by a dropped connection runs out within a test.
LOCK_S = 2.0
#: Bound on every SDK call the backend makes (the services use 30 s).
OPERATION_TIMEOUT_S = 5.0
#: The SDK's back-off is this times 2^attempt (the services use 0.5: 1 s, 2 s, 4 s).
BACKOFF_FACTOR = 0.05
#: How long a test waits for the bus to have delivered and settled everything.
SETTLE_DEADLINE_S = 30.0

FAILURES = [(FaultKind.SERVER_BUSY, False), (FaultKind.DROP, False), (FaultKind.DROP, True)]


@pytest.fixture(scope="module")
def namespace() -> Iterator[FakeServiceBus]:
    with FakeServiceBus() as fake:
        yield fake
        assert fake.failure is None, f"the fake Service Bus failed: {fake.failure!r}"


@pytest.fixture(autouse=True)
def sdk_garbage(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Collect the test's garbage now, so that anything the SDK left unclosed is reported
    (an unclosed socket's warning is an error) in the test that dropped it, not in whatever
    test the garbage collector happens to run in. The SDK's own log records are not kept:
    they hold its exceptions, whose tracebacks would keep the connections alive until then.
    """
    caplog.set_level(logging.CRITICAL, logger="azure")
    yield
    gc.collect()


@dataclass
class Ledger:
    """What the consumer saw: each message's delivery counts, the completes that returned,
    and the documented errors it met."""

    counts: dict[str, list[int]] = field(default_factory=dict)
    completed: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    def handled(self, delivery: Delivery) -> None:
        self.counts.setdefault(delivery.message_id, []).append(delivery.delivery_count)

    def assert_delivered_once_each(self, ids: list[str]) -> None:
        """Nothing lost, nothing acknowledged unhandled, nothing completed twice."""
        assert set(self.counts) == set(ids), "a message never arrived, or a stranger did"
        twice = {m: n for m, n in self.completed.items() if n > 1}
        assert not twice, f"completed more than once (it came back after a complete): {twice}"


@dataclass
class Rig:
    """A queue of the fake namespace, a producer's bus and a consumer's (each process has a
    client of its own), and the faults fired since the test began."""

    namespace: FakeServiceBus
    producer: ServiceBusBus
    bus: ServiceBusBus
    queue: Queue
    before: Counter[str]

    def fired(self) -> Counter[str]:
        return Counter(self.namespace.fault_counts()) - self.before

    def inject(self, kind: FaultKind, on: Operation, *, applied: bool = False) -> None:
        self.namespace.inject(kind, on=on, applied=applied)

    def empty(self) -> bool:
        """Whether the broker holds nothing of the queue, dead letters included."""
        store = self.namespace.broker.resolve(self.queue.name)
        assert store.dead_letter is not None
        with self.namespace.broker.lock:
            return not store.messages and not store.dead_letter.messages

    def stored(self) -> set[str | None]:
        """The ids of the messages the broker holds in the queue, locked or not."""
        store = self.namespace.broker.resolve(self.queue.name)
        with self.namespace.broker.lock:
            return {stored.message.message_id for stored in store.messages.values()}

    async def publish(self, messages: list[Message]) -> None:
        """As the fetcher publishes: until the bus took the page, backing off meanwhile."""
        while True:
            try:
                await self.producer.publish(self.queue, messages)
                return
            except BusUnavailable:
                await asyncio.sleep(0.1)

    async def consume_once(self, ledger: Ledger) -> None:
        """One round of a service's loop: receive, handle, then complete, meeting the
        documented errors as the services do; anything else escapes and fails the test."""
        try:
            batch = await self.bus.receive(self.queue, max_messages=50, max_wait_s=0.3)
        except BusUnavailable:
            ledger.errors["receive"] += 1
            return
        unsettled = {d.message_id for d in batch} - self.stored()
        assert not unsettled, f"gone from the broker before they were handled: {unsettled}"
        for delivery in batch:
            ledger.handled(delivery)
        try:
            await self.bus.complete(self.queue, batch)
        except LockLost as exc:
            ledger.errors["lock lost"] += 1
            lost = set(exc.message_ids)
            ledger.completed.update(d.message_id for d in batch if d.message_id not in lost)
        except BusUnavailable:  # done or not: the broker's state tells
            ledger.errors["complete"] += 1
        else:
            ledger.completed.update(d.message_id for d in batch)

    async def drain(
        self,
        ledger: Ledger,
        *,
        published: asyncio.Event | None = None,
        deadline_s: float = SETTLE_DEADLINE_S,
    ) -> None:
        """Consume until the broker holds nothing of the queue (once ``published`` is set)."""

        async def step() -> bool:
            await self.consume_once(ledger)
            return (published is None or published.is_set()) and self.empty()

        await wait_for(step, deadline_s, what=f"{self.queue.name} drained", interval=0.0)

    async def round_trip(self) -> Ledger:
        """Publish a few messages, consume until the broker is empty; the consumer's ledger."""
        ledger = Ledger()
        sent = [message(i) for i in range(5)]
        async with asyncio.timeout(SETTLE_DEADLINE_S):
            await self.publish(sent)
        await self.drain(ledger)
        ledger.assert_delivered_once_each([m.message_id for m in sent])
        return ledger


@pytest.fixture
async def rig(namespace: FakeServiceBus) -> AsyncIterator[Rig]:
    opened: list[tuple[ServiceBusBus, ServiceBusClient]] = []

    def open_bus(consumer: str) -> ServiceBusBus:
        client = ServiceBusClient.from_connection_string(
            namespace.connection_string, retry_total=3, retry_backoff_factor=BACKOFF_FACTOR
        )
        bus = ServiceBusBus(client, consumer=consumer, operation_timeout_s=OPERATION_TIMEOUT_S)
        opened.append((bus, client))
        return bus

    queue = Queue(f"faults-{uuid.uuid4().hex[:10]}")
    namespace.create_queue(queue.name, lock_duration_s=LOCK_S)
    before = Counter(namespace.fault_counts())
    yield Rig(namespace, open_bus("producer"), open_bus("consumer"), queue, before)
    namespace.faults.clear()  # a fault this test queued and did not meet strikes no other
    async with asyncio.timeout(20):
        for bus, client in opened:
            await bus.aclose()
            await client.close()


# ------------------------------------------------------------------------------------------
# One fault at a time


@pytest.mark.parametrize(("kind", "applied"), FAILURES, ids=["busy", "drop", "drop_stored"])
async def test_publish_recovers_from_a_failed_send(
    rig: Rig, kind: FaultKind, applied: bool
) -> None:
    """A send refused or cut off is sent again; one stored before its answer was lost is
    dropped by duplicate detection, not queued twice."""
    rig.inject(kind, Operation.SEND, applied=applied)

    await rig.round_trip()

    assert rig.fired()[kind] == 1


@pytest.mark.parametrize(("kind", "applied"), FAILURES, ids=["busy", "drop", "drop_locked"])
async def test_receive_recovers_from_a_failed_receive(
    rig: Rig, kind: FaultKind, applied: bool
) -> None:
    """A receive link detached busy, or a connection dropped while it asked (after the peer
    locked messages to it, with ``applied``): a later receive gets every message, those
    locked to the dead link once their lock ran out, with that delivery counted."""
    await rig.bus.ensure(rig.queue)
    rig.inject(kind, Operation.RECEIVE, applied=applied)

    ledger = await rig.round_trip()

    assert rig.fired()[kind] == 1
    if applied:
        assert all(counts == [2] for counts in ledger.counts.values()), ledger.counts


@pytest.mark.parametrize(
    ("kind", "applied"),
    [*FAILURES, (FaultKind.LOCK_LOST, False)],
    ids=["busy", "drop", "drop_completed", "lock_lost"],
)
async def test_complete_recovers_from_a_failed_settlement(
    rig: Rig, kind: FaultKind, applied: bool
) -> None:
    """A settlement refused busy, cut off before or after it was applied, or whose lock ran
    out first: each message is completed once, or comes back and is completed then."""
    rig.inject(kind, Operation.SETTLE, applied=applied)

    ledger = await rig.round_trip()

    assert rig.fired()[kind] == 1
    if kind is FaultKind.LOCK_LOST:
        [again] = [counts for counts in ledger.counts.values() if len(counts) > 1]
        assert again == [1, 2], "the message came back without its delivery counted"
        assert ledger.errors["lock lost"] == 1


@pytest.mark.parametrize("action", ["abandon", "dead_letter", "renew_locks"])
async def test_a_lock_lost_before_settling_is_lock_lost_and_redelivered(
    rig: Rig, action: str
) -> None:
    """Abandon, dead-letter or renewal of a message whose lock ran out raises ``LockLost``
    naming it; the message is not dead-lettered but delivered again, its count raised."""
    bus, queue = rig.bus, rig.queue
    await rig.publish([message(1)])
    [held] = await bus.receive(queue, max_messages=1, max_wait_s=2.0)
    rig.inject(
        FaultKind.LOCK_LOST, Operation.RENEW if action == "renew_locks" else Operation.SETTLE
    )
    settle: Callable[[], Awaitable[None]] = {
        "abandon": lambda: bus.abandon(queue, [held]),
        "dead_letter": lambda: bus.dead_letter(queue, held, reason="r", description="d"),
        "renew_locks": lambda: bus.renew_locks(queue, [held]),
    }[action]

    with pytest.raises(LockLost) as lost:
        await settle()

    assert lost.value.message_ids == ("m1",)
    [again] = await bus.receive(queue, max_messages=1, max_wait_s=2.0)
    assert (again.message_id, again.delivery_count) == ("m1", 2)
    await bus.complete(queue, [again])
    assert rig.empty()


@pytest.mark.parametrize(("kind", "applied"), FAILURES, ids=["busy", "drop", "drop_renewed"])
async def test_a_failed_renewal_leaves_the_message_to_be_completed(
    rig: Rig, kind: FaultKind, applied: bool
) -> None:
    """A renewal meets ``BusUnavailable`` at worst; the message is then completed, or (its
    receiver gone with the connection) comes back once its lock ran out, and is then."""
    ledger = Ledger()
    await rig.publish([message(1)])
    held = await rig.bus.receive(rig.queue, max_messages=1, max_wait_s=2.0)
    rig.inject(kind, Operation.RENEW, applied=applied)

    try:
        await rig.bus.renew_locks(rig.queue, held)
    except BusUnavailable:
        ledger.errors["renew"] += 1
    ledger.handled(held[0])
    try:
        await rig.bus.complete(rig.queue, held)
        ledger.completed["m1"] += 1
    except (BusUnavailable, LockLost):
        await rig.drain(ledger)

    assert rig.fired()[kind] == 1
    assert rig.empty()
    ledger.assert_delivered_once_each(["m1"])


@pytest.mark.parametrize("kind", [FaultKind.SERVER_BUSY, FaultKind.DROP])
async def test_counts_recover_from_a_failed_peek(rig: Rig, kind: FaultKind) -> None:
    """``status``, ``ensure`` and readiness peek: a peek that fails is ``BusUnavailable`` at
    worst, and the counts are right once one gets through."""
    await rig.publish([message(1)])
    await rig.bus.ensure(rig.queue)
    rig.inject(kind, Operation.PEEK)

    async def depth() -> int | None:
        try:
            return (await rig.bus.counts(rig.queue)).depth
        except BusUnavailable:
            return None

    assert await wait_for(depth, SETTLE_DEADLINE_S, what="counts") == 1
    assert rig.fired()[kind] == 1


@pytest.mark.parametrize("closed", ["handler", "link"])
async def test_settling_on_a_link_closed_meanwhile_is_a_documented_error(
    rig: Rig, closed: str
) -> None:
    """Settlements run concurrently, and one's failure closes the link under the others: the
    SDK then answers "the handler has already been shutdown" (a ValueError), which crashed the
    uploader; after a connection error the SDK closes the link itself (the handler stays) and
    refuses the same way. The bus drops the closed link and says LockLost (BusUnavailable for
    a call that is not a settlement), and the message comes back when its lock runs out."""
    await rig.publish([message(0)])
    batch: list[Delivery] = []
    while not batch:
        batch = await rig.bus.receive(rig.queue, max_messages=1, max_wait_s=0.5)
    receiver = await rig.bus._links.receiver(rig.queue)  # what another call's failure closes
    await (receiver.close() if closed == "handler" else receiver._close_handler())

    with pytest.raises(LockLost):  # the closed link is dropped: its messages are lost to us
        await rig.bus.complete(rig.queue, batch)
    with pytest.raises(LockLost):
        await rig.bus.renew_locks(rig.queue, batch)

    ledger = Ledger()
    await rig.drain(ledger)
    assert ledger.counts == {batch[0].message_id: [2]}


# ------------------------------------------------------------------------------------------
# Chaos


@pytest.mark.timeout(150)
async def test_every_message_arrives_once_under_random_faults(rig: Rig) -> None:
    """A tenth of every send, receive, settlement and peek meets a random fault while a
    couple of hundred messages are published and consumed: all arrive, none twice completed."""
    sent = [message(i) for i in range(200)]
    ledger = Ledger()
    published = asyncio.Event()
    await rig.bus.ensure(rig.queue)
    rig.namespace.chaos(0.1, random.Random(16))

    async def publisher() -> None:
        for start in range(0, len(sent), 20):
            await rig.publish(sent[start : start + 20])
        published.set()

    async with asyncio.timeout(120):
        await asyncio.gather(publisher(), rig.drain(ledger, published=published, deadline_s=120))
    rig.namespace.chaos(0.0, random.Random())

    ledger.assert_delivered_once_each([m.message_id for m in sent])
    assert all(rig.fired()[kind] > 0 for kind in FaultKind), rig.fired()
    # The SDK leaves the socket of a failed connection open (shared.adapters.servicebus_sdk):
    # with its fix, a producer and a consumer hold one connection each, and none once closed.
    assert len(sockets(rig.namespace)) <= 2, sockets(rig.namespace)
    await rig.producer.aclose()
    await rig.bus.aclose()
    await wait_for(lambda: not sockets(rig.namespace), 5.0, what="every socket closed")


def sockets(namespace: FakeServiceBus) -> set[int]:
    """The local ports of this process's connections to the fake namespace, in any state."""
    return client_ports(os.getpid(), namespace.port)
