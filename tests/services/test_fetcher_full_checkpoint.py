"""A full sync leaves the checkpoint where it was. It re-judges what can still be live and
drops what the workspace let expire, which a normal sync from the checkpoint must still
upload: moved to the full sync's newest page, the checkpoint would skip the rest of an
interrupted back-fill for good. Found by ``make chaos``: the back-fill's fetcher killed, a
full sync run meanwhile, and indicators older than their expiration never arrived."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from redis.asyncio import Redis

from services.fetcher.sync import Outcome
from tests.services.fetcher_rig import CONFIG, LOOKBACK, world

pytestmark = pytest.mark.timeout(30)


async def test_a_full_sync_leaves_an_interrupted_back_fill_its_checkpoint(
    server_ssl: Any, client_ssl: Any, redis_client: Redis
) -> None:
    async with world(server_ssl, client_ssl, redis_client) as w:
        interrupted = w.clock.now - LOOKBACK / 2
        await w.state.advance(interrupted, "a-back-fill-killed-half-way")
        summary = await w.sync(w.fetcher(config=replace(CONFIG, full_window=LOOKBACK)), full=True)
        await w.drain()
        assert summary.outcome is Outcome.COMPLETED
        assert summary.pages > 0
        checkpoint = await w.checkpoint()
        assert checkpoint is not None
        assert abs(checkpoint - interrupted) < timedelta(milliseconds=1)
