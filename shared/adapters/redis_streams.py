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
  each (``_PUBLISH``): a key per id with its own expiry cost the server twice as much per
  message, and its key space grew with every message of a backfill. A topic publish dedups
  per subscription, so a retried publish that failed half-way through the fan-out completes it
  without duplicating what already arrived. ``replay`` bypasses duplicate detection on purpose.
- **Times come from entry ids.** A stream id's first part is the server's clock in ms when the
  entry was added: that is ``enqueued_at`` of a delivery and ``dead_lettered_at`` of a dead
  letter, so no field stores them twice and no client clock is trusted.
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
  reads ``XREADGROUP``'s reply unparsed (``_XREADGROUP``) and makes each delivery straight
  from it, which halves the client's cost per message received.

Keys (``P`` = ``prefix``, default ``m2s``)
==========================================

Each entity's keys share one Redis Cluster hash tag, so every script touches a single slot:

``P:{<queue>}:stream`` / ``P:{<topic>/<subscription>}:stream``
    stream; fields ``body``, ``message_id``, ``properties`` (JSON object). Consumer group
    ``receivers``. Entries are deleted once completed or dead-lettered.
``P:{<entity>}:dlq``
    stream; fields ``body``, ``message_id``, ``properties``, ``reason``, ``description``,
    ``delivery_count``. Unbounded: a dead letter leaves only by ``replay`` or an operator.
``P:{<entity>}:dup:0`` / ``P:{<entity>}:dup:1``
    hashes of message id → publish time (epoch ms), plus the slot they hold under the empty
    field; each holds one slot of ``duplicate_window_s`` and is emptied when its parity's next
    slot begins, so the ids of the last one to two windows are noted (about 90 bytes each).
``P:{<topic>}:subscriptions``
    set of subscription names; written by ``ensure(Subscription)``, read by every topic
    publish.

Entity names are letters, digits, ``.``, ``_`` and ``-`` (no ``/``, so a queue can never be
mistaken for a subscription, and no braces, which would break the hash tag).

Ownership: a client passed to the constructor belongs to the caller, who closes it;
``from_url`` makes a client the bus owns and ``aclose`` closes it.

Requires Redis ≥ 6.2 (``XPENDING … IDLE``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Self, TypeAlias

import orjson
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ResponseError

from shared.adapters.redis_connect import connect
from shared.adapters.redis_errors import translated
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
from shared.core.errors import BusRefused, BusUnavailable, LockLost

logger = logging.getLogger(__name__)

#: Either client works: every script stays inside one hash slot.
RedisClient: TypeAlias = "Redis | RedisCluster"

#: The one consumer group of every stream.
GROUP: Final = "receivers"
#: Messages per script call: big enough that a 1000-message page costs two round trips, small
#: enough that one call never blocks Redis for long (a few ms).
CHUNK: Final = 500
#: Longest single ``XREADGROUP BLOCK``; ``receive`` loops until its ``max_wait_s``.
MAX_BLOCK_S: Final = 1.0
#: Shortest one, so short test locks do not turn ``receive`` into a busy loop.
MIN_BLOCK_S: Final = 0.05

_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,259}")
_PREFIX: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

#: ``XREADGROUP`` named with its first argument. redis-py sends a command name with a space as
#: its words (as it sends ``CONFIG GET``; ``shared.adapters.redis_connect`` packs it the same way)
#: but picks the reply's response callback by the name as given, and none is registered under this
#: one: the reply comes back as the server sent it and ``_stream_entries`` reads its flat field
#: lists directly, instead of redis-py first building a dict per entry that ``_delivery`` would
#: take apart again (the two were most of the client's cost of receiving). Nothing of the
#: client is changed, so a client shared with other code behaves exactly as before.
_XREADGROUP: Final = "XREADGROUP GROUP"
#: The fields ``_PUBLISH`` writes, in its order (``_REPLAY`` and the dead-letter copies too).
_OUR_FIELDS: Final = (b"body", b"message_id", b"properties")


