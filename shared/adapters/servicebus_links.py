"""The Service Bus client's links (one sender or receiver per entity) and the one gate every
SDK call passes, which bounds it in time and turns what it raises into the error tree.

- **One client per process**, its senders and receivers cached per entity (each link costs a
  round trip to open). Receivers are peek-lock with prefetch 0, so nothing is locked that a
  ``receive`` call did not ask for.
- **Errors**: every SDK call is bounded by ``operation_timeout_s`` (the SDK can hang on a peer
  that stops answering). A timeout, a connection or server-busy error is ``BusUnavailable``
  (retry later); missing or disabled entities and refused credentials are ``BusEntityMissing`` /
  ``BusAccessDenied`` (fatal: an operator must act). A receiver or sender that failed is closed
  and opened afresh on next use.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, TypeVar

from azure.servicebus import ServiceBusMessage, ServiceBusReceiveMode, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver, ServiceBusSender
from azure.servicebus.exceptions import (
    MessageAlreadySettled,
    MessageLockLostError,
    MessageSizeExceededError,
    MessagingEntityDisabledError,
    MessagingEntityNotFoundError,
    ServiceBusAuthenticationError,
    ServiceBusAuthorizationError,
    ServiceBusError,
)

from shared.adapters import servicebus_sdk
from shared.contract.bus import Queue, Source, Subscription, Target, Topic
from shared.core.errors import BusAccessDenied, BusEntityMissing, BusUnavailable
from shared.core.events import get_logger

log = get_logger(__name__)

T = TypeVar("T")


@dataclass(eq=False)
class Links:
    """The senders and receivers of one client, opened on first use and dropped after a
    failure. ``dropped`` is told of every receiver dropped, because the messages it received
    can no longer be settled (their locks run out, as on a crash)."""

    client: ServiceBusClient
    _: KW_ONLY
    consumer: str
    operation_timeout_s: float
    dropped: Callable[[ServiceBusReceiver], None]
    closed: bool = field(default=False, init=False)
    _senders: dict[Target, ServiceBusSender] = field(default_factory=dict, init=False)
    _receivers: dict[tuple[Source, bool], ServiceBusReceiver] = field(
        default_factory=dict, init=False
    )

    async def receiver(self, source: Source, *, dead_letter: bool = False) -> ServiceBusReceiver:
        """The cached receiver of ``source``, opened: the SDK would otherwise open the link
        inside the first ``receive`` and count the ~0.5 s that takes against its wait."""
        if self.closed:
            raise RuntimeError("the bus is closed")
        key = (source, dead_letter)
        receiver = self._receivers.get(key)
        if receiver is None:
            options: dict[str, Any] = {
                "receive_mode": ServiceBusReceiveMode.PEEK_LOCK,
                "prefetch_count": 0,
                "client_identifier": f"{self.consumer}-{uuid.uuid4().hex[:8]}",
            }
            if dead_letter:
                options["sub_queue"] = ServiceBusSubQueue.DEAD_LETTER
            if isinstance(source, Queue):
                receiver = self.client.get_queue_receiver(source.name, **options)
            else:
                receiver = self.client.get_subscription_receiver(
                    source.topic, source.name, **options
                )
            try:
                await self.call(source, "open", receiver.__aenter__())
            except BaseException:
                await self._close_quietly(receiver)  # or its connection stays open
                raise
            self._receivers[key] = receiver
        return receiver

    def sender(self, target: Target) -> ServiceBusSender:
        if self.closed:
            raise RuntimeError("the bus is closed")
        sender = self._senders.get(target)
        if sender is None:
            identifier = f"{self.consumer}-{uuid.uuid4().hex[:8]}"
            if isinstance(target, Queue):
                sender = self.client.get_queue_sender(target.name, client_identifier=identifier)
            else:
                sender = self.client.get_topic_sender(target.name, client_identifier=identifier)
            self._senders[target] = sender
        return sender

    async def send(self, target: Target, outgoing: Sequence[ServiceBusMessage]) -> None:
        """Send ``outgoing`` in order, in as few batches as the namespace's maximum message
        size allows (the SDK's batch object decides); returns once Service Bus took all."""
        sender = self.sender(target)
        batch = await self.call(target, "publish", sender.create_message_batch(), handler=sender)
        for message in outgoing:
            try:
                batch.add_message(message)
                continue
            except MessageSizeExceededError:
                if len(batch) == 0:
                    raise ValueError(
                        f"message {message.message_id} exceeds the namespace's maximum size"
                    ) from None
            await self.call(target, "publish", sender.send_messages(batch), handler=sender)
            batch = await self.call(
                target, "publish", sender.create_message_batch(), handler=sender
            )
            batch.add_message(message)
        if len(batch):
            await self.call(target, "publish", sender.send_messages(batch), handler=sender)

    async def call(
        self,
        entity: Source | Target,
        operation: str,
        call: Awaitable[T],
        *,
        extra_s: float = 0.0,
        handler: ServiceBusSender | ServiceBusReceiver | None = None,
    ) -> T:
        """Run one SDK call within the time limit, translating what it raises; then close what
        the SDK replaced meanwhile (``servicebus_sdk``: it would leave those sockets open),
        and all that ``handler``, the one the call used, opened if it was dropped meanwhile."""
        try:
            return await self._translated(entity, operation, call, extra_s)
        except ValueError as exc:
            if handler is None or not _shut_down(handler):
                raise
            # The SDK's answer for a handler another call's failure closed meanwhile; one
            # still cached (closed some other way) is dropped, so the next call opens afresh.
            if self._is_cached(entity, handler):
                await self._reset(entity)
            raise BusUnavailable(
                f"service bus {operation} on {describe(entity)}: its link was closed meanwhile"
            ) from exc
        finally:
            self._release(entity, handler)

    def holds(self, receiver: ServiceBusReceiver) -> bool:
        """Whether ``receiver`` is still in use (not dropped after a failure, not closed)."""
        return any(receiver is cached for cached in self._receivers.values())

    async def _translated(
        self, entity: Source | Target, operation: str, call: Awaitable[T], extra_s: float
    ) -> T:
        try:
            return await self.bounded(call, operation, extra_s)
        except (MessageLockLostError, MessageAlreadySettled):
            raise  # the settling code decides what a lost lock means
        except (MessagingEntityNotFoundError, MessagingEntityDisabledError) as exc:
            raise BusEntityMissing(
                f"service bus {operation}: {describe(entity)} does not exist or is disabled "
                "(create it as docs/servicebus.md says)"
            ) from exc
        except (ServiceBusAuthenticationError, ServiceBusAuthorizationError) as exc:
            raise BusAccessDenied(
                f"service bus {operation} on {describe(entity)} refused: {type(exc).__name__}"
            ) from exc
        except ServiceBusError as exc:
            await self._reset(entity)
            raise BusUnavailable(
                f"service bus {operation} on {describe(entity)} failed: {type(exc).__name__}: "
                f"{_short(exc)}"
            ) from exc
        except BusUnavailable:
            await self._reset(entity)
            raise

    async def bounded(self, call: Awaitable[T], operation: str, extra_s: float = 0.0) -> T:
        limit = self.operation_timeout_s + extra_s
        try:
            async with asyncio.timeout(limit):
                return await call
        except TimeoutError as exc:
            raise BusUnavailable(
                f"service bus {operation} did not answer within {limit:.0f} s"
            ) from exc

    async def close(self) -> None:
        """Close every link; the client itself stays its owner's."""
        self.closed = True
        handlers: list[ServiceBusSender | ServiceBusReceiver] = [
            *self._senders.values(),
            *self._receivers.values(),
        ]
        self._senders.clear()
        self._receivers.clear()
        await asyncio.gather(*(self._close_quietly(handler) for handler in handlers))

    async def _reset(self, entity: Source | Target) -> None:
        """Drop the links of ``entity`` after a failure: the next call opens fresh ones."""
        handlers: list[ServiceBusSender | ServiceBusReceiver] = []
        if isinstance(entity, Topic):
            sender = self._senders.pop(entity, None)
            handlers += [sender] if sender else []
        else:
            if isinstance(entity, Queue):
                sender = self._senders.pop(entity, None)
                handlers += [sender] if sender else []
            for dead in (False, True):
                receiver = self._receivers.pop((entity, dead), None)
                if receiver is not None:
                    handlers.append(receiver)
                    self.dropped(receiver)
        for handler in handlers:
            await self._close_quietly(handler)

    def _release(
        self, entity: Source | Target, used: ServiceBusSender | ServiceBusReceiver | None
    ) -> None:
        for handler in self._cached(entity):
            servicebus_sdk.release_replaced(handler)
        if used is not None and not self._is_cached(entity, used):
            servicebus_sdk.release(used)

    def _is_cached(
        self, entity: Source | Target, handler: ServiceBusSender | ServiceBusReceiver
    ) -> bool:
        return any(handler is cached for cached in self._cached(entity))

    def _cached(self, entity: Source | Target) -> list[ServiceBusSender | ServiceBusReceiver]:
        cached: list[ServiceBusSender | ServiceBusReceiver | None] = []
        if not isinstance(entity, Subscription):
            cached.append(self._senders.get(entity))
        if not isinstance(entity, Topic):
            cached += [self._receivers.get((entity, dead)) for dead in (False, True)]
        return [handler for handler in cached if handler is not None]

    async def _close_quietly(self, handler: ServiceBusSender | ServiceBusReceiver) -> None:
        try:
            await self.bounded(handler.close(), "close")
        except (BusUnavailable, ServiceBusError) as exc:
            log.warning("bus.link_close_failed", error=type(exc).__name__)
        finally:
            servicebus_sdk.release(handler)


def _shut_down(handler: ServiceBusSender | ServiceBusReceiver) -> bool:
    """Whether ``handler`` was closed, or (a receiver) its link was: the SDK closes the link
    after a connection error, and refuses to settle what the old link received."""
    shutdown = getattr(handler, "_shutdown", None)  # set by close(); neither is public
    if shutdown is not None and shutdown.is_set():
        return True
    return isinstance(handler, ServiceBusReceiver) and not getattr(handler, "_running", True)


def describe(entity: Source | Target) -> str:
    if isinstance(entity, Subscription):
        return f"subscription {entity.topic}/{entity.name}"
    if isinstance(entity, Queue):
        return f"queue {entity.name}"
    return f"topic {entity.name}"


def _short(exc: BaseException) -> str:
    return str(exc).replace("\n", " ")[:200]
