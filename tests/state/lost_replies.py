"""A TCP proxy in front of a real Redis that loses one reply on demand.

What a Redis killed between running a command and sending its answer does to a client (with
``appendfsync always`` the command's writes are on disk before the reply is written), and what
a connection dropped at that moment does: the server ran the command, the client never heard
of it, and redis-py's ``Retry`` sends it again on a new connection. Nothing of the client is
replaced: the test talks to the real server through real sockets, one of which is cut.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self

_CHUNK = 65536


class LostReplies:
    """Relays every connection to ``127.0.0.1:upstream_port``. Once ``lose_reply_to(marker)``
    armed it, the first request whose bytes contain ``marker`` reaches the server, and that
    connection is cut as soon as the server's answer starts coming back, unread by the client.
    ``lost`` counts the replies lost so far. Use it as an async context manager."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.lost = 0
        self._marker: bytes | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    def lose_reply_to(self, marker: bytes) -> None:
        """Lose the answer to the next request containing ``marker`` (once)."""
        self._marker = marker

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._relay(client_r, client_w))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers |= {client_w, server_w}
        losing = asyncio.Event()

        async def requests() -> None:
            while data := await client_r.read(_CHUNK):
                if self._marker is not None and self._marker in data:
                    self._marker = None
                    losing.set()
                server_w.write(data)
                await server_w.drain()

        async def replies() -> None:
            while data := await server_r.read(_CHUNK):
                if losing.is_set():
                    self.lost += 1
                    return  # the server answered: cut the client off before it hears
                client_w.write(data)
                await client_w.drain()

        try:
            pumps = [asyncio.ensure_future(requests()), asyncio.ensure_future(replies())]
            _, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            for pump in pending:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            for writer in (client_w, server_w):
                self._writers.discard(writer)
                writer.transport.abort()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
