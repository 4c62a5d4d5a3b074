"""What the edge-input tests share: the small limits they set so a refusal costs kilobytes, the
measure of a client's memory while it reads, and a plain-HTTP listener that proves a redirect
took nothing anywhere."""

from __future__ import annotations

import contextlib
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Final

import pytest
from aiohttp import web

from simulators.faults import FaultKind

KIB: Final = 1024
MIB: Final = 1024 * KIB
#: The body limit the tests give a client: small, so hitting it is cheap.
LIMIT: Final = 256 * KIB
#: What a server may have handed to the kernel's socket buffers (a few MiB each way on loopback)
#: by the time it notices the client hung up: sent, never read.
SOCKET_SLACK: Final = 16 * MIB
#: Allocations a refused read may peak at besides the body it held: the pieces it joined, the
#: simulator's chunks, the exception. A read that did not stop at the limit goes far past this.
READ_OVERHEAD: Final = 8 * MIB

#: The answers past a client's limit, (kind, fault options, what the refusal says it saw): one
#: that declares its length, one that inflates past it, one that never ends.
PAST_THE_LIMIT: Final = pytest.mark.parametrize(
    ("kind", "options", "seen"),
    [
        pytest.param(FaultKind.OVERSIZED_BODY, {}, "it declared", id="declared"),
        pytest.param(
            FaultKind.INFLATING_BODY, {"size_bytes": 64 * MIB}, "refused at the limit", id="gzip"
        ),
        pytest.param(FaultKind.ENDLESS_BODY, {}, "refused at the limit", id="endless"),
    ],
)


@dataclass
class Peak:
    bytes: int = 0


@contextlib.contextmanager
def peak_memory() -> Iterator[Peak]:
    """The most Python memory allocated at once within the block (``tracemalloc``)."""
    already = tracemalloc.is_tracing()
    if already:
        tracemalloc.reset_peak()
    else:
        tracemalloc.start()
    peak = Peak()
    try:
        yield peak
    finally:
        peak.bytes = tracemalloc.get_traced_memory()[1]
        if not already:
            tracemalloc.stop()


@dataclass
class Catcher:
    """A plain-HTTP listener on loopback: where a redirect to ``http://`` would lead."""

    url: str
    received: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def plain_http_catcher() -> AsyncIterator[Catcher]:
    """Records every request it gets (method, path and whether it carried credentials)."""
    catcher = Catcher("")

    async def catch(request: web.Request) -> web.Response:
        catcher.received.append(f"{request.method} {request.path} {dict(request.headers)}")
        return web.Response(text="caught")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", catch)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    catcher.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield catcher
    finally:
        await runner.cleanup()
