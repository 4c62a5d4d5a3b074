"""The answers of the faults that test how much of a body a client reads, and where it lets a
peer send it: bodies too large (declared, or compressed to inflate past any limit), nested
thousands deep, holding one value of megabytes, or never ending; and a redirect to plain HTTP.

Each body is shaped like the route's own success answer, so a client that reads it cannot tell
it from a real one until the size, the depth or the time gives it away: a MATI page of records,
a token answer, Sentinel's ``errors[]``, and ``{"value": [...]}`` for any other route. Large
bodies are written as they are sent, never built whole: the simulator shares the process of a
test that measures the client's memory, and what a client refuses to read is never generated.
Every fault counts the bytes it put on the wire (``Fault.sent_bytes``) and says when its answer
ended (``Fault.ended``), so a test can tell that a client hung up near its limit.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from aiohttp import web

if TYPE_CHECKING:
    from simulators.faults import Fault

KIB: Final = 1024
MIB: Final = 1024 * KIB
#: OVERSIZED_BODY and INFLATING_BODY, unless told: past any limit a client could mean to allow.
DEFAULT_OVERSIZE: Final = 256 * MIB
#: HUGE_VALUE, unless told: a value no field of any of these APIs comes near.
DEFAULT_HUGE_VALUE: Final = 4 * MIB
#: How much of a streamed body goes out per write.
DEFAULT_CHUNK: Final = 64 * KIB
_JSON: Final = {"Content-Type": "application/json"}


@dataclass(frozen=True, slots=True)
class Shape:
    """A route's success answer as a skeleton: a list (``open``, ``item(n)`` for n = 0, 1, …
    joined by ``sep``, ``close``) for the bodies made large by count, and a slot for one JSON
    value (``before`` value ``after``) for the ones made large or deep by a single value.
    Every ``item(n)`` is the same length, so a body's length is known before it is written."""

    open: bytes
    item: Callable[[int], bytes]
    close: bytes
    before: bytes
    after: bytes
    sep: bytes = b","

    def count_for(self, size: int) -> int:
        """How many items make the body at least ``size`` bytes."""
        room = size - len(self.open) - len(self.close) + len(self.sep)
        return max(1, math.ceil(room / (len(self.item(0)) + len(self.sep))))

    def length(self, count: int) -> int:
        items = count * len(self.item(0)) + (count - 1) * len(self.sep)
        return len(self.open) + items + len(self.close)

    def chunks(self, count: int | None, chunk_bytes: int) -> Iterator[bytes]:
        """The body in pieces of about ``chunk_bytes``; never closed when ``count`` is None."""
        pending = [self.open]
        held = len(self.open)
        numbers: Iterable[int] = itertools.count() if count is None else range(count)
        for n in numbers:
            piece = (self.sep if n else b"") + self.item(n)
            pending.append(piece)
            held += len(piece)
            if held >= chunk_bytes:
                yield b"".join(pending)
                pending, held = [], 0
        pending.append(self.close)
        yield b"".join(pending)


def _stamp() -> bytes:
    now = datetime.now(UTC)
    return f"{now:%Y-%m-%dT%H:%M:%S}.{now.microsecond // 1000:03d}".encode()


def _mati_record(n: int, stamp: bytes, *, value: bytes | None = None) -> bytes:
    """A MATI url record (spec §5) that every parser takes; ``value`` replaces its value."""
    number = b"%012d" % n
    shown = value if value is not None else b'"https://oversized.example/' + number + b'"'
    return (
        b'{"id":"url--00000000-0000-5000-8000-' + number + b'","mscore":95,"type":"url",'
        b'"value":'
        + shown
        + b',"is_publishable":true,"sources":[{"first_seen":"'
        + stamp
        + b'+0000","last_seen":"'
        + stamp
        + b'+0000","osint":false,'
        b'"category":["malware"],"source_name":"Mandiant"}],"threat_rating":'
        b'{"threat_score":95},"category":["malware"],"last_updated":"' + stamp + b'Z",'
        b'"first_seen":"' + stamp + b'Z","last_seen":"' + stamp + b'Z"}'
    )


def _mati_page() -> Shape:
    stamp = _stamp()
    # The value slot is the value of a record between two ordinary ones.
    slot = _mati_record(999_999_999_999, stamp, value=b"\x00").split(b"\x00")
    return Shape(
        open=b'{"indicators":[',
        item=lambda n: _mati_record(n, stamp),
        close=b"]}",
        before=b'{"indicators":[' + _mati_record(0, stamp) + b"," + slot[0],
        after=slot[1] + b"," + _mati_record(1, stamp) + b"]}",
    )


def _token_answer() -> Shape:
    """MATI's and Entra ID's token answers alike: a bearer token in a small envelope."""
    envelope = b'{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":'
    return Shape(
        open=envelope + b'"eyJ',
        item=lambda n: b"QUFB" * 256,
        close=b'"}',
        before=envelope,
        after=b"}",
        sep=b"",
    )


