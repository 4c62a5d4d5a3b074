"""The Redis state adapter: everything the services remember outside the bus (DESIGN.md §2, §4).

Keys
====

All keys start with ``m2s:`` and carry a Redis Cluster hash tag: every key of one destination
lives under ``m2s:{<destination>}:`` and the fetcher's under ``m2s:{fetcher}:``, so each group
sits in one slot and the multi-key scripts below run on Redis Cluster (Azure Cache for Redis
clustered tiers) as they do on one server. The fetcher's keys all live under ``feed:``, a name no
destination key uses, so a destination that happens to be called ``fetcher`` cannot collide.

Each entry: key, type and value; TTL; who writes; who reads (D = the destination's name).

``m2s:{fetcher}:feed:lease``
    string, the holder's owner id. TTL ``ttl_s`` (30 s), extended by the holder's ``renew``.
    Written by the fetcher (acquire, renew, release); read by the fetcher and ``status``.
``m2s:{fetcher}:feed:checkpoint``
    hash: ``last_updated`` (epoch ms), ``saved_at`` (epoch ms), ``run_id``. No TTL: losing it
    costs a full ``INITIAL_LOOKBACK`` re-sync. Written by the fetcher (``advance``, forward
    only); read by the fetcher and ``status``.
``m2s:{fetcher}:feed:last_run``
    string, JSON object: the last sync's funnel. No TTL. Written by the fetcher; read by
    ``status``.
``m2s:{fetcher}:feed:counters``
    hash, name -> count (fetched, pages, published, …). No TTL. Written by the fetcher; read
    by ``status`` and metrics.
``m2s:{D}:s:<id>`` (seen)
    ``<id>`` is 96 bits of the STIX id's UUID in 16 base64url characters (``compact_id``).
    One per indicator in Sentinel, so every byte counts: Redis keeps a key of up to 30
    characters in 32 bytes (a 1-byte header), a longer one in 48, so a destination name of
    up to 5 characters saves 16 bytes per remembered indicator. String,
    ``SeenEntry.encode()``: 44 ASCII bytes, the fingerprint, the source tag and ``valid_until``.
    Expires AT that ``valid_until`` (``PXAT``). Written by the uploader (``commit``, after
    Sentinel accepted the record); read by the filter (``seen``).
``m2s:{D}:inflight:<id>``
    string, the fingerprint of the version queued for upload. TTL: the filter's claim TTL.
    Written by the filter (``claim``, ``release``) and cleared by the uploader (``commit``);
    read by the uploader (``claims``: is my message superseded?).
``m2s:{D}:claimed:<token>``
    string, one ``1`` (granted) or ``0`` per claim of one ``claim`` call: that call's answer,
    under a token unique to the call. TTL ``CLAIM_RECEIPT_TTL_S`` (5 min). Written by the
    filter (``claim``) and read by the same call when its client resends it after losing
    the reply, so the resend answers as the run that took the claims did.
``m2s:{D}:counters``
    hash, reason -> count (dropped_*, forwarded, uploaded, rejected, dead_lettered, …). No TTL.
    Written by the filter and the uploader; read by ``status`` and metrics.
``m2s:{D}:circuit``
    hash: ``state`` (closed|open|half_open), ``reason``, ``since`` (epoch ms, server clock).
    No TTL. Written by the uploader; read by every uploader replica, readiness and ``status``.
``m2s:{D}:rate:log``
    sorted set, one member per granted request, scored by the server's time in µs. TTL
    window + margin (+1 s; see ``RateBudget``), renewed per grant; older members are trimmed
    on each acquire.
    Written and read by the uploader replicas (``RateBudget``); read by metrics.
``m2s:{D}:rate:pause``
    string; its TTL (``PX``) is the shared 429 pause. Written by the uploader that met the 429;
    read by every uploader replica (``RateBudget.acquire``).

Why these shapes
================

- **Atomic and batched.** Every operation that touches several keys is one Lua script (or one
  multi-key command), so it is atomic and costs one round trip whatever the batch size: the
  filter must stay far below 0.05 round trips per indicator. Scripts are registered once per
  adapter (``register_script``); redis-py sends ``EVALSHA`` and loads the script only the first
  time a server has not seen it.
- **Clocks.** Where replicas on different hosts must agree (the rate budget, the 429 pause,
  when the circuit changed state, when the checkpoint was saved) the script reads the Redis
  server's ``TIME``; where a single caller decides (``commit``'s "already expired"), ``now`` is
  injected so it can be tested.
- **Foreign values never stall a destination.** A garbled ``seen`` value reads as "not seen"
  (one needless re-upload, never a lost indicator), and a garbled claim is overwritten. The
  singleton keys (lease, checkpoint, counters, circuit) are ours alone; a wrong type there is
  ``StateRefused``, for an operator.
- **Memory.** One destination's keys share a slot, so they live on one shard. A seen entry
  is the bulk: its key is kept short (the compact id) and its value fits Redis's embedded
  string (at most 44 bytes), so it costs about 170 bytes with the key's expiry, about
  170 MB for a million indicators (``make bench`` measures it).

Requires Redis ≥ 6.2 (``PXAT``, effects replication of scripts that read ``TIME``).
"""

