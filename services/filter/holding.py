"""The filter's hold while its destination's seen cache is not trusted (``CACHE_REBUILD=auto``).

A seen cache lost with Redis is empty, not "nothing uploaded yet": judged against it, every
live indicator a sync reports would be uploaded again, hours of Sentinel's quota. So the filter
decides nothing until the uploader has rebuilt the cache from the workspace and marked the
state born (``services.workspace.CacheGuard``): before each receive it waits for the birth, and
a batch whose ``batch_view`` finds the state gone (lost while running) is left unsettled, to
come back once the cache is rebuilt.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

from shared.adapters.destination_state import DestinationState
from shared.core.errors import StateUnavailable
from shared.core.events import get_logger

log = get_logger("services.filter.worker")

#: While the state is not born: how often to look again (a GET), and to say so.
POLL_S: Final = 0.25
LOG_EVERY_S: Final = 30.0


class Birth:
    """Whether the destination's state is born, as one filter process last saw it."""

    def __init__(self, state: DestinationState, *, hold: bool) -> None:
        self.hold = hold
        self._state = state
        self._seen = False

    async def ready(self, stop: asyncio.Event) -> bool:
        """Wait until the state is born (at once when holding is off or it was seen born);
        False when stopped first."""
        waited = 0.0
        while self.hold and not self._seen:
            if stop.is_set():
                return False
            if await self._state.born():
                self._seen = True
                if waited:
                    log.info("filter.resumed", held_s=round(waited, 1))
                break
            if waited % LOG_EVERY_S == 0:
                log.warning("filter.holding", reason="seen cache not rebuilt yet", held_s=waited)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_S)
            waited += POLL_S
        return not stop.is_set()

    def check(self, born: bool) -> None:
        """After a batch's ``batch_view``: raise ``StateUnavailable`` (the batch is not
        decided, nor settled) when the state was lost meanwhile."""
        if self.hold and not born:
            self._seen = False
            raise StateUnavailable("the seen cache was lost; holding until it is rebuilt")
