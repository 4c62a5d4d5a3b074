"""The Redis state adapters' key space and how they talk to Redis (DESIGN.md §2, §4).

The adapters are ``FetcherLease`` and ``FeedState`` (``shared.adapters.feed_state``),
``DestinationState`` (``shared.adapters.destination_state``) and ``RateBudget``
(``shared.adapters.rate_budget``); their scripts are in ``shared.adapters.state_scripts``.
Everything the services remember outside the bus is listed here, in one place, because the
keys of all of them share one prefix and must never collide.

Keys
====

All keys start with ``m2s:`` and carry a Redis Cluster hash tag: every key of one destination
lives under ``m2s:{<destination>}:`` and the fetcher's under ``m2s:{fetcher}:``, so each group
sits in one slot and the multi-key scripts run on Redis Cluster (Azure Cache for Redis
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
``m2s:{D}:suppressed``
    hash, MATI id -> JSON ``{value, type, reason, added_at}``. No TTL: a suppression lasts
    until removed. Written by ``suppress add|remove``; read by the filter (``snapshot`` when
    the version moved, ``HEXISTS`` in ``claim``), ``explain``, ``status`` and ``suppress list``
    (``shared.adapters.suppressions``).
``m2s:{D}:suppressed:version``
    string, a counter bumped by the same script as every change of the hash. No TTL. Written
    by ``suppress add|remove``; read by the filter in each batch's first ``MGET``.
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

import re
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from redis.commands.core import AsyncScript

from shared.adapters import redis_errors
from shared.core.errors import StateRefused, StateUnavailable

PREFIX: Final = "m2s"
FETCHER_TAG: Final = "fetcher"
#: The destination names ``DESTINATION`` accepts (shared.core.settings); anything else could break
#: out of the hash tag (``{``, ``}``) or the key structure (``:``).
_DESTINATION: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND: Final = timedelta(milliseconds=1)


def destination_prefix(destination: str) -> str:
    """``m2s:{<destination>}:``; raises ValueError on a name that could break the hash tag."""
    if _DESTINATION.fullmatch(destination) is None:
        raise ValueError(
            f"destination must match {_DESTINATION.pattern} (lower-case letters, digits, '-'), "
            f"got {destination!r}"
        )
    return f"{PREFIX}:{{{destination}}}:"


def fetcher_key(name: str) -> str:
    return f"{PREFIX}:{{{FETCHER_TAG}}}:feed:{name}"


def translated(operation: str) -> AbstractContextManager[None]:
    """``StateUnavailable`` for what a retry may fix, ``StateRefused`` for what it cannot."""
    return redis_errors.translated(
        "redis", operation, unavailable=StateUnavailable, refused=StateRefused
    )


async def run(
    script: AsyncScript, keys: Sequence[str], args: Sequence[str | int | bytes], operation: str
) -> Any:
    with translated(operation):
        return await script(keys=keys, args=args)


def to_ms(dt: datetime) -> int:
    """Epoch milliseconds, floored like ``SeenEntry.encode``; naive datetimes are refused, a
    guessed zone could move a checkpoint or an expiry by hours."""
    if dt.utcoffset() is None:
        raise ValueError("an aware datetime is required")
    return (dt - _EPOCH) // _MILLISECOND


def from_ms(ms: int) -> datetime:
    return _EPOCH + ms * _MILLISECOND


def positive_ms(seconds: float, name: str) -> int:
    ms = round(seconds * 1000)
    if ms < 1:
        raise ValueError(f"{name} must be at least 1 ms, got {seconds}")
    return ms


def as_text(value: bytes | str) -> str:
    """Values arrive as bytes, or as str on a client made with ``decode_responses=True``."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def as_bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value