from __future__ import annotations

import base64
import functools
import logging
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Final, TypeAlias

import orjson
from redis.asyncio import Redis, RedisCluster
from redis.commands.core import AsyncScript

from shared.adapters.redis_errors import translated
from shared.core.errors import StateRefused, StateUnavailable
from shared.core.fingerprint import SeenEntry

logger = logging.getLogger(__name__)

#: Either client works: every multi-key operation stays inside one hash slot.
RedisClient: TypeAlias = "Redis | RedisCluster"

PREFIX: Final = "m2s"
FETCHER_TAG: Final = "fetcher"
#: The destination names ``DESTINATION`` accepts (shared.core.settings); anything else could break
#: out of the hash tag (``{``, ``}``) or the key structure (``:``).
_DESTINATION: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND: Final = timedelta(milliseconds=1)
#: How long a ``claim`` call's answer is kept for a resend of that very call (``_CLAIM``). A
#: resend is the client's own retry after a dropped connection or a timeout: within its
#: retries times its socket timeout (the services': 3 x 30 s), so five minutes cover it. The
#: receipts cost one byte per claim for that long, next to the claims' own hundred-odd bytes
#: for hours.
CLAIM_RECEIPT_TTL_S: Final = 300.0
#: A granted claim in ``_CLAIM``'s answer.
_GRANTED: Final = ord("1")


#: Told of every count Redis has taken: ``(destination, counts)``, with ``""`` as the destination
#: for the fetcher's feed counters. Metrics mirror the counters through it
#: (shared.telemetry.metrics), so no service needs to know metrics exist and Redis and /metrics can
#: never disagree on a name.
CountObserver: TypeAlias = Callable[[str, Mapping[str, int]], None]
_count_observers: list[CountObserver] = []


def observe_counts(observer: CountObserver) -> Callable[[], None]:
    """Call ``observer`` after every successful ``count`` of any ``FeedState`` or
    ``DestinationState`` in this process; returns the function that stops it."""
    _count_observers.append(observer)

    def remove() -> None:
        if observer in _count_observers:
            _count_observers.remove(observer)

    return remove


def _counted(destination: str, counts: Mapping[str, int]) -> None:
    """Observers are telemetry: one that fails must never fail the count it was told of."""
    for observer in list(_count_observers):
        try:
            observer(destination, counts)
        except Exception:  # telemetry must not break the pipeline
            logger.exception("a count observer failed")


class CircuitState(StrEnum):
    """The uploader's circuit for one destination, shared by every replica."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where the next sync starts: the newest ``last_updated`` whose page the bus confirmed.

    Times are aware UTC with millisecond precision (what Redis keeps); ``saved_at`` is the
    Redis server's clock unless the caller supplied one.
    """

    last_updated: datetime
    saved_at: datetime
    run_id: str


