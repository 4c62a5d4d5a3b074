"""Fixtures every test may use: the simulators' CA, a real Redis, and an environment free of the
developer's own settings (so no test depends on the shell it runs in). Plain helper functions are
in tests/helpers.py.

``tests/unit`` must run with nothing but the interpreter (``make unit`` starts no Redis): a test
there that asks for a fixture of a server fails the collection, and belongs in
``tests/integration``."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from services.cli.redis_server import LocalRedis
from shared.adapters.redis_connect import connect
from shared.adapters.tls import client_context
from simulators.tls import SimulatorCA, mint_ca

#: Variables a developer's shell may carry that would change what a test sees.
_LEAKY_ENV = (
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_TENANT_ID",
    "AZURE_AUTHORITY_HOST",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_REGIONAL_AUTHORITY_NAME",
    "MATI_API_KEY",
    "MATI_API_SECRET",
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "https_proxy",
    "http_proxy",
)


#: Fixtures that start or serve with a server: Redis, or the TLS of the simulators' routes.
_SERVER_FIXTURES = frozenset({"redis_server", "redis_client", "sim_ca", "server_ssl", "client_ssl"})
_UNIT = Path(__file__).parent / "unit"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Keep ``tests/unit`` runnable where no server can start."""
    misplaced = []
    for item in items:
        used = _SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if used and item.path.is_relative_to(_UNIT):
            misplaced.append(f"{item.nodeid} uses {', '.join(sorted(used))}")
    if misplaced:
        raise pytest.UsageError(
            "tests/unit must start no server; move these to tests/integration:\n"
            + "\n".join(misplaced)
        )


@pytest.fixture(autouse=True)
def _clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _LEAKY_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def sim_ca(tmp_path_factory: pytest.TempPathFactory) -> SimulatorCA:
    """One CA for the whole run; its PEM file is what clients trust."""
    return mint_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="session")
def server_ssl(sim_ca: SimulatorCA) -> ssl.SSLContext:
    """The TLS context simulators serve with (a certificate for 127.0.0.1 and localhost)."""
    return sim_ca.server_context()


@pytest.fixture(scope="session")
def client_ssl(sim_ca: SimulatorCA) -> ssl.SSLContext:
    """The product's own client context, trusting the simulators' CA like SSL_CERT_FILE does."""
    return client_context(sim_ca.ca_path)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    """One real redis-server for the run (AOF on); tests that kill Redis start their own."""
    with LocalRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
async def redis_client(redis_server: LocalRedis) -> AsyncIterator[Redis]:
    """A client on a Redis emptied for this test, opened as the services open theirs."""
    client: Redis = connect(redis_server.url)
    await client.flushall()
    yield client
    await client.aclose()
