"""Faults at random, for the chaos run (``harness.chaos``): a seeded share of a simulator's
API requests answered with a fault drawn at random, instead of the queued, placed faults of
``simulators.faults`` that a test aims at one request.

The kinds are what a client meets from a real service and its load balancers over a long
back-fill: a 5xx, a 429 with ``Retry-After``, a 429 that says how long only in its body, a
request that is never answered (a timeout), a connection reset before any answer, and a body
that stalls halfway (:func:`stall_halfway`: the real handler runs, so whatever it stores is
stored, then the headers and half the body go out and the rest never comes). The generic ones
are answered by ``simulators.faults.answer_generic`` in the simulator's own wording.

A timeout and a stall hold the request until the client gives up (it closes the connection),
at most ``hold_cap_s``: the client's own timeout decides how long a fault costs, as it does
against the real service. The 429s ask for one to three seconds, so a run of hundreds of
faults is not a run of minute-long pauses; a 429 that says nothing at all is the placed
fault's business (``FaultKind.RATE_LIMIT`` with no wait), not this module's.

It never imports the product, like every simulator.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from aiohttp import web

from simulators.faults import (
    FAULT_ANSWERS,
    Fault,
    FaultAnswers,
    FaultKind,
    Handler,
    answer_generic,
    reset_connection,
)


class RandomKind(StrEnum):
    SERVER_ERROR = "5xx"
    RATE_LIMIT = "429_retry_after"
    RATE_LIMIT_BODY_ONLY = "429_no_retry_after"
    TIMEOUT = "timeout"
    RESET = "reset"
    STALL = "stall_halfway"


#: The statuses a 5xx fault picks from: what gateways and services answer while failing.
SERVER_ERRORS: Final = (500, 502, 503, 504)
#: How often a held request checks whether its client is gone.
_POLL_S: Final = 0.25
_FALLBACK_ANSWERS: Final = FaultAnswers()


@dataclass(frozen=True, slots=True)
class Fired:
    """One fault answered: by which simulator, on which route, of which kind, when
    (``time.monotonic()``), and after the real handler ran (only a stall does that)."""

    simulator: str
    route: str
    kind: RandomKind
    at: float
    after_handler: bool


#: Told of every fault as it is answered (a stall: once the handler ran, before the hold).
Listener = Callable[[web.Request, Fired], None]


class RandomFaults:
    """A share ``rate`` of one simulator's API requests (every named route but its ``sim.``
    control routes) answered with a fault of a random kind, drawn from ``rng``.

    ``rate`` may be changed while serving (0 stops the faults: a quiet period). ``fired``
    counts what was answered, by kind; ``listener`` hears of each one."""

    def __init__(
        self,
        simulator: str,
        rng: random.Random,
        rate: float,
        *,
        kinds: tuple[RandomKind, ...] = tuple(RandomKind),
        hold_cap_s: float = 120.0,
        listener: Listener | None = None,
    ) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be within 0..1")
        if not kinds:
            raise ValueError("kinds must not be empty")
        self.simulator = simulator
        self.rate = rate
        self.kinds = kinds
        self.hold_cap_s = hold_cap_s
        self.listener = listener
        self.fired: Counter[RandomKind] = Counter()
        self._rng = rng

    def install(self, app: web.Application) -> None:
        """Add the middleware, innermost: the simulator's request log and recorder see each
        fault as they see any answer. Call it before the simulator starts."""
        app.middlewares.append(self.middleware())

    def middleware(self) -> Any:
        @web.middleware
        async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            route = request.match_info.route.name
            if route is None or route.startswith("sim.") or self._rng.random() >= self.rate:
                return await handler(request)
            kind = self._rng.choice(self.kinds)
            self.fired[kind] += 1
            if kind is RandomKind.STALL:
                response = await handler(request)
                self._tell(request, route, kind, after_handler=True)
                return await stall_halfway(request, response, self.hold_cap_s)
            self._tell(request, route, kind, after_handler=False)
            if kind is RandomKind.TIMEOUT:
                await until_client_gone(request, self.hold_cap_s)
                return web.Response(status=504)
            answers = request.app.get(FAULT_ANSWERS, _FALLBACK_ANSWERS)
            return await answer_generic(request, self._fault(kind), answers)

        return middleware

    def _fault(self, kind: RandomKind) -> Fault:
        wait = self._rng.randint(1, 3)
        if kind is RandomKind.RATE_LIMIT:
            return Fault(FaultKind.RATE_LIMIT, retry_after_s=wait, message_retry_s=wait)
        if kind is RandomKind.RATE_LIMIT_BODY_ONLY:
            return Fault(FaultKind.RATE_LIMIT, message_retry_s=wait)
        if kind is RandomKind.RESET:
            return Fault(FaultKind.RESET)
        return Fault(FaultKind.SERVER_ERROR, status=self._rng.choice(SERVER_ERRORS))

    def _tell(
        self, request: web.Request, route: str, kind: RandomKind, *, after_handler: bool
    ) -> None:
        if self.listener is not None:
            fired = Fired(self.simulator, route, kind, time.monotonic(), after_handler)
            self.listener(request, fired)


async def until_client_gone(request: web.Request, cap_s: float) -> None:
    """Hold until the client closed the connection (it gave up), or ``cap_s`` passed."""
    deadline = time.monotonic() + cap_s
    while time.monotonic() < deadline:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        await asyncio.sleep(_POLL_S)


async def stall_halfway(
    request: web.Request, response: web.StreamResponse, cap_s: float
) -> web.StreamResponse:
    """``response``'s status and headers and the first half of its body, then nothing until
    the client gives up: the body is chunked, so the client waits for a last chunk that
    never comes. An empty body sends one blank, so the headers do go out. The connection is
    reset after ``cap_s``. A response the handler streamed itself is returned untouched."""
    if response.prepared or not isinstance(response, web.Response):
        return response
    body = response.body if isinstance(response.body, bytes) else b""
    stalled = web.StreamResponse(status=response.status, reason=response.reason)
    for name, value in response.headers.items():
        if name.lower() not in ("content-length", "transfer-encoding"):
            stalled.headers.add(name, value)
    stalled.enable_chunked_encoding()
    await stalled.prepare(request)
    await stalled.write(body[: len(body) // 2] or b" ")
    await until_client_gone(request, cap_s)
    reset_connection(request)
    return stalled