def _sentinel_errors() -> Shape:
    message = b'"Error for Property=pattern: Required property is missing. Actual value: NULL."'
    return Shape(
        open=b'{"errors":[',
        item=lambda n: b'{"recordIndex":%d,"errorMessages":[%s]}' % (n % 10, message),
        close=b"]}",
        before=b'{"errors":[{"recordIndex":0,"errorMessages":[',
        after=b"]}]}",
    )


def _any_route() -> Shape:
    return Shape(
        open=b'{"value":[',
        item=lambda n: b'{"n":%012d}' % n,
        close=b"]}",
        before=b'{"value":',
        after=b"}",
    )


#: Shapes by route name (``simulators.mati``, ``.entra``, ``.sentinel_api``); names are repeated
#: here because those modules import this one.
_SHAPES: Final[Mapping[str, Callable[[], Shape]]] = {
    "indicator": _mati_page,
    "token": _token_answer,
    "token_v1": _token_answer,
    "stix_upload": _sentinel_errors,
    "legacy_upload": _sentinel_errors,
}


def shape_of(request: web.Request) -> Shape:
    return _SHAPES.get(request.match_info.route.name or "", _any_route)()


async def oversized(request: web.Request, fault: Fault) -> web.StreamResponse:
    """A complete, valid body of at least ``size_bytes``, its length declared up front."""
    shape = shape_of(request)
    count = shape.count_for(fault.size_bytes or DEFAULT_OVERSIZE)
    chunks = shape.chunks(count, fault.chunk_bytes)
    return await _stream(request, fault, chunks, length=shape.length(count))


async def inflating(request: web.Request, fault: Fault) -> web.StreamResponse:
    """A gzip body of a few KB per inflated MiB, inflating to at least ``size_bytes`` of valid
    JSON: the same item over and over, so it compresses about a thousand to one."""
    shape = shape_of(request)
    same = replace(shape, item=lambda n: shape.item(0))
    chunks = same.chunks(same.count_for(fault.size_bytes or DEFAULT_OVERSIZE), DEFAULT_CHUNK)
    return await _stream(request, fault, _gzipped(chunks), headers={"Content-Encoding": "gzip"})


async def endless(request: web.Request, fault: Fault) -> web.StreamResponse:
    """The start of a valid body, then items for ever: ``chunk_bytes`` every ``interval_s``."""
    chunks = shape_of(request).chunks(None, fault.chunk_bytes)
    return await _stream(request, fault, chunks)


async def deep(request: web.Request, fault: Fault) -> web.StreamResponse:
    """The route's answer with one value nested ``depth`` arrays deep."""
    shape = shape_of(request)
    nested = b"[" * fault.depth + b"]" * fault.depth
    return _whole(fault, shape.before + nested + shape.after)


async def huge(request: web.Request, fault: Fault) -> web.StreamResponse:
    """The route's answer with one string value of ``size_bytes`` characters."""
    shape = shape_of(request)
    value = b'"' + b"A" * (fault.size_bytes or DEFAULT_HUGE_VALUE) + b'"'
    return _whole(fault, shape.before + value + shape.after)


async def redirect(request: web.Request, fault: Fault) -> web.StreamResponse:
    """A redirect to ``location``, by default the same URL over plain HTTP."""
    status = fault.redirect_status if 300 <= fault.redirect_status < 400 else 302
    location = fault.location or f"http://{request.host}{request.path_qs}"
    fault.ended = True
    return web.Response(status=status, headers={"Location": location})


def _whole(fault: Fault, body: bytes) -> web.Response:
    fault.sent_bytes += len(body)
    fault.ended = True
    return web.Response(status=fault.answer_status, body=body, headers=_JSON)


def _gzipped(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """``chunks`` compressed as they are asked for (a gzip member, RFC 1952)."""
    zipper = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    for chunk in chunks:
        out = zipper.compress(chunk)
        if out:
            yield out
    yield zipper.flush()


async def _stream(
    request: web.Request,
    fault: Fault,
    chunks: Iterable[bytes],
    *,
    length: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    """Write ``chunks`` until they end or the client hangs up, counting what went out."""
    response = web.StreamResponse(status=fault.answer_status, headers={**_JSON, **(headers or {})})
    if length is not None:
        response.content_length = length
    try:
        await response.prepare(request)
        for chunk in chunks:
            await response.write(chunk)
            fault.sent_bytes += len(chunk)
            # Always yield: a TLS transport whose peer is gone takes writes without pushing
            # back, and only the event loop running its ``connection_lost`` ends this loop.
            await asyncio.sleep(fault.interval_s)
        await response.write_eof()
    except ConnectionError:
        pass  # the client hung up: what it was sent is counted, which is the point
    finally:
        fault.ended = True
    return response
