"""The embedded bus: Redis Streams with Service Bus semantics (DESIGN.md §3, §4).

Why it looks like this
======================

The contract is Service Bus peek-lock (``shared.contract.bus``). Redis Streams has the pieces:
a consumer group hands entries out once (``XREADGROUP >``), remembers who holds which entry and
how often it was delivered (the pending entries list, PEL), and lets an expired holder's entries
be taken over (``XPENDING … IDLE`` + ``XCLAIM``, minimum idle time = the lock duration). What
Streams lacks (dead-lettering, a maximum delivery count, duplicate detection, settling only what
one still holds) is done in Lua scripts, so each step is atomic and costs one round trip per
batch.

- **One stream, one group per receivable entity.** A queue is one stream. A topic is not a
  stream at all: it is a registry (a set) of its subscriptions, and ``publish`` writes each
  message into every registered subscription's own stream. So every stream has exactly one
  consumer group, a completed entry can be ``XDEL``-eted at once, and memory stays flat however
  long the pipeline runs: Redis holds what is waiting, in flight or dead-lettered, nothing more.
- **A topic with no subscription drops what is published to it**, exactly as Service Bus does;
  a subscription receives only what was published after ``ensure`` registered it.
- **Lock = pending entry owned by this consumer.** ``consumer`` names this process inside the
  group; it must be unique per process (two processes sharing a name could settle each other's
  messages). A delivery's ``lock_token`` is ``<entry id>#<delivery count>``: a settle succeeds
  only while the entry is still pending to this consumer *with that count*, so a stale delivery
  cannot settle the redelivery of the same entry, even inside one process. A lock that expired
  but that nobody took over yet still settles (nobody else can have acted on the message);
  Service Bus would refuse it, which is the only place this backend is more lenient.
- **Delivery count** is the PEL's times-delivered. Taking over an expired lock (``XCLAIM``)
  increments it; ``abandon`` sets the entry's idle time to the lock duration with ``XCLAIM …
  IDLE … JUSTID`` (which does not increment), so the next ``receive`` anywhere takes it over
  at once and the takeover counts the delivery. An entry taken over more than ``max_delivery_count``
  times goes to the entity's dead-letter stream inside the same script (reason
  ``MaxDeliveryCountExceeded``), never to a receiver.
- **Duplicate detection** per receivable entity: a message id is added (``XADD``) only when
  it was not published less than the window ago, by the server's clock, checked in the same
  script per chunk of 500 messages. Ids are noted in two hashes that take turns, one window
  each (``scripts.PUBLISH``): a key per id with its own expiry cost the server twice as much per
  message, and its key space grew with every message of a backfill. A topic publish dedups
  per subscription, so a retried publish that failed half-way through the fan-out completes it
  without duplicating what already arrived. ``replay`` bypasses duplicate detection on purpose.
- **Times come from entry ids** (``redis_streams_codec``), so no client clock is trusted.
- **Durability** is the server's: ``publish`` returns after the script's reply, which with
  ``appendfsync always`` (``services.cli.redis_server``: the demo and `make run`) means the AOF
  holds the messages. With ``everysec`` a power loss can lose the last second; that is a deployment
  choice, not this module's.
- **Blocking.** ``XREADGROUP BLOCK`` cannot run inside Lua, so ``receive`` alternates: reclaim
  expired locks (script), then block for new entries for at most a short slice (≤ 1 s, less
  for short locks) so a lock that expires while it waits is noticed; until ``max_wait_s``.
  The client's ``socket_timeout`` must exceed that slice (``from_url`` sets 5 s).
- **Client retries.** redis-py may resend a command after a connection drops, and a script may
  then run twice. Each is harmless: a publish is deduplicated (unless the window is 0), a
  settle that already happened reports ``LockLost`` (the message *was* settled), a read whose
  reply was lost leaves entries pending that come back when their lock expires.
- **Speed.** Parsing replies dominates the client's cost: install ``hiredis`` (redis-py uses
  it when present) for about three times the receive rate of the pure-Python parser. Receiving
  reads ``XREADGROUP``'s reply unparsed (``codec.XREADGROUP``) and makes each delivery straight
  from it, which halves the client's cost per message received.

Keys and entity names: ``shared.adapters.redis_streams_keys``; the scripts:
``shared.adapters.redis_streams_scripts``; reading entries and replies:
``shared.adapters.redis_streams_codec``.

Ownership: a client passed to the constructor belongs to the caller, who closes it;
``from_url`` makes a client the bus owns and ``aclose`` closes it.

Requires Redis ≥ 6.2 (``XPENDING … IDLE``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Final, Self

from redis.exceptions import ResponseError

from shared.adapters import redis_streams_codec as codec
from shared.adapters import redis_streams_scripts as scripts
from shared.adapters.redis_connect import RedisClient, connection_option, resilient
from shared.adapters.redis_errors import translated
from shared.adapters.redis_streams_keys import (
    NAME,
    EntityKeys,
    checked_prefix,
    entity_keys,
    subscriptions_key,
)
from shared.contract.bus import (
    MAX_DELIVERY_REASON,
    Bus,
    DeadLetter,
    Delivery,
    EntityCounts,
    Message,
    Peeked,
    Queue,
    Source,
    Subscription,
    Target,
)
from shared.core import checks
from shared.core.errors import BusRefused, BusUnavailable, LockLost
from shared.core.events import get_logger

log = get_logger(__name__)

#: The one consumer group of every stream.
GROUP: Final = "receivers"
#: Messages per script call: big enough that a 1000-message page costs two round trips, small
#: enough that one call never blocks Redis for long (a few ms).
CHUNK: Final = 500
#: Longest single ``XREADGROUP BLOCK``; ``receive`` loops until its ``max_wait_s``.
MAX_BLOCK_S: Final = 1.0
#: Shortest one, so short test locks do not turn ``receive`` into a busy loop.
MIN_BLOCK_S: Final = 0.05


class RedisStreamsBus:
    """The ``Bus`` on Redis Streams; see the module docstring for how and why.

    ``consumer`` must be unique per process (hostname and pid, a pod name): it is who holds a
    lock. ``lock_duration_s``, ``max_delivery_count`` and ``duplicate_window_s`` play the
    roles of the Service Bus entity properties of the same names, for every entity this bus
    touches. Every process on one Redis must use the same values.
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        consumer: str,
        lock_duration_s: float = 60.0,
        max_delivery_count: int = 10,
        duplicate_window_s: float = 600.0,
        prefix: str = "m2s",
    ) -> None:
        checks.named("consumer", consumer)
        checks.above("lock_duration_s", lock_duration_s, 0)
        checks.at_least("max_delivery_count", max_delivery_count, 1)
        checks.at_least("duplicate_window_s", duplicate_window_s, 0)
        checked_prefix(prefix)
        if connection_option(client, "decode_responses"):
            raise ValueError(
                "the bus needs a client with decode_responses=False (bodies are bytes)"
            )
        block_s = min(MAX_BLOCK_S, max(MIN_BLOCK_S, lock_duration_s / 4))
        socket_timeout = connection_option(client, "socket_timeout")
        if socket_timeout is not None and socket_timeout <= block_s:
            raise ValueError(
                f"the client's socket_timeout ({socket_timeout} s) must exceed the {block_s} s "
                "a receive blocks for at a time"
            )
        self.consumer = consumer
        self.lock_duration_s = lock_duration_s
        self.max_delivery_count = max_delivery_count
        self.duplicate_window_s = duplicate_window_s
        self.prefix = prefix
        self._lock_ms = max(1, round(lock_duration_s * 1000))
        self._window_ms = round(duplicate_window_s * 1000)
        self._block_s = block_s
        self._client = client
        self._owns_client = False
        self._closed = False
        self._publish = client.register_script(scripts.PUBLISH)
        self._reclaim = client.register_script(scripts.RECLAIM)
        self._settle = client.register_script(scripts.SETTLE)
        self._complete = client.register_script(scripts.COMPLETE)
        self._replay = client.register_script(scripts.REPLAY)
        self._counts = client.register_script(scripts.COUNTS)
        self._peek = client.register_script(scripts.PEEK)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        consumer: str,
        socket_timeout_s: float = 5.0,
        retries: int = 3,
        **options: Any,
    ) -> Self:
        """A bus on a client it owns (``aclose`` closes it). ``socket_timeout_s`` bounds every
        command, so a hung Redis surfaces as ``BusUnavailable`` instead of a hang; it must
        exceed ``MAX_BLOCK_S``. ``options`` are the constructor's keyword arguments."""
        checks.above("socket_timeout_s", socket_timeout_s, MAX_BLOCK_S)
        client = resilient(
            url, socket_timeout_s=socket_timeout_s, retries=retries, decode_responses=False
        )
        bus = cls(client, consumer=consumer, **options)
        bus._owns_client = True
        return bus

    # ----------------------------------------------------------------------------------------
    # Keys

    def keys(self, source: Source) -> EntityKeys:
        """The keys of a queue or subscription (for ``status``, scalers and tests)."""
        return entity_keys(self.prefix, source)

    def subscriptions_key(self, topic: str) -> str:
        """The set of a topic's subscription names."""
        return subscriptions_key(self.prefix, topic)

    # ----------------------------------------------------------------------------------------
    # Bus

    async def ensure(self, source: Source) -> None:
        """Create the stream and its group (from the start: nothing already there is skipped),
        and register a subscription with its topic. The stream comes first so a publish that
        sees the registration always finds the group."""
        keys = self.keys(source)
        with _translated("ensure"):
            try:
                await self._client.xgroup_create(keys.stream, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            if isinstance(source, Subscription):
                await self._client.sadd(self.subscriptions_key(source.topic), source.name)

    async def publish(self, target: Target, messages: Sequence[Message]) -> None:
        """Publish all of ``messages`` in order; a queue not yet ``ensure``-d is created."""
        if not messages:
            return
        encoded = [codec.encode(message) for message in messages]
        if isinstance(target, Queue):
            await self._publish_to(self.keys(target), encoded)
            return
        registry = self.subscriptions_key(target.name)
        with _translated("publish"):
            members = await self._client.smembers(registry)
        sources: list[Source] = []
        for raw in sorted(members):
            name = codec.as_text(raw)
            if NAME.fullmatch(name):
                sources.append(Subscription(target.name, name))
            else:
                log.warning("bus.subscription_name_malformed", registry=registry)
        if not sources:
            log.debug("bus.no_subscription", topic=target.name, dropped=len(messages))
            return
        results = await asyncio.gather(
            *(self._publish_to(self.keys(source), encoded) for source in sources),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def receive(
        self, source: Source, *, max_messages: int, max_wait_s: float
    ) -> list[Delivery]:
        """Expired or abandoned locks first (oldest work), then new entries; waits up to
        ``max_wait_s`` for the first. A source never ``ensure``-d is ensured on first use."""
        checks.at_least("max_messages", max_messages, 1)
        keys = self.keys(source)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, max_wait_s)
        ensured = False
        with _translated("receive"):
            while True:
                try:
                    reclaimed = await self._take_over(keys, max_messages)
                    if reclaimed:
                        want = max_messages - len(reclaimed)
                        fresh = await self._read_new(keys, want, None) if want else []
                        return reclaimed + fresh
                    remaining = deadline - loop.time()
                    block_ms = int(min(remaining, self._block_s) * 1000)
                    fresh = await self._read_new(
                        keys, max_messages, block_ms if block_ms >= 1 else None
                    )
                except ResponseError as exc:
                    # The stream or its group is missing (never ensured, or Redis lost it):
                    # create it once, from the start, and try again.
                    if "NOGROUP" not in str(exc) or ensured:
                        raise
                    ensured = True
                    await self.ensure(source)
                    continue
                if fresh or block_ms < 1:
                    return fresh

    async def complete(self, source: Source, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge and delete; ``LockLost`` names those no longer ours (the rest are done)."""
        await self._settle_all("complete", source, deliveries)

    async def abandon(self, source: Source, deliveries: Sequence[Delivery]) -> None:
        """Give back now: the next ``receive`` takes them over, counting a delivery."""
        await self._settle_all("abandon", source, deliveries)

    async def dead_letter(
        self, source: Source, delivery: Delivery, *, reason: str, description: str
    ) -> None:
        """Move to the entity's dead-letter stream with ``reason`` and ``description``."""
        await self._settle_all("dead_letter", source, [delivery], reason, description)

    async def renew_locks(self, source: Source, deliveries: Sequence[Delivery]) -> None:
        """Restart each lock's clock (``XCLAIM … JUSTID`` resets the idle time and leaves the
        delivery count alone); ``LockLost`` names those already taken over."""
        await self._settle_all("renew", source, deliveries)

    async def counts(self, source: Source) -> EntityCounts:
        """``depth`` = entries nobody holds, ``in_flight`` = pending entries (held, or expired
        and not yet taken over), ``oldest_age_s`` = age of the oldest unsettled entry."""
        keys = self.keys(source)
        with _translated("counts"):
            reply = await self._counts(keys=[keys.stream, keys.dead_letter], args=[GROUP])
        return codec.entity_counts(reply)

    async def dead_letters(self, source: Source, *, limit: int = 100) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters, oldest first."""
        if limit < 1:
            return []
        keys = self.keys(source)
        with _translated("dead letters"):
            entries = await self._client.xrange(keys.dead_letter, "-", "+", count=limit)
        return codec.dead_letters(entries)

    async def peek(self, source: Source, *, limit: int = 100) -> list[Peeked]:
        """``XRANGE`` of the oldest ``limit`` entries; ``locked`` = pending with a lock that
        has not expired (an abandoned or expired entry waits to be taken over, unlocked)."""
        if limit < 1:
            return []
        keys = self.keys(source)
        with _translated("peek"):
            entries, pending = await self._peek(keys=[keys.stream], args=[GROUP, limit])
        return codec.peeked(entries, pending, lock_ms=self._lock_ms)

    async def replay(self, source: Source, dead_letters: Sequence[DeadLetter]) -> int:
        """Back into ``source`` as new entries (duplicate detection bypassed), removed from the
        dead-letter stream in the same step; those already gone are skipped, not counted."""
        if not dead_letters:
            return 0
        keys = self.keys(source)
        ids = [codec.checked_entry_id(letter.lock_token) for letter in dead_letters]
        replayed = 0
        for start in range(0, len(ids), CHUNK):
            with _translated("replay"):
                replayed += int(
                    await self._replay(
                        keys=[keys.stream, keys.dead_letter],
                        args=[GROUP, *ids[start : start + CHUNK]],
                    )
                )
        return replayed

    async def ping(self) -> None:
        with _translated("ping"):
            await self._client.ping()

    async def aclose(self) -> None:
        """Closes the client only when ``from_url`` made it; a caller's client stays open."""
        if self._owns_client and not self._closed:
            self._closed = True
            await self._client.aclose()

    # ----------------------------------------------------------------------------------------

    async def _publish_to(
        self, keys: EntityKeys, encoded: Sequence[tuple[bytes, str, bytes]]
    ) -> None:
        """Chunks go one after the other, so the stream keeps the caller's order."""
        for start in range(0, len(encoded), CHUNK):
            chunk = encoded[start : start + CHUNK]
            script_keys = [keys.stream, *keys.duplicates]
            args: list[bytes | str | int] = [GROUP, self._window_ms]
            for body, message_id, properties in chunk:
                args += (body, message_id, properties)
            with _translated("publish"):
                await self._publish(keys=script_keys, args=args)

    async def _take_over(self, keys: EntityKeys, count: int) -> list[Delivery]:
        # Capped so the script's XCLAIM argument list stays small.
        args: list[str | int] = [GROUP, self.consumer, self._lock_ms, min(count, CHUNK)]
        args += [self.max_delivery_count, MAX_DELIVERY_REASON]
        entries, dead = await self._reclaim(keys=[keys.stream, keys.dead_letter], args=args)
        if dead:
            log.warning(
                "bus.max_deliveries_dead_lettered",
                messages=int(dead),
                stream=keys.stream,
                max_delivery_count=self.max_delivery_count,
            )
        return codec.deliveries((raw_id, int(times), fields) for raw_id, times, fields in entries)

    async def _read_new(self, keys: EntityKeys, count: int, block_ms: int | None) -> list[Delivery]:
        """``XREADGROUP … >`` sent as ``codec.XREADGROUP``, so its reply arrives unparsed."""
        args: list[str | int] = [codec.XREADGROUP, GROUP, self.consumer, "COUNT", count]
        if block_ms is not None:
            args += ["BLOCK", block_ms]
        args += ["STREAMS", keys.stream, ">"]
        reply = await self._client.execute_command(*args)
        return codec.deliveries(codec.stream_entries(reply))

    async def _settle_all(
        self,
        action: str,
        source: Source,
        deliveries: Sequence[Delivery],
        reason: str = "",
        description: str = "",
    ) -> None:
        if not deliveries:
            return
        keys = self.keys(source)
        lost: list[str] = []
        for start in range(0, len(deliveries), CHUNK):
            chunk = deliveries[start : start + CHUNK]
            args: list[str | int] = [
                GROUP,
                self.consumer,
                action,
                self._lock_ms,
                reason,
                description,
            ]
            tokens = [codec.parse_token(delivery.lock_token) for delivery in chunk]
            for token in tokens:
                args += token
            with _translated(action.replace("_", " ")):
                if action == "complete":
                    args[2:6] = codec.id_range(entry_id for entry_id, _ in tokens)
                    positions = await self._complete(keys=[keys.stream], args=args)
                else:
                    positions = await self._settle(keys=[keys.stream, keys.dead_letter], args=args)
            lost += (chunk[int(position)].message_id for position in positions)
        if lost:
            raise LockLost(
                f"{action.replace('_', ' ')}: lock lost on {len(lost)} of {len(deliveries)} "
                "messages (expired and taken over by another receiver)",
                message_ids=lost,
            )


if TYPE_CHECKING:
    # The type checker holds the class to the Protocol, so the two cannot drift apart.
    _IS_A_BUS: type[Bus] = RedisStreamsBus


def _translated(operation: str) -> AbstractContextManager[None]:
    return translated("redis bus", operation, unavailable=BusUnavailable, refused=BusRefused)