# --------------------------------------------------------------------------------------------
# Lua scripts. KEYS are always declared so Redis Cluster can route and check them.

#: KEYS[1] lease; ARGV owner, ttl ms. Taking a free lease, or extending our own (a restarted
#: loop with the same owner id), both count as holding it.
_LEASE_ACQUIRE: Final = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if current then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

#: KEYS[1] lease; ARGV owner, ttl ms. Only the holder may extend: an expired lease stays lost.
_LEASE_RENEW: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

#: KEYS[1] lease; ARGV owner. Only the holder may release.
_LEASE_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

#: KEYS[1] checkpoint hash; ARGV last_updated ms, saved_at ms ('' = server time), run id.
#: Moves forward only: a late or replayed run can never rewind the feed.
_CHECKPOINT_ADVANCE: Final = """
local current = tonumber(redis.call('HGET', KEYS[1], 'last_updated'))
local proposed = tonumber(ARGV[1])
if current and current >= proposed then
  return 0
end
local saved_at = ARGV[2]
if saved_at == '' then
  local t = redis.call('TIME')
  saved_at = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
end
redis.call('HSET', KEYS[1], 'last_updated', ARGV[1], 'saved_at', saved_at, 'run_id', ARGV[3])
return 1
"""

#: KEYS[1] counters hash; ARGV name, increment, name, increment, ...
_COUNT: Final = """
for i = 1, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
end
return 1
"""

#: KEYS inflight keys, then the call's receipt; ARGV[1] ttl ms, ARGV[2] '1' if redelivery,
#: ARGV[3] receipt ttl ms, ARGV[3 + i] fingerprint i. Returns one character per claim, '1'
#: granted, '0' not.
#: A first delivery takes a free claim, or one holding a different fingerprint (it is the
#: newer version: it supersedes the queued one); the same fingerprint is someone else's
#: queued message. A redelivery takes a free claim or its own fingerprint's (its forward may
#: have failed and must happen again), never another's: a redelivered message may be older
#: than the version that claimed since, and must not push it aside.
#: The answer is kept under the receipt (a key named by a token unique to the call) and a run
#: that finds it returns it unchanged: a client that resends the call because its reply was
#: lost gets the answer of the run that took the claims, not "someone else's" for its own.
_CLAIM: Final = """
local receipt = KEYS[#KEYS]
local answered = redis.call('GET', receipt)
if answered then
  return answered
end
local redelivery = ARGV[2] == '1'
local claimed = {}
for i = 1, #KEYS - 1 do
  local key, fingerprint = KEYS[i], ARGV[i + 3]
  local held = redis.pcall('GET', key)
  local free = type(held) ~= 'string'
  local take
  if redelivery then
    take = free or held == fingerprint
  else
    take = free or held ~= fingerprint
  end
  if take then
    redis.call('SET', key, fingerprint, 'PX', ARGV[1])
    claimed[i] = '1'
  else
    claimed[i] = '0'
  end
end
local answer = table.concat(claimed)
redis.call('SET', receipt, answer, 'PX', ARGV[3])
return answer
"""

#: KEYS inflight keys; ARGV[i] fingerprint i. Compare-and-delete.
_RELEASE: Final = """
local released = {}
for i, key in ipairs(KEYS) do
  if redis.pcall('GET', key) == ARGV[i] then
    redis.call('DEL', key)
    released[i] = 1
  else
    released[i] = 0
  end
end
return released
"""

#: KEYS[2i-1] seen key i, KEYS[2i] inflight key i; ARGV[1] now ms, then per entry: encoded
#: entry, valid_until ms, fingerprint. The seen key expires when Sentinel stops matching on the
#: indicator; one already past is removed so the filter uploads it again.
_COMMIT: Final = """
local now = tonumber(ARGV[1])
local stored = 0
for i = 1, #KEYS / 2 do
  local seen, inflight = KEYS[2 * i - 1], KEYS[2 * i]
  local encoded, valid_until, fingerprint = ARGV[3 * i - 1], ARGV[3 * i], ARGV[3 * i + 1]
  if tonumber(valid_until) > now then
    redis.call('SET', seen, encoded, 'PXAT', valid_until)
    stored = stored + 1
  else
    redis.call('DEL', seen)
  end
  if redis.pcall('GET', inflight) == fingerprint then
    redis.call('DEL', inflight)
  end
end
return stored
"""

