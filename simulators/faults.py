"""Faults the simulators inject on demand, and the record of what they received.

A test (or `make demo`, over the ``/_sim/faults`` control route) queues faults; each request
to a matching route consumes one. Generic faults (429, 5xx, empty 500, timeout, reset,
malformed JSON) are applied by a middleware before the handler runs; faults that only make
sense inside a handler (partial record errors, an expired token) are taken by the handler.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import orjson
from aiohttp import web


class FaultKind(StrEnum):
    RATE_LIMIT = "rate_limit"
    SERVER_ERROR = "server_error"
    EMPTY_500 = "empty_500"
    TIMEOUT = "timeout"
    RESET = "reset"
    MALFORMED_JSON = "malformed_json"
    PARTIAL_ERRORS = "partial_errors"
    EXPIRED_TOKEN = "expired_token"


#: Faults the middleware answers itself; the rest are taken by handlers.
GENERIC = frozenset(
    {
        FaultKind.RATE_LIMIT,
        FaultKind.SERVER_ERROR,
        FaultKind.EMPTY_500,
        FaultKind.TIMEOUT,
        FaultKind.RESET,
        FaultKind.MALFORMED_JSON,
    }
)


@dataclass
class Fault:
    """One queued fault.

    ``route`` names the simulator route it applies to (``None``: any route). ``times`` is
    how many requests it answers. ``retry_after_s`` sets a ``Retry-After`` header on a 429;
    ``message_retry_s`` puts "Try again in N seconds." in the body instead or as well.
    ``delay_s`` is how long a timeout fault holds the request. ``record_indexes`` are the
    records a partial-errors fault rejects.
    """

    kind: FaultKind
    route: str | None = None
    times: int = 1
    status: int = 503
    retry_after_s: float | None = None
    message_retry_s: int | None = None
    delay_s: float = 30.0
    record_indexes: tuple[int, ...] = (0,)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Fault:
        values = dict(data)
        values["kind"] = FaultKind(values["kind"])
        if "record_indexes" in values:
            values["record_indexes"] = tuple(int(i) for i in values["record_indexes"])
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class FaultPlan:
    """The queue of faults of one simulator."""

    def __init__(self) -> None:
        self._queue: deque[Fault] = deque()

    def inject(self, kind: FaultKind | str, **params: Any) -> Fault:
        fault = Fault(kind=FaultKind(kind), **params)
        self._queue.append(fault)
        return fault

    def add(self, fault: Fault) -> None:
        self._queue.append(fault)

    def clear(self) -> None:
        self._queue.clear()

    @property
    def pending(self) -> list[Fault]:
        return list(self._queue)

    def take(self, route: str | None, kinds: frozenset[FaultKind]) -> Fault | None:
        """Consume one use of the first queued fault of ``kinds`` that matches ``route``."""
        for fault in self._queue:
            if fault.kind in kinds and fault.route in (None, route):
                fault.times -= 1
                if fault.times <= 0:
                    self._queue.remove(fault)
                return fault
        return None


@dataclass(frozen=True)
class RecordedRequest:
    """What a simulator received, for tests to assert on."""

    route: str | None
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    status: int | None = None
    fault: FaultKind | None = None

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Recorder:
    requests: list[RecordedRequest] = field(default_factory=list)

    def of(self, route: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.route == route]

    def clear(self) -> None:
        self.requests.clear()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _route_name(request: web.Request) -> str | None:
    return request.match_info.route.name


def reset_connection(request: web.Request) -> None:
    """Close the socket with a TCP RST, the way a load balancer drops a connection."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def answer_generic(request: web.Request, fault: Fault) -> web.StreamResponse:
    """The answer of a generic fault, shaped like the real service's error answers."""
    if fault.kind is FaultKind.RATE_LIMIT:
        wait = fault.message_retry_s if fault.message_retry_s is not None else 60
        headers = {}
        if fault.retry_after_s is not None:
            headers["Retry-After"] = f"{fault.retry_after_s:g}"
        body = {
            "statusCode": 429,
            "message": f"Rate limit is exceeded. Try again in {wait} seconds.",
        }
        return web.json_response(body, status=429, headers=headers, dumps=_dumps)
    if fault.kind is FaultKind.SERVER_ERROR:
        body = {"statusCode": fault.status, "message": "Internal server error"}
        return web.json_response(body, status=fault.status, dumps=_dumps)
    if fault.kind is FaultKind.EMPTY_500:
        return web.Response(status=500)
    if fault.kind is FaultKind.TIMEOUT:
        await asyncio.sleep(fault.delay_s)
        return web.Response(status=504)
    if fault.kind is FaultKind.MALFORMED_JSON:
        return web.Response(
            status=200, body=b'{"indicators": [{"id": "trunc', content_type="application/json"
        )
    reset_connection(request)
    raise ConnectionResetError("simulated reset")


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def fault_middleware(plan: FaultPlan, recorder: Recorder) -> Any:
    """Record every request, then answer it with a queued generic fault if one matches."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        body = await request.read()
        route = _route_name(request)
        fault = None if route is None or route.startswith("sim.") else plan.take(route, GENERIC)
        status: int | None = None
        try:
            if fault is not None:
                response = await answer_generic(request, fault)
            else:
                response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            if route is None or not route.startswith("sim."):
                recorder.requests.append(
                    RecordedRequest(
                        route=route,
                        method=request.method,
                        path=request.path,
                        query=dict(request.query),
                        headers=dict(request.headers),
                        body=body,
                        status=status,
                        fault=fault.kind if fault else None,
                    )
                )

    return middleware
