"""Fixtures the state tests share: a second client standing in for another replica, and the
state of one destination."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from services.cli.redis_server import LocalRedis
from shared.adapters.destination_state import DestinationState


@pytest.fixture
async def other_client(redis_server: LocalRedis) -> AsyncIterator[Redis]:
    """A second connection pool, standing in for another replica on another host."""
    client: Redis = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
def dest(redis_client: Redis) -> DestinationState:
    return DestinationState(redis_client, "acme")
