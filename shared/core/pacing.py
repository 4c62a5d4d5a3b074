"""A requests-per-second ceiling for one process: request starts are spaced ``1/rate`` apart.

MATI publishes no rate limit; the connectors that survive it keep to about one request per second
sustained (specs/mati-api-v4.md §8). A token bucket would allow a burst after an idle spell; we
space every start instead, so no window of any length ever sees more than the ceiling — retries
included, which is when a client is most tempted to hammer a struggling server.

Clock and sleep are injected so tests assert the waits the pacer chose without real sleeping.
"""

from __future__ import annotations

import asyncio
import math
import time

from shared.core.timing import Monotonic, Sleep


class Pacer:
    """Spaces request starts at least ``1 / rate_per_s`` seconds apart.

    Each caller of :meth:`wait` reserves the next free slot before it sleeps, so concurrent
    callers get distinct slots in call order without a lock (there is no ``await`` between
    reading and advancing the slot). A caller cancelled while waiting forfeits its slot: the
    ceiling errs on the slow side, never the fast one.

    ``rate_per_s=math.inf`` disables pacing (tests, simulators): no slot, no sleep.
    """

    def __init__(
        self,
        rate_per_s: float,
        *,
        clock: Monotonic = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not rate_per_s > 0:  # also rejects NaN
            raise ValueError("rate_per_s must be a positive number of requests per second")
        self._interval = 0.0 if math.isinf(rate_per_s) else 1.0 / rate_per_s
        self._clock = clock
        self._sleep = sleep
        self._next_slot: float | None = None

    @property
    def interval_s(self) -> float:
        """The minimum spacing between two request starts."""
        return self._interval

    def reserve(self) -> float:
        """Take the next slot and return how long to wait for it (0 when it is free now)."""
        if self._interval == 0.0:
            return 0.0
        now = self._clock()
        start = now if self._next_slot is None else max(now, self._next_slot)
        self._next_slot = start + self._interval
        return start - now

    async def wait(self) -> None:
        """Return when the caller may start its request."""
        delay = self.reserve()
        if delay > 0:
            await self._sleep(delay)