#: KEYS[1] circuit hash; ARGV state, reason. ``since`` moves only when the state changes, so
#: it says how long the circuit has been open, by the server's clock every replica shares.
_SET_CIRCUIT: Final = """
if redis.call('HGET', KEYS[1], 'state') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'reason', ARGV[2])
  return 0
end
local t = redis.call('TIME')
local since = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'reason', ARGV[2], 'since', since)
return 1
"""

#: KEYS[1] log zset, KEYS[2] pause; ARGV limit, span µs, unique token. Returns µs to wait
#: (0 = granted and recorded). Scores are the server's clock in microseconds.
_RATE_ACQUIRE: Final = """
local paused = redis.call('PTTL', KEYS[2])
if paused > 0 then
  return paused * 1000
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local span = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now - span))
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  local score = string.format('%.0f', now)
  redis.call('ZADD', KEYS[1], score, score .. ':' .. ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(span / 1000) + 1000)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + span - now)
"""

#: KEYS[1] pause; ARGV ms. Never shortens a longer pause another replica already set.
#: Returns the pause now in force, in ms.
_RATE_PAUSE: Final = """
local wanted = tonumber(ARGV[1])
local current = redis.call('PTTL', KEYS[1])
if wanted > 0 and current < wanted then
  redis.call('SET', KEYS[1], '429', 'PX', ARGV[1])
  return wanted
end
return math.max(current, 0)
"""

