"""What one destination remembers about its workspace in Redis (DESIGN §5 "Reconciliation"):
whether its state was ever born, the seen-cache rebuild's lease and progress, the ids uploaded
within ``reconcile``'s grace, and the last reconcile's result.

Keys (``shared.adapters.state_redis`` lists them with the others):

- ``born``: JSON ``{how, at, objects}``. Written once the seen cache holds what the workspace
  holds (rebuilt, or knowingly started empty). Losing Redis loses it too, which is the point:
  its absence is how a lost cache is told from a quiet one.
- ``rebuild``: hash, the rebuild's progress for ``status``; ``rebuild:lease``: its holder.
- ``recent:<token>``: ``<commit ms>:<compact ids>``, written by ``DestinationState.commit``.
- ``reconcile``: hash, the last reconcile's counts by kind, when, and the drift streak.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

import orjson

from shared.adapters.destination_state import DestinationState, seen_expiry
from shared.adapters.feed_state import Lease
from shared.adapters.redis_connect import RedisClient
from shared.adapters.state_redis import (
    as_bytes,
    as_text,
    from_ms,
    run,
    to_ms,
    translated,
)
from shared.core.fingerprint import SeenEntry

#: Keys a ``SCAN`` step asks for; seen entries are read back in ``MGET``s of this size.
SCAN_COUNT: Final = 1000
#: The compact id's length (``compact_id``): a recent key's value is a run of them.
_COMPACT_CHARS: Final = 16

#: KEYS[1] born; ARGV JSON. Only when absent: two rebuilders never both claim the birth.
_BORN_ONCE: Final = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""

#: KEYS seen keys; ARGV[1] now ms, then per entry: encoded, expiry ms, '1' to overwrite.
#: Returns how many were written. Without overwrite an entry the uploader committed meanwhile
#: (newer than the workspace's view, which lags minutes) is kept; with it, an entry already
#: past its expiry is removed, as ``COMMIT`` does.
_RESTORE: Final = """
local now = tonumber(ARGV[1])
local written = 0
for i, key in ipairs(KEYS) do
  local encoded, expires, overwrite = ARGV[3 * i - 1], ARGV[3 * i], ARGV[3 * i + 1]
  if tonumber(expires) <= now then
    if overwrite == '1' then
      redis.call('DEL', key)
    end
  elseif overwrite == '1' then
    redis.call('SET', key, encoded, 'PXAT', expires)
    written = written + 1
  elseif redis.call('SET', key, encoded, 'PXAT', expires, 'NX') then
    written = written + 1
  end
end
return written
"""

#: KEYS[1] reconcile hash; ARGV at ms, '1' if drift, then field, value pairs. The streak counts
#: reconciles in a row that found drift: the alert waits for two.
_SAVE_RECONCILE: Final = """
local streak = 0
if ARGV[2] == '1' then
  streak = (tonumber(redis.call('HGET', KEYS[1], 'streak')) or 0) + 1
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'at', ARGV[1], 'streak', streak)
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
return streak
"""


class Born(StrEnum):
    """How a destination's state came to be trusted."""

    #: The seen cache was rebuilt from the workspace (possibly empty: a new deployment).
    REBUILT = "rebuilt"
    #: ``CACHE_REBUILD=off``: started empty on purpose.
    OFF = "off"
    #: The workspace could not be read (no role, unreachable): started empty, said loudly.
    SKIPPED = "skipped"


