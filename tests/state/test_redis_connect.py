"""The services' Redis clients (``shared.adapters.redis_connect``): hiredis packs exactly the bytes
redis-py's own packer makes, for every scheme, and the real server answers them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from services.cli.redis_server import LocalRedis
from shared.adapters.redis_connect import (
    CPackedConnection,
    CPackedSSLConnection,
    CPackedUnixConnection,
    connect,
    pack_command,
)
from tests.unit.strategies import PROPERTY

_PYTHON_PACKER = Connection()
ARGS = st.one_of(
    st.text(),
    st.binary(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False),
)


@PROPERTY
@given(
    name=st.sampled_from(["SET", "MGET", "EVALSHA", "CONFIG GET", b"XACK", b"CLIENT SETNAME"]),
    args=st.lists(ARGS, max_size=6),
)
def test_hiredis_packs_what_redis_py_packs(name: str | bytes, args: list[object]) -> None:
    python = b"".join(_PYTHON_PACKER.pack_command(name, *args))
    assert pack_command((name, *args)) == [python]


@pytest.mark.parametrize("value", [True, None, object()])
def test_what_redis_py_refuses_is_refused_alike(value: object) -> None:
    with pytest.raises(DataError):
        _PYTHON_PACKER.pack_command("SET", "k", value)
    with pytest.raises(DataError):
        pack_command(("SET", "k", value))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://localhost:6379/0", CPackedConnection),
        ("rediss://localhost:6380/0", CPackedSSLConnection),
        ("unix:///run/redis.sock", CPackedUnixConnection),
    ],
)
async def test_every_scheme_gets_its_c_packing_connection(url: str, expected: type) -> None:
    client = connect(url)
    try:
        assert client.connection_pool.connection_class is expected
    finally:
        await client.aclose()


async def test_the_server_answers_c_packed_commands(redis_server: LocalRedis) -> None:
    client = connect(redis_server.url, socket_timeout=5)
    try:
        await client.set("connect:k", "välue ☃")
        assert await client.get("connect:k") == "välue ☃".encode()
        await client.mset({f"connect:{n}": n for n in range(500)})
        assert await client.mget([f"connect:{n}" for n in range(500)]) == [
            str(n).encode() for n in range(500)
        ]
        assert await client.config_get("maxmemory-policy")
        async with client.pipeline(transaction=True) as pipe:
            results = await pipe.incr("connect:n").incrbyfloat("connect:f", 0.5).execute()
        assert results == [1, 0.5]
    finally:
        await client.aclose()