#: KEYS[1] log zset; ARGV span µs. Grants still inside the window by the server's clock.
_RATE_IN_WINDOW: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
return redis.call('ZCOUNT', KEYS[1], string.format('(%.0f', now - tonumber(ARGV[1])), '+inf')
"""


# --------------------------------------------------------------------------------------------
# Fetcher


class FetcherLease:
    """Keeps one fetcher active at a time, across pods and restarts.

    The holder must ``renew`` well within ``ttl_s`` (every third of it, say) and stop fetching
    as soon as ``renew`` answers False: the lease expired or someone else holds it now. The
    lease is advisory; what keeps a late loser harmless is that the checkpoint only moves
    forward and every publish is idempotent (DESIGN §4).
    """

    def __init__(self, client: RedisClient, *, owner: str, ttl_s: float = 30.0) -> None:
        if not owner:
            raise ValueError("owner must not be empty")
        self.owner = owner
        self.ttl_ms = _positive_ms(ttl_s, "ttl_s")
        self.key = _fetcher_key("lease")
        self._client = client
        self._acquire = client.register_script(_LEASE_ACQUIRE)
        self._renew = client.register_script(_LEASE_RENEW)
        self._release = client.register_script(_LEASE_RELEASE)

    async def acquire(self) -> bool:
        """Take the lease if it is free (``SET NX PX``); True also when we already hold it."""
        return bool(await _run(self._acquire, [self.key], [self.owner, self.ttl_ms], "acquire"))

    async def renew(self) -> bool:
        """Extend the lease to a full ``ttl_s``; False means it is lost: stop working."""
        return bool(await _run(self._renew, [self.key], [self.owner, self.ttl_ms], "renew"))

    async def release(self) -> bool:
        """Give the lease up so the next fetcher need not wait for it to expire; a lease held
        by someone else is left alone. Returns whether we released it."""
        return bool(await _run(self._release, [self.key], [self.owner], "release"))

    async def holder(self) -> str | None:
        """Who holds the lease now, for ``status``."""
        with _translated("lease holder"):
            value = await self._client.get(self.key)
        return None if value is None else _text(value)


class FeedState:
    """The fetcher's memory of the feed: the checkpoint, the last run's funnel, counters."""

    def __init__(self, client: RedisClient) -> None:
        self._client = client
        self.checkpoint_key = _fetcher_key("checkpoint")
        self.last_run_key = _fetcher_key("last_run")
        self.counters_key = _fetcher_key("counters")
        self._advance = client.register_script(_CHECKPOINT_ADVANCE)
        self._count = client.register_script(_COUNT)

    async def checkpoint(self) -> Checkpoint | None:
        """The saved checkpoint; ``None`` on a first run, or when the stored value is not one
        we wrote (then the next sync starts from ``INITIAL_LOOKBACK``: slower, never lossy)."""
        with _translated("checkpoint"):
            raw = await self._client.hgetall(self.checkpoint_key)
        fields = {_text(key): _text(value) for key, value in raw.items()}
        try:
            return Checkpoint(
                last_updated=_from_ms(int(fields["last_updated"])),
                saved_at=_from_ms(int(fields["saved_at"])),
                run_id=fields["run_id"],
            )
        except (KeyError, ValueError, OverflowError):
            if fields:
                logger.warning("ignoring an unreadable checkpoint in %s", self.checkpoint_key)
            return None

    async def advance(
        self, last_updated: datetime, run_id: str, *, now: datetime | None = None
    ) -> bool:
        """Move the checkpoint to ``last_updated`` (truncated to ms) if that is later than the
        saved one; returns whether it moved. Call it only after the bus confirmed the page.
        ``saved_at`` is ``now`` when given, else the Redis server's clock."""
        saved_at = "" if now is None else str(_to_ms(now))
        args: list[str | int] = [_to_ms(last_updated), saved_at, run_id]
        return bool(await _run(self._advance, [self.checkpoint_key], args, "advance"))

    async def record_run(self, summary: Mapping[str, object]) -> None:
        """Keep the last sync's funnel (fetched, published, pages, …) for ``status``; values
        must be JSON-serializable (datetimes are, as RFC 3339)."""
        body = orjson.dumps(dict(summary), option=orjson.OPT_NON_STR_KEYS)
        with _translated("record run"):
            await self._client.set(self.last_run_key, body)

    async def last_run(self) -> dict[str, Any] | None:
        """The summary ``record_run`` stored, or ``None`` when there is none (or it is not a
        JSON object)."""
        with _translated("last run"):
            raw = await self._client.get(self.last_run_key)
        if raw is None:
            return None
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        return value if isinstance(value, dict) else None

    async def count(self, counts: Mapping[str, int]) -> None:
        """Add to the fetcher's counters, all in one atomic round trip."""
        await _count(self._count, self.counters_key, counts)
        _counted("", counts)

    async def counters(self) -> dict[str, int]:
        return await _counters(self._client, self.counters_key)


# --------------------------------------------------------------------------------------------
# Destinations

_STIX_ID: Final = re.compile(
    r"indicator--[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
)


@functools.lru_cache(maxsize=4096)
def compact_id(stix_id: str) -> str:
    """``indicator--<uuid>`` as 96 of its random bits in 16 base64url characters (bytes 6 and
    8, which carry the UUID's version and variant, are left out). Two ids share a key with a
    probability of about n² / 2^97 (6 × 10^-16 for ten million indicators), and the key is
    short enough for Redis to keep in 32 bytes (see the module's key list). Anything else
    (``stix_id`` never makes it) is kept as it is.

    Cached: a batch names each id three or four times (seen, claim, commit, release), and
    4,096 ids cover the batches a process holds at once (under 2 MB, whatever the backlog)."""
    if _STIX_ID.fullmatch(stix_id) is None:
        return stix_id
    raw = bytes.fromhex(stix_id[11:].replace("-", ""))
    return base64.urlsafe_b64encode(raw[:6] + raw[7:8] + raw[9:14]).decode("ascii")


