"""Fixtures of the service tests: ``rig``, the filter's real Redis, bus and state
(tests/services/filter_rig.py), for the test_filter_*.py modules; ``make_world`` and ``w``, the
uploader's simulators, Redis and bus (tests/services/uploader_rig.py), for the
test_uploader_*.py modules; ``ctx``, the MATI simulator, client, Redis and bus of the explain
and suppress tests (tests/services/explain_rig.py)."""

from __future__ import annotations

import functools
import ssl
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from services.cli.redis_server import LocalRedis
from shared.adapters.destination_state import DestinationState
from shared.adapters.redis_streams import RedisStreamsBus
from tests.services.explain_rig import Ctx, open_ctx
from tests.services.filter_rig import DEST, QUEUE, SOURCE, Clock, Rig
from tests.services.uploader_rig import World, WorldFactory, world


@pytest.fixture
async def rig(redis_client: Redis) -> Rig:
    bus = RedisStreamsBus(redis_client, consumer="filter-1", lock_duration_s=5.0)
    await bus.ensure(SOURCE)
    await bus.ensure(QUEUE)
    return Rig(redis_client, bus, DestinationState(redis_client, DEST), Clock())


@pytest.fixture
async def ctx(
    redis_client: Redis, server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> AsyncIterator[Ctx]:
    async with open_ctx(redis_client, server_ssl, client_ssl) as made:
        yield made


@pytest.fixture
def make_world(
    server_ssl: ssl.SSLContext,
    client_ssl: ssl.SSLContext,
    redis_client: Redis,
    redis_server: LocalRedis,
) -> WorldFactory:
    """``world`` on this test's TLS and Redis, for the tests that need a shorter timeout or a
    smaller Sentinel quota than the ``w`` fixture's."""
    return functools.partial(world, server_ssl, client_ssl, redis_client, redis_server)


@pytest.fixture
async def w(make_world: WorldFactory) -> AsyncIterator[World]:
    async with make_world() as made:
        yield made
