"""Fixtures the simulator tests share: one token minter, a Sentinel simulator, a TLS session,
MATI simulators on a hand-moved clock, and the Log Analytics simulator with the real
``azure-monitor-query`` client on it."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from azure.monitor.query.aio import LogsQueryClient

from simulators.feed import Feed
from simulators.loganalytics import LogAnalyticsSimulator
from simulators.mati import MatiSimulator
from simulators.sentinel import SentinelSimulator
from simulators.tokens import TokenMinter
from tests.simulators.logs_client import logs_client
from tests.simulators.mati_requests import NOW, Clock, MakeMati


@pytest.fixture
def minter() -> TokenMinter:
    return TokenMinter()


@pytest.fixture
async def sentinel(
    request: pytest.FixtureRequest, server_ssl: ssl.SSLContext, minter: TokenMinter
) -> AsyncIterator[SentinelSimulator]:
    """The simulator as configured by default; a test about its quota passes other options
    with ``@pytest.mark.parametrize("sentinel", [{...}], indirect=True)``."""
    options: dict[str, Any] = getattr(request, "param", {})
    async with SentinelSimulator(server_ssl, minter=minter, **options) as sim:
        yield sim


@pytest.fixture
async def session(client_ssl: ssl.SSLContext) -> AsyncIterator[aiohttp.ClientSession]:
    """A client session that trusts the simulators' CA, as the product's clients do."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl)) as s:
        yield s


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def make_mati(server_ssl: ssl.SSLContext, clock: Clock) -> AsyncIterator[MakeMati]:
    started: list[MatiSimulator] = []

    async def make(feed: Feed | None = None, **options: Any) -> MatiSimulator:
        mati = MatiSimulator(
            server_ssl, feed=feed or Feed(seed=11, count=230, now=NOW), clock=clock, **options
        )
        await mati.start()
        started.append(mati)
        return mati

    yield make
    for mati in started:
        await mati.stop()


@pytest.fixture
async def mati(make_mati: MakeMati) -> MatiSimulator:
    return await make_mati()


@pytest.fixture
async def logs(
    server_ssl: ssl.SSLContext, minter: TokenMinter, sentinel: SentinelSimulator
) -> AsyncIterator[LogAnalyticsSimulator]:
    async with LogAnalyticsSimulator(server_ssl, minter=minter, sentinel=sentinel) as sim:
        yield sim


@pytest.fixture
async def client(
    server_ssl: ssl.SSLContext, session: aiohttp.ClientSession, logs: LogAnalyticsSimulator
) -> AsyncIterator[LogsQueryClient]:
    async with logs_client(server_ssl, session, logs) as made:
        yield made
