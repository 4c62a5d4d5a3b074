"""Waiting while a batch is held, without ever letting its locks run out.

Every wait is cut into slices of a third of the lock duration (``UploaderConfig.slice_s``) with
a renewal between them, and so is the wait for a slot of the shared ``RateBudget`` that every
request takes first. Stopping ends any wait at once; what is still held is then given back
(``wait_or_release``), so its messages come straight back for another replica. The counters
gathered so far are written at each renewal, so ``status`` keeps up with a batch held long.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from services.uploader.batching import HeldBatch
from shared.adapters.destination_state import DestinationState
from shared.adapters.rate_budget import RateBudget
from shared.core.errors import StateUnavailable
from shared.core.timing import Sleep, sleep_unless_stopped
from shared.telemetry import logs

log = logs.get_logger(__name__)


class Waits:
    """The waits of one uploader replica; ``stop`` is the event its ``run`` was given (until
    then, one nobody sets). Counts go to the replica's ``tally``, written by ``flush``."""

    def __init__(
        self,
        state: DestinationState,
        budget: RateBudget,
        tally: Counter[str],
        *,
        slice_s: float,
        sleep: Sleep,
    ) -> None:
        self.stop = asyncio.Event()
        self._state = state
        self._budget = budget
        self._tally = tally
        self._slice_s = slice_s
        self._sleep = sleep

    async def acquire(self, held: HeldBatch) -> float | None:
        """Take a slot of the shared budget, waiting (and renewing) as long as it says; the
        seconds waited, or None when stopped first."""
        waited = 0.0
        while True:
            if self.stop.is_set():
                return None
            try:
                wait = await self._budget.acquire()
            except StateUnavailable as exc:
                log.warning("upload.budget_unavailable", detail=str(exc))
                wait = 1.0
            if wait <= 0:
                if asyncio.get_running_loop().time() - held.renewed_at >= self._slice_s:
                    await self.renew(held)
                return waited
            chunk = min(wait, self._slice_s)
            if not await self.nap(chunk):
                return None
            waited += chunk
            await self.renew(held)

    async def wait_or_release(self, seconds: float, held: HeldBatch) -> bool:
        """``wait``; when stopped meanwhile, the batch is given back (abandoned) first."""
        if await self.wait(seconds, held):
            return True
        await held.abandon("stopping")
        return False

    async def wait(self, seconds: float, held: HeldBatch) -> bool:
        """Wait ``seconds`` in slices, renewing the batch's locks; False when stopped."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return not self.stop.is_set()
            if not await self.nap(min(remaining, self._slice_s)):
                return False
            await self.renew(held)

    async def nap(self, seconds: float) -> bool:
        """Sleep (the injected sleep) unless stop is set first; False when stopped."""
        return await sleep_unless_stopped(self.stop, seconds, sleep=self._sleep)

    async def renew(self, held: HeldBatch) -> None:
        await held.renew(asyncio.get_running_loop().time())
        await self.flush()

    async def flush(self) -> None:
        """Write the counters gathered so far; kept for the next flush if Redis is away."""
        if not self._tally:
            return
        counts = dict(self._tally)
        self._tally.clear()
        try:
            await self._state.count(counts)
        except StateUnavailable as exc:
            self._tally.update(counts)
            log.warning("upload.count_failed", detail=str(exc))