# --------------------------------------------------------------------------------------------
# Lua scripts. KEYS are always declared so Redis Cluster can route and check them.

#: KEYS[1] stream, KEYS[2], KEYS[3] the two duplicate-detection hashes; ARGV group, window ms
#: (0: no detection), then body, message_id, properties per message.
#: Creates the stream and its group when missing, so a queue published to before its
#: receivers started keeps everything (the group starts at 0, not at $).
#: Duplicate detection by the server's clock: time is cut into slots one window long, and
#: each message id published is noted, with its time, in the hash of its slot's parity. A
#: hash is emptied when a slot of its parity begins, two slots after its last one, so an id
#: stays noted for at least a window; an id is a duplicate when noted less than a window ago.
_PUBLISH: Final = """
local stream, group, window = KEYS[1], ARGV[1], tonumber(ARGV[2])
if redis.call('EXISTS', stream) == 0 then
  redis.call('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
end
local now, current, previous = 0, nil, nil
if window > 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local slot = math.floor(now / window)
  current, previous = KEYS[2 + slot % 2], KEYS[3 - slot % 2]
  if tonumber(redis.call('HGET', current, '')) ~= slot then
    redis.call('UNLINK', current)
    redis.call('HSET', current, '', slot)
  end
  redis.call('PEXPIREAT', current, (slot + 2) * window)
end
local added = 0
for i = 1, (#ARGV - 2) / 3 do
  local a = 3 * i
  local fresh = true
  if window > 0 then
    local id = ARGV[a + 1]
    local noted = redis.call('HGET', current, id) or redis.call('HGET', previous, id)
    fresh = not noted or tonumber(noted) + window <= now
    if fresh then
      redis.call('HSET', current, id, now)
    end
  end
  if fresh then
    redis.call('XADD', stream, '*',
      'body', ARGV[a], 'message_id', ARGV[a + 1], 'properties', ARGV[a + 2])
    added = added + 1
  end
end
return added
"""

#: KEYS[1] stream, KEYS[2] dlq; ARGV group, consumer, min idle ms, count, max delivery count,
#: reason. Takes over the oldest entries whose lock expired (or that were abandoned); an entry
#: now delivered more than the maximum goes to the dead-letter stream instead of to the caller.
#: Returns {{{id, delivery count, fields}, ...}, dead-lettered count}.
#: ``XPENDING … IDLE`` rather than ``XAUTOCLAIM``: the latter examines at most 10 × COUNT
#: pending entries per call, so an expired entry behind a long pending list (a busy uploader)
#: would wait several receives; ``XPENDING … IDLE`` skips the live locks however many there are.
_RECLAIM: Final = """
local stream, dlq = KEYS[1], KEYS[2]
local group, consumer, min_idle = ARGV[1], ARGV[2], ARGV[3]
local need, max_delivery, reason = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
if redis.call('EXISTS', stream) == 0 then
  return {{}, 0}
end
local delivered, dead = {}, 0
local expired = redis.call('XPENDING', stream, group, 'IDLE', min_idle, '-', '+', need)
if #expired == 0 then
  return {delivered, dead}
end
local ids, times = {}, {}
for i, p in ipairs(expired) do
  ids[i] = p[1]
  times[p[1]] = p[4] + 1
end
local claimed = {}
for _, entry in ipairs(redis.call('XCLAIM', stream, group, consumer, min_idle, unpack(ids))) do
  if type(entry) == 'table' and type(entry[2]) == 'table' then claimed[entry[1]] = entry[2] end
end
for _, id in ipairs(ids) do
  local fields, count = claimed[id], times[id]
  if fields == nil then
    -- deleted from the stream behind our back: nothing to deliver, forget it
    redis.call('XACK', stream, group, id)
  elseif count > max_delivery then
    local f = {}
    for j = 1, #fields, 2 do f[fields[j]] = fields[j + 1] end
    redis.call('XADD', dlq, '*',
      'body', f['body'] or '', 'message_id', f['message_id'] or id,
      'properties', f['properties'] or '{}', 'reason', reason,
      'description', string.format(
        'delivered %d times, the maximum delivery count is %d', count - 1, max_delivery),
      'delivery_count', count - 1)
    redis.call('XACK', stream, group, id)
    redis.call('XDEL', stream, id)
    dead = dead + 1
  else
    delivered[#delivered + 1] = {id, count, fields}
  end
end
return {delivered, dead}
"""

