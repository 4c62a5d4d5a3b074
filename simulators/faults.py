"""Faults the simulators inject on demand, and the record of what they received.

A test (or `make demo`, over the ``/_sim/faults`` control route) queues faults; each request
to a matching route consumes one. Generic faults (429, 5xx, empty 500, a gateway's HTML error
page, timeout, reset, malformed JSON, and the hostile bodies of ``simulators.fault_bodies``: too
large, inflating, nested deep, one huge value, endless, a redirect to plain HTTP) are applied by
a middleware before the handler runs;
faults that only make sense inside a handler (partial record errors, an expired token, a
refusal of the whole upload) are taken by the handler.

The generic faults are worded the way each service words its own errors: a client is judged by
how it reads *that* service's 429 or truncated body, and a MATI-shaped error from the Entra
simulator would let a client pass that fails against the real Entra ID. A simulator installs its
:class:`FaultAnswers` under :data:`FAULT_ANSWERS` in its application; without one, the APIM-style
defaults below apply. The empty 500 and the gateway page are the same everywhere on purpose:
they come from the load balancers in front of a service, which know nothing of its error format.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Final

import orjson
from aiohttp import web

from simulators import fault_bodies
from simulators.fault_bodies import DEFAULT_CHUNK


class FaultKind(StrEnum):
    RATE_LIMIT = "rate_limit"
    SERVER_ERROR = "server_error"
    EMPTY_500 = "empty_500"
    GATEWAY_ERROR = "gateway_error"
    TIMEOUT = "timeout"
    RESET = "reset"
    MALFORMED_JSON = "malformed_json"
    PARTIAL_ERRORS = "partial_errors"
    EXPIRED_TOKEN = "expired_token"
    REJECT_ALL = "reject_all"
    REJECT_RECORDS = "reject_records"
    OVERSIZED_BODY = "oversized_body"
    INFLATING_BODY = "inflating_body"
    DEEP_JSON = "deep_json"
    HUGE_VALUE = "huge_value"
    ENDLESS_BODY = "endless_body"
    REDIRECT_PLAIN = "redirect_plain"


#: Faults the middleware answers itself; the rest are taken by handlers.
GENERIC = frozenset(
    {
        FaultKind.RATE_LIMIT,
        FaultKind.SERVER_ERROR,
        FaultKind.EMPTY_500,
        FaultKind.GATEWAY_ERROR,
        FaultKind.TIMEOUT,
        FaultKind.RESET,
        FaultKind.MALFORMED_JSON,
        FaultKind.OVERSIZED_BODY,
        FaultKind.INFLATING_BODY,
        FaultKind.DEEP_JSON,
        FaultKind.HUGE_VALUE,
        FaultKind.ENDLESS_BODY,
        FaultKind.REDIRECT_PLAIN,
    }
)


#: What a REJECT_ALL fault says by default: a change on Sentinel's side that refuses every
#: record alike, worded like its validation messages.
SCHEMA_CHANGED: Final = (
    "Error for Property=pattern_version: Required property is missing. Actual value: NULL."
)


@dataclass
class Fault:
    """One queued fault.

    ``route`` names the simulator route it applies to (``None``: any route). ``times`` is
    how many requests it answers. ``retry_after_s`` sets a ``Retry-After`` header on a 429;
    ``message_retry_s`` puts "Try again in N seconds." in the body instead or as well.
    ``status`` is the HTTP status of a server-error or gateway-error fault.
    ``delay_s`` is how long a timeout fault holds the request. ``record_indexes`` are the
    records a partial-errors fault rejects. ``after`` lets that many matching requests (those
    that reach this fault's check) pass untouched first, so a test can place a fault later in a
    sequence — e.g. a 401, then a 500, then another 401.

    ``message`` is what a refusal of the whole upload says: REJECT_ALL answers 400 with it in
    the API's own error envelope, for a cause every record shares (a schema change on
    Sentinel's side); with ``attributed`` the answer also lists ``errors[]`` naming every record,
    each with that same message. REJECT_RECORDS answers 400 naming only ``record_indexes``, each
    with a message of its own. Neither stores anything.

    The hostile bodies (``simulators.fault_bodies``) answer ``answer_status`` (200 unless told),
    shaped like the route's success answer. ``size_bytes`` is how large OVERSIZED_BODY is (its
    length declared) and INFLATING_BODY inflates to (gzip), and how long HUGE_VALUE's one string
    is; 0 takes the kind's default. DEEP_JSON nests one value ``depth`` arrays deep.
    ENDLESS_BODY sends ``chunk_bytes`` every ``interval_s`` until the client hangs up.
    REDIRECT_PLAIN answers ``redirect_status`` with ``location``, by default the request's own
    URL over plain http. Each adds what it wrote to ``sent_bytes`` and sets ``ended`` once its
    answer is over, the client gone included.
    """

    kind: FaultKind
    route: str | None = None
    times: int = 1
    status: int = 503
    retry_after_s: float | None = None
    message_retry_s: int | None = None
    delay_s: float = 30.0
    record_indexes: tuple[int, ...] = (0,)
    after: int = 0
    message: str = SCHEMA_CHANGED
    attributed: bool = False
    answer_status: int = 200
    size_bytes: int = 0
    depth: int = 5000
    chunk_bytes: int = DEFAULT_CHUNK
    interval_s: float = 0.0
    redirect_status: int = 302
    location: str | None = None
    sent_bytes: int = 0
    ended: bool = False

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
                if fault.after > 0:
                    fault.after -= 1
                    continue
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


async def noting_status(
    request: web.Request, handler: Handler, note: Callable[[int | None], None]
) -> web.StreamResponse:
    """``handler(request)``, then ``note`` the status it went out with however it ended: an
    HTTP exception's own status, or None when there was no answer (a reset). Request logs
    count what a client sent, so a request whose answer failed is noted all the same."""
    status: int | None = None
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        note(status)


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


class FaultAnswers:
    """How one service answers the generic faults; subclass per service where its errors differ.

    The defaults are the APIM-style bodies (``{"statusCode", "message"}``) Sentinel documents.
    ``malformed_body`` is what MALFORMED_JSON answers with HTTP 200: the start of *this*
    service's success body cut off mid-value, so it is invalid JSON that looks like the real
    thing up to the cut.
    """

    def __init__(self, malformed_body: bytes = b'{"value": [{"id": "trunc') -> None:
        self.malformed_body = malformed_body

    def rate_limited(self, request: web.Request, fault: Fault) -> web.StreamResponse:
        wait = fault.message_retry_s if fault.message_retry_s is not None else 60
        body = {
            "statusCode": 429,
            "message": f"Rate limit is exceeded. Try again in {wait} seconds.",
        }
        return web.json_response(body, status=429, headers=retry_after_header(fault), dumps=_dumps)

    def server_error(self, request: web.Request, fault: Fault) -> web.StreamResponse:
        body = {"statusCode": fault.status, "message": "Internal server error"}
        return web.json_response(body, status=fault.status, dumps=_dumps)

    def malformed(self, request: web.Request, fault: Fault) -> web.StreamResponse:
        return web.Response(status=200, body=self.malformed_body, content_type="application/json")


#: Where a simulator's application keeps its :class:`FaultAnswers`.
FAULT_ANSWERS: Final = web.AppKey("sim.fault_answers", FaultAnswers)
_DEFAULT_ANSWERS: Final = FaultAnswers()


def retry_after_header(fault: Fault) -> dict[str, str]:
    """The ``Retry-After`` header a rate-limit fault asks for (none unless ``retry_after_s``)."""
    if fault.retry_after_s is None:
        return {}
    return {"Retry-After": f"{fault.retry_after_s:g}"}


async def answer_generic(
    request: web.Request, fault: Fault, answers: FaultAnswers = _DEFAULT_ANSWERS
) -> web.StreamResponse:
    """The answer of a generic fault, shaped like the real service's error answers."""
    if fault.kind is FaultKind.RATE_LIMIT:
        return answers.rate_limited(request, fault)
    if fault.kind is FaultKind.SERVER_ERROR:
        return answers.server_error(request, fault)
    if fault.kind is FaultKind.EMPTY_500:
        # What load balancers and gateways send in front of any service: no body at all.
        return web.Response(status=500)
    if fault.kind is FaultKind.GATEWAY_ERROR:
        return web.Response(
            status=fault.status, text=_gateway_page(fault.status), content_type="text/html"
        )
    if fault.kind is FaultKind.TIMEOUT:
        await asyncio.sleep(fault.delay_s)
        return web.Response(status=504)
    if fault.kind is FaultKind.MALFORMED_JSON:
        return answers.malformed(request, fault)
    hostile = _HOSTILE.get(fault.kind)
    if hostile is not None:
        return await hostile(request, fault)
    reset_connection(request)
    raise ConnectionResetError("simulated reset")