class DestinationState:
    """One destination's seen cache, in-flight claims, counters and circuit (DESIGN §4).

    Every per-indicator operation takes a batch and costs one round trip whatever its size.
    """

    def __init__(self, client: RedisClient, destination: str) -> None:
        self.destination = destination
        self.prefix = destination_prefix(destination)
        self.counters_key = f"{self.prefix}counters"
        self.circuit_key = f"{self.prefix}circuit"
        self._client = client
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)
        self._commit = client.register_script(_COMMIT)
        self._count = client.register_script(_COUNT)
        self._set_circuit = client.register_script(_SET_CIRCUIT)

    def seen_key(self, stix_id: str) -> str:
        return f"{self.prefix}s:{compact_id(stix_id)}"

    def inflight_key(self, stix_id: str) -> str:
        return f"{self.prefix}inflight:{compact_id(stix_id)}"

    def claim_receipt_key(self, token: str) -> str:
        return f"{self.prefix}claimed:{token}"

    async def seen(self, stix_ids: Sequence[str]) -> list[SeenEntry | None]:
        """What was last uploaded for each id (one ``MGET``); unreadable values read as
        ``None``, i.e. "not seen": one extra upload, never a lost indicator."""
        if not stix_ids:
            return []
        with _translated("seen"):
            values = await self._client.mget([self.seen_key(i) for i in stix_ids])
        return [None if value is None else SeenEntry.decode(_bytes(value)) for value in values]

    async def claim(
        self, claims: Sequence[tuple[str, str]], *, ttl_s: float, redelivery: bool = False
    ) -> list[bool]:
        """Claim ``(stix_id, fingerprint)`` pairs before forwarding them; True = forward it.

        - free: claimed (``SET … PX``), True;
        - held with the same fingerprint: someone already queued this very version, False —
          unless ``redelivery`` (this raw message was delivered before and its forward may
          have failed), then it counts as ours and its TTL restarts, True;
        - held with a different fingerprint: on a first delivery this is the newer version,
          which supersedes the queued one (the uploader will skip that one, see ``claims``):
          overwritten, True. On a redelivery it is not: the redelivered message may be older
          than the version that claimed since, so it must not push it aside, False.

        ``ttl_s`` should outlast the upload queue's worst backlog: an expired claim only lets a
        later sync queue a duplicate (an idempotent re-upload), never loses anything. Pairs are
        applied in order, so a repeated id in one batch sees the claim its predecessor made.

        A call is answered once: the client resends it when the reply was lost (a dropped
        connection, a Redis restart, a timeout) after the script had run, and that resend gets
        the first run's answer from the call's receipt. Judged afresh, a first delivery would
        find its own claims "held with the same fingerprint" and drop its indicators as
        already queued, with nothing queued (``CLAIM_RECEIPT_TTL_S``).
        """
        if not claims:
            return []
        keys = [self.inflight_key(stix_id) for stix_id, _ in claims]
        keys.append(self.claim_receipt_key(secrets.token_hex(8)))
        args: list[str | int] = [
            _positive_ms(ttl_s, "ttl_s"),
            "1" if redelivery else "0",
            _positive_ms(CLAIM_RECEIPT_TTL_S, "receipt ttl"),
        ]
        args.extend(fingerprint for _, fingerprint in claims)
        answer = _bytes(await _run(self._claim, keys, args, "claim"))
        return [flag == _GRANTED for flag in answer]

    async def release(self, claims: Sequence[tuple[str, str]]) -> list[bool]:
        """Drop claims we made but will not forward (the forward failed, the message was
        dead-lettered); a claim another version took over is left alone. Returns which were
        released."""
        if not claims:
            return []
        keys = [self.inflight_key(stix_id) for stix_id, _ in claims]
        args = [fingerprint for _, fingerprint in claims]
        return [bool(flag) for flag in await _run(self._release, keys, args, "release")]

    async def claims(self, stix_ids: Sequence[str]) -> list[str | None]:
        """The fingerprint each id's claim holds now (one ``MGET``): the uploader skips a
        message whose fingerprint is no longer the claimed one, a newer version is queued."""
        if not stix_ids:
            return []
        with _translated("claims"):
            values = await self._client.mget([self.inflight_key(i) for i in stix_ids])
        return [None if value is None else _text(value) for value in values]

    async def commit(self, entries: Sequence[tuple[str, SeenEntry]], *, now: datetime) -> int:
        """Record uploads Sentinel accepted, atomically for the batch: each ``seen`` key is set
        to the entry and expires at its ``valid_until`` (an entry already past ``now`` is
        removed instead), and each claim still holding the entry's fingerprint is cleared.

        Call it ONLY after Sentinel accepted these records (DESIGN §4; writing it earlier was
        the vendor's v1.2.3 bug). Returns how many seen keys were written.
        """
        if not entries:
            return 0
        keys: list[str] = []
        args: list[str | int | bytes] = [_to_ms(now)]
        for stix_id, entry in entries:
            keys += (self.seen_key(stix_id), self.inflight_key(stix_id))
            args += (entry.encode(), _to_ms(entry.valid_until), entry.fingerprint)
        return int(await _run(self._commit, keys, args, "commit"))

    async def forget(self, stix_ids: Sequence[str]) -> int:
        """Drop seen entries (tests, ops: force a re-upload); returns how many existed."""
        if not stix_ids:
            return 0
        with _translated("forget"):
            return int(await self._client.delete(*[self.seen_key(i) for i in stix_ids]))

    async def count(self, counts: Mapping[str, int]) -> None:
        """Add to the destination's counters by reason (dropped_low_confidence, forwarded,
        uploaded, rejected, dead_lettered, …), all in one atomic round trip."""
        await _count(self._count, self.counters_key, counts)
        _counted(self.destination, counts)

    async def counters(self) -> dict[str, int]:
        return await _counters(self._client, self.counters_key)

    async def set_circuit(self, state: CircuitState, reason: str = "") -> bool:
        """Set the circuit every replica of this destination obeys; returns whether the state
        changed (``since`` then restarts, by the Redis server's clock)."""
        args = [CircuitState(state).value, reason]
        return bool(await _run(self._set_circuit, [self.circuit_key], args, "set circuit"))

    async def circuit(self) -> tuple[CircuitState, str, datetime | None]:
        """``(state, reason, since)``; closed when never set. An unreadable state reads as
        closed: the next failure opens it again, while a stuck "open" would stop the
        destination for good."""
        with _translated("circuit"):
            state, reason, since = await self._client.hmget(
                self.circuit_key, ["state", "reason", "since"]
            )
        try:
            parsed = CircuitState(_text(state)) if state is not None else CircuitState.CLOSED
        except ValueError:
            logger.warning("ignoring an unreadable circuit state in %s", self.circuit_key)
            return CircuitState.CLOSED, "", None
        try:
            when = None if since is None else _from_ms(int(_text(since)))
        except (ValueError, OverflowError):
            when = None
        return parsed, "" if reason is None else _text(reason), when


