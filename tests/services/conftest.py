"""Fixtures of the service tests: ``rig``, the filter's real Redis, bus and state
(tests/services/filter_rig.py), for test_filter.py and test_filter_shortcut.py."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from shared.adapters.destination_state import DestinationState
from shared.adapters.redis_streams import RedisStreamsBus
from tests.services.filter_rig import DEST, QUEUE, SOURCE, Clock, Rig


@pytest.fixture
async def rig(redis_client: Redis) -> Rig:
    bus = RedisStreamsBus(redis_client, consumer="filter-1", lock_duration_s=5.0)
    await bus.ensure(SOURCE)
    await bus.ensure(QUEUE)
    return Rig(redis_client, bus, DestinationState(redis_client, DEST), Clock())