class WorkspaceState:
    """The keys above, next to the destination's ``DestinationState``."""

    def __init__(self, client: RedisClient, state: DestinationState) -> None:
        self.state = state
        self.born_key = state.born_key
        self.rebuild_key = f"{state.prefix}rebuild"
        self.lease_key = f"{state.prefix}rebuild:lease"
        self.reconcile_key = f"{state.prefix}reconcile"
        self._client = client
        self._born_once = client.register_script(_BORN_ONCE)
        self._restore = client.register_script(_RESTORE)
        self._save = client.register_script(_SAVE_RECONCILE)

    # -- birth ---------------------------------------------------------------------------------

    async def born(self) -> dict[str, Any] | None:
        """The birth record, or ``None`` when the state is empty (new, or lost with Redis)."""
        with translated("born"):
            value = await self._client.get(self.born_key)
        return None if value is None else _json(value)

    async def mark_born(self, how: Born, *, at: datetime, objects: int) -> bool:
        """Record the birth unless another replica already did; True if this call did."""
        record = orjson.dumps({"how": how.value, "at": to_ms(at), "objects": objects})
        return bool(await run(self._born_once, [self.born_key], [record], "mark born"))

    # -- the rebuild ---------------------------------------------------------------------------

    def rebuild_lease(self, owner: str, *, ttl_s: float) -> Lease:
        """The lease one replica rebuilds under, so two never read the workspace at once."""
        return Lease(self._client, self.lease_key, owner=owner, ttl_s=ttl_s)

    async def rebuild_progress(
        self, fields: Mapping[str, str | int | float], *, fresh: bool = False
    ) -> None:
        """Set fields of the rebuild's progress (``fresh``: forget the previous rebuild's)."""
        with translated("rebuild progress"):
            async with self._client.pipeline(transaction=True) as pipe:
                if fresh:
                    pipe.delete(self.rebuild_key)
                pipe.hset(self.rebuild_key, mapping={k: str(v) for k, v in fields.items()})
                await pipe.execute()

    async def rebuild_status(self) -> dict[str, str]:
        with translated("rebuild status"):
            raw = await self._client.hgetall(self.rebuild_key)
        return {as_text(k): as_text(v) for k, v in raw.items()}

    async def restore(
        self, entries: Sequence[tuple[str, SeenEntry]], *, now: datetime, overwrite: bool = False
    ) -> int:
        """Write seen entries read off the workspace, keyed by their lineage's STIX id, with
        the expiry ``commit`` gives them; one round trip. Without ``overwrite`` an existing
        entry wins (see ``_RESTORE``). Returns how many were written."""
        if not entries:
            return 0
        keys: list[str] = []
        args: list[str | int | bytes] = [to_ms(now)]
        for stix_id, entry in entries:
            keys.append(self.state.seen_key(stix_id))
            args += (entry.encode(), to_ms(seen_expiry(entry, now)), "1" if overwrite else "0")
        return int(await run(self._restore, keys, args, "restore"))

    # -- what reconcile reads ------------------------------------------------------------------

    async def seen_entries(self) -> AsyncIterator[list[tuple[str, SeenEntry | None]]]:
        """Every seen entry as ``(compact id, entry)``, a ``SCAN`` step at a time: memory
        stays one step whatever the cache holds. An unreadable value reads as ``None``."""
        prefix = f"{self.state.prefix}s:"
        cursor: int = 0
        while True:
            with translated("scan seen"):
                cursor, keys = await self._client.scan(
                    cursor, match=f"{_glob_escape(prefix)}*", count=SCAN_COUNT
                )
                values = await self._client.mget(keys) if keys else []
            step = []
            for key, value in zip(keys, values, strict=True):
                if value is None:  # expired between SCAN and MGET
                    continue
                step.append((as_text(key)[len(prefix) :], SeenEntry.decode(as_bytes(value))))
            if step:
                yield step
            if cursor == 0:
                return

    async def forget(self, compact_ids: Sequence[str]) -> int:
        """Drop seen entries by compact id (all ``reconcile`` knows of a lineage the workspace
        no longer has a row of)."""
        if not compact_ids:
            return 0
        keys = [f"{self.state.prefix}s:{c}" for c in compact_ids]
        with translated("forget"):
            return int(await self._client.delete(*keys))

    async def recent_ids(self, since: datetime) -> set[str]:
        """Compact ids committed at or after ``since`` (what the uploader still keeps)."""
        pattern = f"{_glob_escape(self.state.prefix)}recent:*"
        found: set[str] = set()
        floor = to_ms(since)
        with translated("recent"):
            keys = [key async for key in self._client.scan_iter(match=pattern, count=SCAN_COUNT)]
            values = await self._client.mget(keys) if keys else []
        for value in values:
            if value is None:
                continue
            stamp, _, ids = as_text(value).partition(":")
            if not stamp.isdigit() or int(stamp) < floor:
                continue
            found.update(ids[i : i + _COMPACT_CHARS] for i in range(0, len(ids), _COMPACT_CHARS))
        return found

    # -- the last reconcile --------------------------------------------------------------------

    async def save_reconcile(
        self, counts: Mapping[str, int], *, at: datetime, drift: bool, extra: Mapping[str, str]
    ) -> int:
        """Keep the last reconcile's result; returns the drift streak it makes."""
        args: list[str | int | bytes] = [to_ms(at), "1" if drift else "0"]
        for name, value in {**{k: str(v) for k, v in counts.items()}, **extra}.items():
            args += (name, value)
        return int(await run(self._save, [self.reconcile_key], args, "save reconcile"))

    async def last_reconcile(self) -> dict[str, str]:
        with translated("last reconcile"):
            raw = await self._client.hgetall(self.reconcile_key)
        return {as_text(k): as_text(v) for k, v in raw.items()}


def new_owner() -> str:
    return secrets.token_hex(8)


def when(ms: str | None) -> datetime | None:
    """A stored epoch-ms field as a datetime (``None`` when absent or unreadable)."""
    if ms is None or not ms.lstrip("-").isdigit():
        return None
    return from_ms(int(ms))


def _json(value: bytes | str) -> dict[str, Any]:
    try:
        parsed = orjson.loads(as_bytes(value))
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _glob_escape(text: str) -> str:
    """``SCAN MATCH`` treats ``[``, ``]``, ``*``, ``?`` and ``\\`` specially; destination names
    never hold them, but the hash tag's braces are literal already."""
    return "".join(f"\\{c}" if c in "[]*?\\" else c for c in text)
