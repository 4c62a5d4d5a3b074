"""One destination's suppressions in Redis (issue 14, "suppress now"): the MATI ids an analyst
keeps out of the workspace until they remove the suppression, whatever MATI reports.

Two keys (listed with the others in ``shared.adapters.state_redis``):

- ``m2s:{D}:suppressed``, a hash of MATI id -> JSON ``{value, type, reason, added_at}``;
- ``m2s:{D}:suppressed:version``, a counter bumped in the same script as every change.

The filter checks every record against the set, so it keeps a copy in process and reads the
version in the ``MGET`` each batch already makes (``DestinationState.seen_with_version``): the
set itself is read again (``snapshot``, one round trip) only when the version moved. The
claim script also checks the hash (``DestinationState.claim_unless_suppressed``), so a batch
judged just before a suppression cannot queue the indicator after it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

import orjson

from shared.adapters.redis_connect import RedisClient
from shared.adapters.state_redis import as_text, destination_prefix, run, translated
from shared.core.events import get_logger

log = get_logger(__name__)

#: KEYS[1] hash, KEYS[2] version; ARGV mati id, JSON. Returns 1 when the id was not suppressed.
_ADD: Final = """
local added = redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('INCR', KEYS[2])
return added
"""
#: KEYS[1] hash, KEYS[2] version; ARGV mati id. Returns 1 when it was suppressed. The version
#: moves only on a change, so filters reload nothing for a no-op.
_REMOVE: Final = """
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
if removed == 1 then
  redis.call('INCR', KEYS[2])
end
return removed
"""
#: KEYS[1] hash, KEYS[2] version. Returns {version or false, field, value, field, value, ...}:
#: one script, so the set and its version agree (on Redis Cluster too, where a transaction in
#: a client pipeline is not always available).
_SNAPSHOT: Final = """
local result = redis.call('HGETALL', KEYS[1])
table.insert(result, 1, redis.call('GET', KEYS[2]))
return result
"""


@dataclass(frozen=True, slots=True)
class Suppression:
    """One suppressed indicator. Who added it cannot be known (the command runs with the
    deployment's Redis, not a person's identity), so the reason and the time are kept."""

    mati_id: str
    value: str
    type: str
    reason: str
    added_at: datetime

    def encode(self) -> bytes:
        return orjson.dumps(self.note())

    @classmethod
    def decode(cls, mati_id: str, data: bytes | str) -> Suppression:
        """A value that is not ours still suppresses its id (dropping a suppression because
        its description is unreadable would upload what an analyst kept out)."""
        try:
            fields = orjson.loads(data)
            added_at = datetime.fromisoformat(str(fields["added_at"]))
            if added_at.utcoffset() is None:
                raise ValueError("naive added_at")
            return cls(
                mati_id,
                str(fields["value"]),
                str(fields["type"]),
                str(fields["reason"]),
                added_at,
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("state.suppression_unreadable", mati_id=mati_id)
            return cls(mati_id, "", "", "(unreadable)", datetime.fromtimestamp(0, UTC))

    def note(self) -> dict[str, str]:
        """What a revocation it caused carries into the workspace (``SUPPRESSED_PROPERTY``):
        all but the MATI id, which the object carries already; ``decode`` reads it back."""
        return {
            "value": self.value,
            "type": self.type,
            "reason": self.reason,
            "added_at": self.added_at.isoformat(),
        }

    def to_dict(self) -> dict[str, str]:
        """The documented JSON shape of ``suppress list --json`` and ``status --json``."""
        return {
            "mati_id": self.mati_id,
            "value": self.value,
            "type": self.type,
            "reason": self.reason,
            "added_at": self.added_at.isoformat(),
        }


def describe(listed: Mapping[str, str]) -> str:
    """One line for a person, from ``Suppression.to_dict()``'s shape (what ``status`` keeps)."""
    return (
        f"{listed['added_at']}  {listed['type']} {listed['value']} ({listed['mati_id']}): "
        f"{listed['reason']}"
    )


@dataclass(frozen=True, slots=True)
class SuppressionSet:
    """The suppressions as of ``version`` (0: none was ever added)."""

    version: int = 0
    by_id: Mapping[str, Suppression] = field(default_factory=dict)

    def __contains__(self, mati_id: object) -> bool:
        return mati_id in self.by_id

    def note(self, mati_id: str) -> dict[str, str] | None:
        found = self.by_id.get(mati_id)
        return None if found is None else found.note()

    def newest_first(self) -> list[Suppression]:
        return sorted(self.by_id.values(), key=lambda s: (s.added_at, s.mati_id), reverse=True)


def read_version(value: bytes | str | None) -> int:
    """The version key's value; a missing or foreign one reads as 0, which differs from any
    version a filter loaded after a change, so it reloads rather than trusting a stale set."""
    if value is None:
        return 0
    try:
        return int(as_text(value))
    except ValueError:
        return 0


class Suppressions:
    """One destination's suppressions; each call is one round trip."""

    def __init__(self, client: RedisClient, destination: str) -> None:
        prefix = destination_prefix(destination)
        self.key = f"{prefix}suppressed"
        self.version_key = f"{prefix}suppressed:version"
        self._client = client
        self._add = client.register_script(_ADD)
        self._remove = client.register_script(_REMOVE)
        self._snapshot = client.register_script(_SNAPSHOT)

    async def add(self, suppression: Suppression) -> bool:
        """Store (or update the reason and time of) a suppression; True when it is new."""
        keys = [self.key, self.version_key]
        args: list[str | int | bytes] = [suppression.mati_id, suppression.encode()]
        return bool(await run(self._add, keys, args, "suppress"))

    async def remove(self, mati_id: str) -> bool:
        """Drop a suppression; True when there was one."""
        keys = [self.key, self.version_key]
        return bool(await run(self._remove, keys, [mati_id], "unsuppress"))

    async def get(self, mati_id: str) -> Suppression | None:
        with translated("suppression"):
            value = await self._client.hget(self.key, mati_id)
        return None if value is None else Suppression.decode(mati_id, value)

    async def snapshot(self) -> SuppressionSet:
        """Every suppression and the version they belong to, read atomically."""
        answer = await run(self._snapshot, [self.key, self.version_key], [], "suppressions")
        version, flat = answer[0] or None, answer[1:]
        by_id = {
            as_text(k): Suppression.decode(as_text(k), v)
            for k, v in zip(flat[::2], flat[1::2], strict=True)
        }
        return SuppressionSet(read_version(version), by_id)
