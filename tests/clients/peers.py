"""Tiny stand-in peers for behaviours no simulator should have: a route answering whatever a
test scripts, and a TLS port that hangs up during the handshake."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace

import pytest
from aiohttp import web

#: What the world fixtures of tests/clients/conftest.py hand a test: ``world(**options)`` opens
#: the simulators and a client configured with those options.
World = Callable[..., contextlib.AbstractAsyncContextManager[SimpleNamespace]]
#: The ``log`` fixture of tests/clients/conftest.py: pytest's log capture, set to DEBUG.
Log = pytest.LogCaptureFixture


@contextlib.asynccontextmanager
async def one_route(
    server_ssl: ssl.SSLContext,
    path: str,
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """An HTTPS server (the simulators' certificate) with ``handler`` on POST ``path``; yields
    the base URL."""
    app = web.Application()
    app.router.add_post(path, handler)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ssl)
    await site.start()
    try:
        yield f"https://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def hang_up_server() -> AsyncIterator[str]:
    """A port that accepts TCP, reads the start of the ClientHello and closes: the network
    dropping a TLS handshake half-way, which is not a verdict on any certificate."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(16)
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()
