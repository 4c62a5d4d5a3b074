"""Where the chaos harness (``harness.chaos``) watches a simulator's traffic without any hook
in the product: which requests are in flight, from which client port, and two moments it can
act in, awaited inside the request.

- **arrival**: a request of a route has arrived and its handler has not run yet. The hook is
  awaited before the handler, so the request is held while it runs: a client killed then
  dies with its request in flight (MATI: mid-page; Sentinel: mid-upload).
- **answered**: the handler answered 200 and the answer has been written to the connection
  (not merely returned to aiohttp). A client killed then dies holding an answer it has not
  acted on (MATI: mid-publish; Sentinel: mid-commit).

Each request gets a serial number (``SERIAL``) and an arrival time (``time.monotonic()``), so
what a simulator stores can be tied back to the request that carried it.

It never imports the product, like every simulator.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from aiohttp import web

from simulators.faults import Handler

SERIAL: Final = web.RequestKey("sim.gates.serial", int)


@dataclass(frozen=True, slots=True)
class Passing:
    """A request seen by the gates: its route, serial, the client's port (None when the
    transport is already gone), when it arrived, its query, and the status it was answered
    with."""

    route: str
    serial: int
    peer_port: int | None
    at: float
    query: Mapping[str, str]
    status: int | None = None


Hook = Callable[[Passing], Awaitable[None]]


class Gates:
    """The in-flight requests of one simulator, and the hooks armed on its routes.

    ``on_arrival[route]`` and ``on_answer[route]`` are awaited as the module docstring says;
    set and remove them while serving. ``in_flight`` holds every request between arrival and
    answer, by serial."""

    def __init__(self) -> None:
        self.on_arrival: dict[str, Hook] = {}
        self.on_answer: dict[str, Hook] = {}
        self.in_flight: dict[int, Passing] = {}
        self._serials = itertools.count(1)

    def install(self, app: web.Application) -> None:
        """Add the middleware (after those already there: the request log and the recorder
        see every request first). Call it before the simulator starts."""
        app.middlewares.append(self.middleware())

    def middleware(self) -> Any:
        @web.middleware
        async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            route = request.match_info.route.name
            if route is None or route.startswith("sim."):
                return await handler(request)
            serial = next(self._serials)
            request[SERIAL] = serial
            passing = Passing(route, serial, peer_port(request), time.monotonic(), request.query)
            self.in_flight[serial] = passing
            try:
                arrival = self.on_arrival.get(route)
                if arrival is not None:
                    await arrival(passing)
                response = await handler(request)
                answered = self.on_answer.get(route)
                if answered is not None and response.status == 200 and not response.prepared:
                    await response.prepare(request)
                    await response.write_eof()
                    await answered(replace(passing, status=response.status))
                return response
            finally:
                del self.in_flight[serial]

        return middleware


def peer_port(request: web.Request) -> int | None:
    """The client's TCP port: with the loopback address, what names its socket."""
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, tuple) and len(peer) >= 2 and isinstance(peer[1], int):
        return peer[1]
    return None