#: ``RateBudget``'s default margin: this share of the window, at most ``MAX_RATE_MARGIN_S``.
RATE_MARGIN_SHARE: Final = 0.1
MAX_RATE_MARGIN_S: Final = 1.0


def default_rate_margin_s(window_s: float) -> float:
    return min(MAX_RATE_MARGIN_S, window_s * RATE_MARGIN_SHARE)


class RateBudget:
    """One request budget shared by every uploader replica of a destination.

    A sliding-window log by the Redis server's clock: a grant is recorded only while fewer
    than ``limit`` grants lie within ``window_s + margin_s``. The margin absorbs the delay
    between our grant and the request's arrival, since Sentinel's window counts arrivals.
    By default it is a tenth of the window, at most a second: Sentinel's minute loses 1.6 %
    of its quota to it, and a shortened window (tests, benchmarks) keeps its throughput
    (a fixed second would halve a one-second window's). After a 429, ``pause`` makes every
    replica wait the time Sentinel asked for.
    """

    def __init__(
        self,
        client: RedisClient,
        destination: str,
        *,
        limit: int = 100,
        window_s: float = 60.0,
        margin_s: float | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        if margin_s is None:
            margin_s = default_rate_margin_s(window_s)
        if margin_s < 0:
            raise ValueError(f"margin_s must not be negative, got {margin_s}")
        _positive_ms(window_s, "window_s")
        self.limit = limit
        self.span_us = round((window_s + margin_s) * 1_000_000)
        prefix = destination_prefix(destination)
        self.log_key = f"{prefix}rate:log"
        self.pause_key = f"{prefix}rate:pause"
        self._client = client
        self._acquire = client.register_script(_RATE_ACQUIRE)
        self._pause = client.register_script(_RATE_PAUSE)
        self._in_window = client.register_script(_RATE_IN_WINDOW)

    async def acquire(self) -> float:
        """0.0 = one request granted (and recorded): send it now. Otherwise the seconds to
        wait before asking again (the pause left, or until the oldest grant leaves the
        window); nothing was recorded."""
        keys = [self.log_key, self.pause_key]
        args: list[str | int] = [self.limit, self.span_us, secrets.token_hex(8)]
        return int(await _run(self._acquire, keys, args, "rate acquire")) / 1_000_000

    async def pause(self, seconds: float) -> float:
        """Make every replica wait ``seconds`` (after a 429); a longer pause already set is
        kept. Returns the pause now in force, in seconds."""
        ms = max(0, round(seconds * 1000))
        return int(await _run(self._pause, [self.pause_key], [ms], "rate pause")) / 1000

    async def paused_for(self) -> float:
        """Seconds the shared pause still lasts (0.0 when none)."""
        with _translated("rate paused_for"):
            ms = int(await self._client.pttl(self.pause_key))
        return max(ms, 0) / 1000

    async def in_window(self) -> int:
        """Grants within the window now, for status and metrics."""
        args = [self.span_us]
        return int(await _run(self._in_window, [self.log_key], args, "rate in_window"))


# --------------------------------------------------------------------------------------------
# Helpers


def destination_prefix(destination: str) -> str:
    """``m2s:{<destination>}:``; raises ValueError on a name that could break the hash tag."""
    if _DESTINATION.fullmatch(destination) is None:
        raise ValueError(
            f"destination must match {_DESTINATION.pattern} (lower-case letters, digits, '-'), "
            f"got {destination!r}"
        )
    return f"{PREFIX}:{{{destination}}}:"


def _fetcher_key(name: str) -> str:
    return f"{PREFIX}:{{{FETCHER_TAG}}}:feed:{name}"


def _translated(operation: str) -> AbstractContextManager[None]:
    return translated("redis", operation, unavailable=StateUnavailable, refused=StateRefused)


async def _run(
    script: AsyncScript, keys: Sequence[str], args: Sequence[str | int | bytes], operation: str
) -> Any:
    with _translated(operation):
        return await script(keys=keys, args=args)


async def _count(script: AsyncScript, key: str, counts: Mapping[str, int]) -> None:
    args: list[str | int] = []
    for name, amount in counts.items():
        if amount:
            args += (name, int(amount))
    if args:
        await _run(script, [key], args, "count")


async def _counters(client: RedisClient, key: str) -> dict[str, int]:
    with _translated("counters"):
        raw = await client.hgetall(key)
    counters: dict[str, int] = {}
    for name, value in raw.items():
        try:
            counters[_text(name)] = int(value)
        except ValueError:
            continue
    return counters


def _to_ms(dt: datetime) -> int:
    """Epoch milliseconds, floored like ``SeenEntry.encode``; naive datetimes are refused, a
    guessed zone could move a checkpoint or an expiry by hours."""
    if dt.utcoffset() is None:
        raise ValueError("an aware datetime is required")
    return (dt - _EPOCH) // _MILLISECOND


def _from_ms(ms: int) -> datetime:
    return _EPOCH + ms * _MILLISECOND


def _positive_ms(seconds: float, name: str) -> int:
    ms = round(seconds * 1000)
    if ms < 1:
        raise ValueError(f"{name} must be at least 1 ms, got {seconds}")
    return ms


def _text(value: bytes | str) -> str:
    """Values arrive as bytes, or as str on a client made with ``decode_responses=True``."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value