#: The hostile bodies' answers (``simulators.fault_bodies``), by kind.
_HOSTILE: Final[
    Mapping[FaultKind, Callable[[web.Request, Fault], Awaitable[web.StreamResponse]]]
] = {
    FaultKind.OVERSIZED_BODY: fault_bodies.oversized,
    FaultKind.INFLATING_BODY: fault_bodies.inflating,
    FaultKind.ENDLESS_BODY: fault_bodies.endless,
    FaultKind.DEEP_JSON: fault_bodies.deep,
    FaultKind.HUGE_VALUE: fault_bodies.huge,
    FaultKind.REDIRECT_PLAIN: fault_bodies.redirect,
}


def _gateway_page(status: int) -> str:
    """The HTML error page a reverse proxy (nginx here) answers with in front of any service."""
    reasons = {429: "Too Many Requests", 502: "Bad Gateway", 503: "Service Temporarily Unavailable"}
    title = f"{status} {reasons.get(status, 'Gateway Error')}"
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def fault_middleware(plan: FaultPlan, recorder: Recorder) -> Any:
    """Record every request, then answer it with a queued generic fault if one matches."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        body = await request.read()
        route = _route_name(request)
        internal = route is not None and route.startswith("sim.")
        fault = None if route is None or internal else plan.take(route, GENERIC)
        answer = handler
        if fault is not None:
            answers = request.app.get(FAULT_ANSWERS, _DEFAULT_ANSWERS)
            answer = functools.partial(answer_generic, fault=fault, answers=answers)

        def note(status: int | None) -> None:
            if not internal:
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

        return await noting_status(request, answer, note)

    return middleware