#: KEYS[1] stream, KEYS[2] dlq; ARGV group, consumer, action, lock ms, reason, description,
#: then entry id, delivery count per delivery. Acts only on entries still pending to this
#: consumer with that delivery count (the lock is ours); returns the 0-based positions of the
#: others, whose lock was lost.
_SETTLE: Final = """
local stream, dlq = KEYS[1], KEYS[2]
local group, consumer, action, lock_ms = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local lost = {}
local exists = redis.call('EXISTS', stream) == 1
for i = 7, #ARGV, 2 do
  local id, count = ARGV[i], tonumber(ARGV[i + 1])
  local p = nil
  if exists then p = redis.call('XPENDING', stream, group, id, id, 1)[1] end
  if p == nil or p[2] ~= consumer or p[4] ~= count then
    lost[#lost + 1] = (i - 7) / 2
  elseif action == 'complete' then
    redis.call('XACK', stream, group, id)
    redis.call('XDEL', stream, id)
  elseif action == 'abandon' then
    redis.call('XCLAIM', stream, group, consumer, 0, id, 'IDLE', lock_ms, 'JUSTID')
  elseif action == 'renew' then
    redis.call('XCLAIM', stream, group, consumer, 0, id, 'JUSTID')
  elseif action == 'dead_letter' then
    local entry = redis.call('XRANGE', stream, id, id)[1]
    if entry then
      local f = {}
      for j = 1, #entry[2], 2 do f[entry[2][j]] = entry[2][j + 1] end
      redis.call('XADD', dlq, '*',
        'body', f['body'] or '', 'message_id', f['message_id'] or id,
        'properties', f['properties'] or '{}', 'reason', ARGV[5], 'description', ARGV[6],
        'delivery_count', count)
      redis.call('XACK', stream, group, id)
      redis.call('XDEL', stream, id)
    else
      redis.call('XACK', stream, group, id)
      lost[#lost + 1] = (i - 7) / 2
    end
  end
end
return lost
"""

#: KEYS[1] stream; ARGV group, consumer, lowest id, highest id, then (id, delivery count)
#: pairs. ``_SETTLE``'s "complete" for a whole chunk in five calls instead of three per entry
#: (the per-entry calls were most of Redis's time in a steady-state filter batch): the
#: consumer's pending entries between the lowest and the highest id are read once, and the
#: entries still ours, at the delivery we hold, are acknowledged and deleted together.
#: Returns the 0-based positions whose lock was lost.
_COMPLETE: Final = """
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local lost, done, held = {}, {}, {}
if redis.call('EXISTS', stream) == 1 then
  local mine = 0
  for _, c in ipairs(redis.call('XPENDING', stream, group)[4] or {}) do
    if c[1] == consumer then mine = tonumber(c[2]) end
  end
  if mine > 0 then
    for _, p in ipairs(redis.call('XPENDING', stream, group, ARGV[3], ARGV[4], mine, consumer)) do
      held[p[1]] = p[4]
    end
  end
end
for i = 5, #ARGV, 2 do
  local id = ARGV[i]
  if held[id] ~= nil and held[id] == tonumber(ARGV[i + 1]) then
    done[#done + 1] = id
    held[id] = nil
  else
    lost[#lost + 1] = (i - 5) / 2
  end
end
if #done > 0 then
  redis.call('XACK', stream, group, unpack(done))
  redis.call('XDEL', stream, unpack(done))
end
return lost
"""

