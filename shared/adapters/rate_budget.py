"""The request budget every uploader replica of a destination shares, in Redis (DESIGN §4).
Keys: ``shared.adapters.state_redis``."""

from __future__ import annotations

import secrets
from typing import Final

from shared.adapters import state_scripts as scripts
from shared.adapters.redis_connect import RedisClient
from shared.adapters.state_redis import (
    destination_prefix,
    positive_ms,
    run,
    translated,
)
from shared.core import checks

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
        checks.at_least("limit", limit, 1)
        if margin_s is None:
            margin_s = default_rate_margin_s(window_s)
        checks.at_least("margin_s", margin_s, 0)
        positive_ms(window_s, "window_s")
        self.limit = limit
        self.span_us = round((window_s + margin_s) * 1_000_000)
        prefix = destination_prefix(destination)
        self.log_key = f"{prefix}rate:log"
        self.pause_key = f"{prefix}rate:pause"
        self._client = client
        self._acquire = client.register_script(scripts.RATE_ACQUIRE)
        self._pause = client.register_script(scripts.RATE_PAUSE)
        self._in_window = client.register_script(scripts.RATE_IN_WINDOW)

    async def acquire(self) -> float:
        """0.0 = one request granted (and recorded): send it now. Otherwise the seconds to
        wait before asking again (the pause left, or until the oldest grant leaves the
        window); nothing was recorded."""
        keys = [self.log_key, self.pause_key]
        args: list[str | int] = [self.limit, self.span_us, secrets.token_hex(8)]
        return int(await run(self._acquire, keys, args, "rate acquire")) / 1_000_000

    async def pause(self, seconds: float) -> float:
        """Make every replica wait ``seconds`` (after a 429); a longer pause already set is
        kept. Returns the pause now in force, in seconds."""
        ms = max(0, round(seconds * 1000))
        return int(await run(self._pause, [self.pause_key], [ms], "rate pause")) / 1000

    async def paused_for(self) -> float:
        """Seconds the shared pause still lasts (0.0 when none)."""
        with translated("rate paused_for"):
            ms = int(await self._client.pttl(self.pause_key))
        return max(ms, 0) / 1000

    async def in_window(self) -> int:
        """Grants within the window now, for status and metrics."""
        args = [self.span_us]
        return int(await run(self._in_window, [self.log_key], args, "rate in_window"))
