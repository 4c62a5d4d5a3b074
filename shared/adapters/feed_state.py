"""The fetcher's state in Redis: the lease that keeps one fetcher active, and its memory of the
feed (checkpoint, last run, counters). Keys: ``shared.adapters.state_redis``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from shared.adapters import state_counters
from shared.adapters import state_scripts as scripts
from shared.adapters.redis_connect import RedisClient
from shared.adapters.state_redis import (
    as_text,
    fetcher_key,
    from_ms,
    positive_ms,
    run,
    to_ms,
    translated,
)
from shared.core.events import get_logger

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where the next sync starts: the newest ``last_updated`` whose page the bus confirmed.

    Times are aware UTC with millisecond precision (what Redis keeps); ``saved_at`` is the
    Redis server's clock unless the caller supplied one.
    """

    last_updated: datetime
    saved_at: datetime
    run_id: str


class Lease:
    """Keeps one worker at a time on a job (fetching, rebuilding a seen cache), across pods
    and restarts.

    The holder must ``renew`` well within ``ttl_s`` (every third of it, say) and stop working
    as soon as ``renew`` answers False: the lease expired or someone else holds it now. The
    lease is advisory; what keeps a late loser harmless is that its writes are idempotent.
    """

    def __init__(self, client: RedisClient, key: str, *, owner: str, ttl_s: float) -> None:
        if not owner:
            raise ValueError("owner must not be empty")
        self.owner = owner
        self.ttl_ms = positive_ms(ttl_s, "ttl_s")
        self.key = key
        self._client = client
        self._acquire = client.register_script(scripts.LEASE_ACQUIRE)
        self._renew = client.register_script(scripts.LEASE_RENEW)
        self._release = client.register_script(scripts.LEASE_RELEASE)

    async def acquire(self) -> bool:
        """Take the lease if it is free (``SET NX PX``); True also when we already hold it."""
        return bool(await run(self._acquire, [self.key], [self.owner, self.ttl_ms], "acquire"))

    async def renew(self) -> bool:
        """Extend the lease to a full ``ttl_s``; False means it is lost: stop working."""
        return bool(await run(self._renew, [self.key], [self.owner, self.ttl_ms], "renew"))

    async def release(self) -> bool:
        """Give the lease up so the next fetcher need not wait for it to expire; a lease held
        by someone else is left alone. Returns whether we released it."""
        return bool(await run(self._release, [self.key], [self.owner], "release"))

    async def expires_in_s(self) -> float | None:
        """How long until the lease, as whoever holds it now left it, expires; ``None`` when
        nobody holds it."""
        with translated("lease expiry"):
            left_ms = await self._client.pttl(self.key)
        return None if left_ms < 0 else left_ms / 1000

    async def holder(self) -> str | None:
        """Who holds the lease now, for ``status``."""
        with translated("lease holder"):
            value = await self._client.get(self.key)
        return None if value is None else as_text(value)


class FetcherLease(Lease):
    """Keeps one fetcher active at a time: a late loser is harmless because the checkpoint
    only moves forward and every publish is idempotent (DESIGN §4).

    The checkpoint needs no fence on the lease: each fetcher moves it only past pages it
    published itself, paging from at or before the checkpoint it read. So a lease lost early
    (expired during a stall, or evicted by a Redis whose policy drops keys with a TTL) can
    let two fetchers page at once, but never skip a page (tests/state/test_redis_memory.py).
    """

    def __init__(self, client: RedisClient, *, owner: str, ttl_s: float = 30.0) -> None:
        super().__init__(client, fetcher_key("lease"), owner=owner, ttl_s=ttl_s)


class FeedState:
    """The fetcher's memory of the feed: the checkpoint, the last run's funnel, counters."""

    def __init__(self, client: RedisClient) -> None:
        self._client = client
        self.checkpoint_key = fetcher_key("checkpoint")
        self.last_run_key = fetcher_key("last_run")
        self.counters_key = fetcher_key("counters")
        self._advance = client.register_script(scripts.CHECKPOINT_ADVANCE)
        self._count = client.register_script(scripts.COUNT)

    async def checkpoint(self) -> Checkpoint | None:
        """The saved checkpoint; ``None`` on a first run, or when the stored value is not one
        we wrote (then the next sync starts from ``INITIAL_LOOKBACK``: slower, never lossy)."""
        with translated("checkpoint"):
            raw = await self._client.hgetall(self.checkpoint_key)
        fields = {as_text(key): as_text(value) for key, value in raw.items()}
        try:
            return Checkpoint(
                last_updated=from_ms(int(fields["last_updated"])),
                saved_at=from_ms(int(fields["saved_at"])),
                run_id=fields["run_id"],
            )
        except (KeyError, ValueError, OverflowError):
            if fields:
                log.warning("state.checkpoint_unreadable", key=self.checkpoint_key)
            return None

    async def advance(
        self, last_updated: datetime, run_id: str, *, now: datetime | None = None
    ) -> bool:
        """Move the checkpoint to ``last_updated`` (truncated to ms) if that is later than the
        saved one; returns whether it moved. Call it only after the bus confirmed the page.
        ``saved_at`` is ``now`` when given, else the Redis server's clock."""
        saved_at = "" if now is None else str(to_ms(now))
        args: list[str | int] = [to_ms(last_updated), saved_at, run_id]
        return bool(await run(self._advance, [self.checkpoint_key], args, "advance"))

    async def record_run(self, summary: Mapping[str, object]) -> None:
        """Keep the last sync's funnel (fetched, published, pages, …) for ``status``; values
        must be JSON-serializable (datetimes are, as RFC 3339)."""
        body = orjson.dumps(dict(summary), option=orjson.OPT_NON_STR_KEYS)
        with translated("record run"):
            await self._client.set(self.last_run_key, body)

    async def last_run(self) -> dict[str, Any] | None:
        """The summary ``record_run`` stored, or ``None`` when there is none (or it is not a
        JSON object)."""
        with translated("last run"):
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
        await state_counters.count(self._count, self.counters_key, counts)
        state_counters.counted("", counts)

    async def counters(self) -> dict[str, int]:
        return await state_counters.counters(self._client, self.counters_key)
