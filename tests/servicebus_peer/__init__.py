"""A fake Azure Service Bus namespace: an AMQP 1.0 peer the real ``azure-servicebus`` SDK
talks to, for tests where no Service Bus or emulator is reachable (specs/local-tooling.md).

``broker`` holds what the service does server-side (and lists what the fake implements and
what it does not); ``amqp`` speaks the protocol; ``codec`` keeps messages as raw sections;
``faults`` holds the faults it injects on demand (dropped connections, ``ServerBusy``, locks
lost mid-processing), queued for a test or drawn at random for a chaos run.

Usage::

    with FakeServiceBus() as namespace:
        namespace.create_queue("upload.prod", lock_duration_s=30)
        client = ServiceBusClient.from_connection_string(namespace.connection_string)
        namespace.inject("lock_lost", on="settle")    # the next settlement finds its lock gone
        namespace.chaos(0.1, random.Random(7))         # or: a tenth of all events meet a fault
"""

from __future__ import annotations

import random
from types import TracebackType
from typing import Self

from tests.servicebus_peer.amqp import PeerThread
from tests.servicebus_peer.broker import Broker, EntityProperties, ReplayRule
from tests.servicebus_peer.faults import Fault, FaultKind, FaultPlan, Operation

__all__ = [
    "Broker",
    "EntityProperties",
    "FakeServiceBus",
    "Fault",
    "FaultKind",
    "Operation",
    "ReplayRule",
]


class FakeServiceBus:
    """One fake namespace on ``127.0.0.1:<free port>``, served from a background thread."""

    def __init__(self) -> None:
        self.broker = Broker()
        self.faults = FaultPlan()
        self._peer = PeerThread(self.broker, faults=self.faults)

    @property
    def host(self) -> str:
        return self._peer.host

    @property
    def port(self) -> int:
        return self._peer.port

    @property
    def connection_string(self) -> str:
        """A SAS connection string; ``UseDevelopmentEmulator=true`` makes the SDK skip TLS and
        keep the port. The key is made up: the fake accepts every CBS token."""
        return (
            f"Endpoint=sb://{self.host}:{self.port}/;SharedAccessKeyName=RootManageSharedAccessKey;"
            "SharedAccessKey=ZmFrZS1rZXktZm9yLXRlc3RzLW9ubHk=;UseDevelopmentEmulator=true"
        )

    @property
    def failure(self) -> BaseException | None:
        """The first error the peer hit while serving (None when all went well)."""
        return self._peer.failure

    def start(self) -> None:
        self._peer.start()

    def stop(self) -> None:
        self._peer.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- faults (faults.py says what each does on the wire) -----------------------------------

    def chaos(self, rate: float, rng: random.Random) -> None:
        """From now on each send, receive, settlement, renewal and peek meets a fault with
        probability ``rate``, its kind drawn by ``rng`` among those the event allows;
        ``chaos(0.0, rng)`` turns it off. Queued faults (``inject``) still fire first."""
        self.faults.chaos(rate, rng)

    def inject(
        self,
        kind: FaultKind | str,
        *,
        on: Operation | str | None = None,
        times: int = 1,
        after: int = 0,
        applied: bool = False,
    ) -> Fault:
        """Queue one fault for the next ``times`` events of ``on`` (any that allows ``kind``
        when None), after letting ``after`` of them pass; ``applied`` (drops only): the
        operation took effect and only its answer is lost."""
        return self.faults.inject(kind, on=on, times=times, after=after, applied=applied)

    def fault_counts(self) -> dict[str, int]:
        """How many faults of each kind fired (``drop``, ``server_busy``, ``lock_lost``)."""
        return self.faults.counts()

    # -- entities (what `az servicebus queue|topic|topic subscription create` does) ---------

    def create_queue(
        self,
        name: str,
        *,
        lock_duration_s: float = 60.0,
        max_delivery_count: int = 10,
        duplicate_window_s: float = 600.0,
    ) -> None:
        self.broker.create_queue(
            name, EntityProperties(lock_duration_s, max_delivery_count, duplicate_window_s)
        )

    def create_topic(self, name: str, *, duplicate_window_s: float = 600.0) -> None:
        self.broker.create_topic(name, EntityProperties(duplicate_window_s=duplicate_window_s))

    def create_subscription(
        self,
        topic: str,
        name: str,
        *,
        lock_duration_s: float = 60.0,
        max_delivery_count: int = 10,
        rule: ReplayRule | None = None,
    ) -> None:
        self.broker.create_subscription(
            topic,
            name,
            EntityProperties(lock_duration_s, max_delivery_count),
            rule=rule,
        )
