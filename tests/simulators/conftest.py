"""Fixtures the simulator tests share: one token minter, a Sentinel simulator, a TLS session."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import aiohttp
import pytest

from simulators.sentinel import SentinelSimulator
from simulators.tokens import TokenMinter


@pytest.fixture
def minter() -> TokenMinter:
    return TokenMinter()


@pytest.fixture
async def sentinel(
    server_ssl: ssl.SSLContext, minter: TokenMinter
) -> AsyncIterator[SentinelSimulator]:
    async with SentinelSimulator(server_ssl, minter=minter) as sim:
        yield sim


@pytest.fixture
async def session(client_ssl: ssl.SSLContext) -> AsyncIterator[aiohttp.ClientSession]:
    """A client session that trusts the simulators' CA, as the product's clients do."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl)) as s:
        yield s