#: KEYS[1] stream, KEYS[2] dlq; ARGV group, then dead-letter entry ids. Moves each one that is
#: still there back as a fresh entry (delivery count starts again) and deletes it from the
#: dead-letter stream, in one step, so a replay can never both keep and resend a message.
_REPLAY: Final = """
local stream, dlq = KEYS[1], KEYS[2]
if redis.call('EXISTS', stream) == 0 then
  redis.call('XGROUP', 'CREATE', stream, ARGV[1], '0', 'MKSTREAM')
end
local replayed = 0
for i = 2, #ARGV do
  local entry = redis.call('XRANGE', dlq, ARGV[i], ARGV[i])[1]
  if entry then
    local f = {}
    for j = 1, #entry[2], 2 do f[entry[2][j]] = entry[2][j + 1] end
    redis.call('XADD', stream, '*', 'body', f['body'] or '',
      'message_id', f['message_id'] or ARGV[i], 'properties', f['properties'] or '{}')
    redis.call('XDEL', dlq, ARGV[i])
    replayed = replayed + 1
  end
end
return replayed
"""

#: KEYS[1] stream, KEYS[2] dlq; ARGV group. Returns {length, pending, dead letters, oldest
#: entry id or false, server seconds, server µs}: one consistent snapshot.
_COUNTS: Final = """
local stream, dlq = KEYS[1], KEYS[2]
local length, pending, oldest = 0, 0, false
if redis.call('EXISTS', stream) == 1 then
  length = redis.call('XLEN', stream)
  local summary = redis.pcall('XPENDING', stream, ARGV[1])
  if type(summary) == 'table' and summary.err == nil then pending = summary[1] end
  local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
  if first then oldest = first[1] end
end
local t = redis.call('TIME')
return {length, pending, redis.call('XLEN', dlq), oldest, t[1], t[2]}
"""

#: KEYS[1] stream; ARGV group, count. The oldest ``count`` entries and, among them, the
#: pending ones ({id, consumer, idle ms, times delivered}): one consistent snapshot.
_PEEK: Final = """
local stream = KEYS[1]
if redis.call('EXISTS', stream) == 0 then
  return {{}, {}}
end
local entries = redis.call('XRANGE', stream, '-', '+', 'COUNT', ARGV[2])
local pending = {}
if #entries > 0 then
  local p = redis.pcall('XPENDING', stream, ARGV[1], '-', entries[#entries][1], ARGV[2])
  if type(p) == 'table' and p.err == nil then pending = p end
end
return {entries, pending}
"""


# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EntityKeys:
    """The Redis keys of one receivable entity (a queue or a subscription)."""

    stream: str
    dead_letter: str
    #: The two hashes of duplicate detection (``_PUBLISH``), by slot parity.
    duplicates: tuple[str, str]


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
        if not consumer:
            raise ValueError("consumer must not be empty")
        if not lock_duration_s > 0:
            raise ValueError(f"lock_duration_s must be > 0, got {lock_duration_s}")
        if max_delivery_count < 1:
            raise ValueError(f"max_delivery_count must be ≥ 1, got {max_delivery_count}")
        if not duplicate_window_s >= 0:
            raise ValueError(f"duplicate_window_s must be ≥ 0, got {duplicate_window_s}")
        if not _PREFIX.fullmatch(prefix):
            raise ValueError(f"prefix must match {_PREFIX.pattern}, got {prefix!r}")
        if _connection_option(client, "decode_responses"):
            raise ValueError(
                "the bus needs a client with decode_responses=False (bodies are bytes)"
            )
        block_s = min(MAX_BLOCK_S, max(MIN_BLOCK_S, lock_duration_s / 4))
        socket_timeout = _connection_option(client, "socket_timeout")
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
        self._publish = client.register_script(_PUBLISH)
        self._reclaim = client.register_script(_RECLAIM)
        self._settle = client.register_script(_SETTLE)
        self._complete = client.register_script(_COMPLETE)
        self._replay = client.register_script(_REPLAY)
        self._counts = client.register_script(_COUNTS)
        self._peek = client.register_script(_PEEK)

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
        if socket_timeout_s <= MAX_BLOCK_S:
            raise ValueError(f"socket_timeout_s must exceed {MAX_BLOCK_S}, got {socket_timeout_s}")
        client: Redis = connect(
            url,
            decode_responses=False,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            health_check_interval=30,
            retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries),
        )
        bus = cls(client, consumer=consumer, **options)
        bus._owns_client = True
        return bus

    # ----------------------------------------------------------------------------------------
    # Keys

    def keys(self, source: Source) -> EntityKeys:
        """The keys of a queue or subscription (for ``status``, scalers and tests)."""
        if isinstance(source, Queue):
            tag = _checked(source.name, "queue")
        else:
            tag = f"{_checked(source.topic, 'topic')}/{_checked(source.name, 'subscription')}"
        base = f"{self.prefix}:{{{tag}}}:"
        return EntityKeys(
            stream=base + "stream",
            dead_letter=base + "dlq",
            duplicates=(base + "dup:0", base + "dup:1"),
        )

    def subscriptions_key(self, topic: str) -> str:
        """The set of a topic's subscription names."""
        return f"{self.prefix}:{{{_checked(topic, 'topic')}}}:subscriptions"

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
        encoded = [_encode(message) for message in messages]
        if isinstance(target, Queue):
            await self._publish_to(self.keys(target), encoded)
            return
        registry = self.subscriptions_key(target.name)
        with _translated("publish"):
            members = await self._client.smembers(registry)
        sources: list[Source] = []
        for raw in sorted(members):
            name = _text(raw)
            if _NAME.fullmatch(name):
                sources.append(Subscription(target.name, name))
            else:
                logger.warning("ignoring a malformed subscription name in %s", registry)
        if not sources:
            logger.debug(
                "topic %s has no subscription: %d messages dropped", target.name, len(messages)
            )
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
        if max_messages < 1:
            raise ValueError(f"max_messages must be ≥ 1, got {max_messages}")
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
            length, pending, dead, oldest, seconds, micros = await self._counts(
                keys=[keys.stream, keys.dead_letter], args=[GROUP]
            )
        oldest_age_s = None
        if oldest:
            now_ms = int(seconds) * 1000 + int(micros) // 1000
            oldest_age_s = max(0, now_ms - _id_ms(_text(oldest))) / 1000
        return EntityCounts(
            depth=max(0, int(length) - int(pending)),
            in_flight=int(pending),
            dead_letter=int(dead),
            oldest_age_s=oldest_age_s,
        )

    async def dead_letters(self, source: Source, *, limit: int = 100) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters, oldest first."""
        if limit < 1:
            return []
        keys = self.keys(source)
        with _translated("dead letters"):
            entries = await self._client.xrange(keys.dead_letter, "-", "+", count=limit)
        letters: list[DeadLetter] = []
        for raw_id, fields in entries or []:
            entry_id = _text(raw_id)
            f = _field_map(fields)
            letters.append(
                DeadLetter(
                    body=_bytes(f.get("body")),
                    message_id=_text(f.get("message_id", entry_id)),
                    properties=_properties(f.get("properties")),
                    reason=_text(f.get("reason", b"")),
                    description=_text(f.get("description", b"")),
                    delivery_count=_int(f.get("delivery_count")),
                    dead_lettered_at=_from_ms(_id_ms(entry_id)),
                    lock_token=entry_id,
                )
            )
        return letters

    async def peek(self, source: Source, *, limit: int = 100) -> list[Peeked]:
        """``XRANGE`` of the oldest ``limit`` entries; ``locked`` = pending with a lock that
        has not expired (an abandoned or expired entry waits to be taken over, unlocked)."""
        if limit < 1:
            return []
        keys = self.keys(source)
        with _translated("peek"):
            entries, pending = await self._peek(keys=[keys.stream], args=[GROUP, limit])
        locked = {_text(entry[0]) for entry in pending or [] if int(entry[2]) < self._lock_ms}
        peeked: list[Peeked] = []
        for raw_id, fields in entries or []:
            entry_id = _text(raw_id)
            f = _field_map(fields)
            peeked.append(
                Peeked(
                    body=_bytes(f.get("body")),
                    message_id=_text(f.get("message_id", entry_id)),
                    properties=_properties(f.get("properties")),
                    enqueued_at=_from_ms(_id_ms(entry_id)),
                    locked=entry_id in locked,
                )
            )
        return peeked

    async def replay(self, source: Source, dead_letters: Sequence[DeadLetter]) -> int:
        """Back into ``source`` as new entries (duplicate detection bypassed), removed from the
        dead-letter stream in the same step; those already gone are skipped, not counted."""
        if not dead_letters:
            return 0
        keys = self.keys(source)
        ids = [_entry_id(letter.lock_token) for letter in dead_letters]
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
            logger.warning(
                "dead-lettered %d messages of %s delivered more than %d times",
                int(dead),
                keys.stream,
                self.max_delivery_count,
            )
        return _deliveries((raw_id, int(times), fields) for raw_id, times, fields in entries)

    async def _read_new(self, keys: EntityKeys, count: int, block_ms: int | None) -> list[Delivery]:
        """``XREADGROUP … >`` sent as ``_XREADGROUP``, so its reply arrives unparsed."""
        args: list[str | int] = [_XREADGROUP, GROUP, self.consumer, "COUNT", count]
        if block_ms is not None:
            args += ["BLOCK", block_ms]
        args += ["STREAMS", keys.stream, ">"]
        reply = await self._client.execute_command(*args)
        return _deliveries(_stream_entries(reply))

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
            tokens = [_parse_token(delivery.lock_token) for delivery in chunk]
            for token in tokens:
                args += token
            with _translated(action.replace("_", " ")):
                if action == "complete":
                    ids = sorted((_id_key(entry_id) for entry_id, _ in tokens))
                    args[2:6] = [_id_text(ids[0]), _id_text(ids[-1])]
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


# --------------------------------------------------------------------------------------------
# Helpers


def _checked(name: str, what: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"{what} name must match {_NAME.pattern} (letters, digits, '.', '_', '-'), got {name!r}"
        )
    return name


def _connection_option(client: RedisClient, name: str) -> Any:
    getter = getattr(client, "get_connection_kwargs", None)
    if getter is None:
        return None
    return getter().get(name)


def _encode(message: Message) -> tuple[bytes, str, bytes]:
    if not message.message_id:
        raise ValueError("message_id must not be empty (duplicate detection keys on it)")
    if not isinstance(message.body, bytes | bytearray | memoryview):
        raise TypeError(f"body must be bytes, got {type(message.body).__name__}")
    return bytes(message.body), message.message_id, orjson.dumps(dict(message.properties))


def _deliveries(entries: Iterable[tuple[Any, int, Any]]) -> list[Delivery]:
    """The deliveries of ``(entry id, delivery count, fields)`` entries. The entries of a batch
    mostly share their millisecond (one publish script adds hundreds within one), so
    ``enqueued_at`` is made once per millisecond rather than once per entry (a datetime is
    immutable: sharing one is safe)."""
    deliveries: list[Delivery] = []
    last_ms: str | None = None
    enqueued_at = _EPOCH
    for raw_id, delivery_count, fields in entries:
        entry_id = _text(raw_id)
        ms = entry_id.partition("-")[0]
        if ms != last_ms:
            enqueued_at = _from_ms(int(ms))
            last_ms = ms
        deliveries.append(_delivery(entry_id, delivery_count, fields, enqueued_at))
    return deliveries


def _delivery(entry_id: str, delivery_count: int, fields: Any, enqueued_at: datetime) -> Delivery:
    raw_body, raw_message_id, raw_properties = _message_fields(entry_id, fields)
    body = _bytes(raw_body)
    message_id = _text(raw_message_id)
    properties = _properties(raw_properties)
    lock_token = f"{entry_id}#{delivery_count}"
    # Positional, each variable named as its field: a frozen dataclass takes keywords a third
    # slower, and this runs once per message received.
    return Delivery(body, message_id, properties, delivery_count, enqueued_at, lock_token)


def _message_fields(entry_id: str, fields: Any) -> tuple[Any, Any, Any]:
    """``body``, ``message_id`` (the entry id when missing) and ``properties`` (``None`` when
    missing) of an entry's fields. An entry as this module writes it is recognised by one
    comparison and read by position; anything else (fields missing, extra, reordered, of a
    foreign writer) is read by name, exactly as such an entry always was."""
    if (
        type(fields) is list
        and len(fields) == 6
        and (fields[0], fields[2], fields[4]) == _OUR_FIELDS
    ):
        return fields[1], fields[3], fields[5]
    f = _field_map(fields)
    return f.get("body"), f.get("message_id", entry_id), f.get("properties")


def _field_map(fields: Any) -> dict[str, Any]:
    """An entry's fields by name, from a flat ``[field, value, ...]`` list as Redis sends it or
    a mapping as redis-py parses one (``None``: no fields). The list is paired as redis-py
    pairs it (a repeated field keeps its last value, a field without a value is dropped) before
    names are decoded, so an odd entry reads the same whichever way it arrived."""
    if not fields:
        return {}
    raw = fields if isinstance(fields, Mapping) else _pairs(fields)
    return {_text(k): v for k, v in raw.items()}


def _parse_token(token: str) -> tuple[str, int]:
    entry_id, sep, count = token.rpartition("#")
    if not sep or not count.isdigit():
        raise ValueError(f"not a lock token of this bus: {token!r}")
    return _entry_id(entry_id), int(count)


def _entry_id(value: str) -> str:
    ms, sep, seq = value.partition("-")
    if not (sep and ms.isdigit() and seq.isdigit()):
        raise ValueError(f"not a stream entry id: {value!r}")
    return value


def _id_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id as Redis orders them (milliseconds, then sequence)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


def _id_text(key: tuple[int, int]) -> str:
    return f"{key[0]}-{key[1]}"


def _id_ms(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


def _from_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def _text(value: Any) -> str:
    if type(value) is bytes:  # what hiredis hands back, so tested first
        return value.decode("utf-8", "replace")
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _bytes(value: Any) -> bytes:
    if type(value) is bytes:  # a body as Redis sends it; bytes() would return it unchanged
        return value
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode()
    return bytes(value)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _properties(raw: Any) -> dict[str, str]:
    """A foreign or garbled value reads as no properties rather than stalling the entity."""
    if not raw:
        return {}
    try:
        decoded = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(decoded, dict):
        return {}
    for value in decoded.values():  # a loop, not all(): this runs once per message received
        if type(value) is not str:
            return {str(k): v if isinstance(v, str) else str(v) for k, v in decoded.items()}
    return decoded  # ours always are all strings (and JSON keys are str)


def _pairs(flat: Sequence[Any]) -> dict[Any, Any]:
    return dict(zip(flat[0::2], flat[1::2], strict=False))


def _stream_entries(reply: Any) -> Iterator[tuple[Any, int, Any]]:
    """``(entry id, 1, fields)`` of each entry of an unparsed one-stream ``XREADGROUP … >``
    reply (every entry is delivered for the first time): RESP2 ``[[stream, [[id, [field,
    value, ...]], ...]]]`` or RESP3 ``{stream: [...]}``; nil (nothing new) yields nothing, and
    so does a nil entry, as redis-py's parse skips one."""
    if not reply:
        return
    groups = reply.values() if isinstance(reply, dict) else (pair[1] for pair in reply)
    for entries in groups:
        for entry in entries or ():
            if entry is not None and entry[0] is not None:
                yield entry[0], 1, entry[1]


def _translated(operation: str) -> AbstractContextManager[None]:
    return translated("redis bus", operation, unavailable=BusUnavailable, refused=BusRefused)
