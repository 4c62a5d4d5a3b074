"""What a peer may make us read, and where it may send us: the bounds of the shared session.

Every answer any client reads through ``shared.adapters.http.open_session`` — MATI's, Sentinel's,
and azure-identity's token answers, whose transport uses the same session — is read by
:class:`BoundedResponse`: at most the limit in force, counted in *decompressed* bytes as they
arrive (aiohttp inflates gzip/deflate in bounded steps before the body reaches the reader), so a
page too large, a compression bomb or a body that never ends is refused as it crosses the limit,
never after it was held whole. The connection is dropped at once: the rest is never read.

The limit is the caller's, set with :func:`body_limit` around its request (a context variable,
read in the task that reads the body); without one, :data:`DEFAULT_MAX_BODY` applies. Each limit
is a generous multiple of the largest answer the specs allow that client:

- a MATI page of the most records a query may ask (1,000) is 3-6 MB (a record is 3-5 KB with
  its warning-list flags, specs/mati-api-v4.md §3.1, §5); :data:`MATI_MAX_BODY` is five times
  that, and a page that size, decoded (about three times the bytes), still fits the fetcher's
  512 MiB with room to spare;
- a token answer (MATI's ``/token``, Entra ID's, specs/sentinel-and-entra.md §5.1) is a JWT of
  a few KB in a small envelope, an error a few hundred bytes: :data:`TOKEN_MAX_BODY`;
- a Sentinel upload answer is empty, or ``errors[]`` naming at most the 100 records of the
  request with a few messages each (§1.4, §2.3), some tens of KB: :data:`SENTINEL_MAX_BODY`;
- anything else (Log Analytics answers, which the service caps at 64 MiB): the default.

**Redirects are refused, all of them.** None of the APIs we call redirects (the specs show none),
so a redirect is a wrong base URL, a captive portal or an interception, and following it could
carry a bearer token, a client secret or a MATI key to whoever answered, or downgrade to plain
HTTP. :func:`refuse_redirects` is a session middleware, so it sees every hop, azure-core's
requests included: azure-core asks aiohttp not to follow and runs its own ``RedirectPolicy``
(Log Analytics' pipeline has one), which therefore never receives a redirect to follow.

The refusals are aiohttp exceptions (a payload error, a server timeout, a client error), so every
caller that already handles aiohttp's failures (azure-core's transport included) handles these;
the clients turn them into the pipeline's errors with the reason. No message carries a body, a
header or a URL's path or query: a refused redirect names the target's scheme and host only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Final

import aiohttp
from yarl import URL

KIB: Final = 1024
MIB: Final = 1024 * KIB

MATI_MAX_BODY: Final = 32 * MIB
TOKEN_MAX_BODY: Final = 256 * KIB
SENTINEL_MAX_BODY: Final = 1 * MIB
DEFAULT_MAX_BODY: Final = 128 * MIB

_limit: ContextVar[int] = ContextVar("mati2sentinel_body_limit", default=DEFAULT_MAX_BODY)


@contextlib.contextmanager
def body_limit(max_bytes: int) -> Iterator[None]:
    """Read no answer larger than ``max_bytes`` (decompressed) within this block."""
    if max_bytes < 1:
        raise ValueError("max_bytes must be at least 1")
    token = _limit.set(max_bytes)
    try:
        yield
    finally:
        _limit.reset(token)


def size(n: int) -> str:
    """``n`` bytes for a message: "32 MiB", "256 KiB", "1500 bytes"."""
    for unit, scale in (("MiB", MIB), ("KiB", KIB)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} bytes"


class BodyTooLarge(aiohttp.ClientPayloadError):
    """An answer larger than the limit in force; refused unread past the limit."""

    def __init__(self, limit: int, *, declared: int | None = None) -> None:
        seen = f"it declared {declared} bytes" if declared is not None else "refused at the limit"
        super().__init__(f"answer larger than the {size(limit)} allowed ({seen})")
        self.limit = limit
        self.declared = declared


class BodyTooSlow(aiohttp.ServerTimeoutError):
    """An answer whose body did not end within the request's time: a stall or a trickle."""

    def __init__(self, received: int) -> None:
        super().__init__(f"answer body did not end in time ({received} bytes received)")
        self.received = received


class RedirectRefused(aiohttp.ClientError):
    """A 3xx answer: never followed (module docstring)."""

    def __init__(self, status: int, location: str | None) -> None:
        super().__init__(f"refused to follow a redirect (HTTP {status}) {_target(location)}")
        self.status = status


def _target(location: str | None) -> str:
    """Where a redirect pointed, as scheme and host only: a path or query may carry anything."""
    if not location:
        return "without a location"
    try:
        url = URL(location)
    except ValueError:
        return "to an unreadable location"
    if not url.is_absolute():
        return "to another path on the same host"
    plain = " (plain http)" if url.scheme == "http" else ""
    return f"to {url.scheme}://{url.host_port_subcomponent or ''}{plain}"


class BoundedResponse(aiohttp.ClientResponse):
    """The session's response class: ``read()`` (and ``text()``/``json()``, which use it)
    stops at the limit in force and names why it stopped."""

    async def read(self) -> bytes:
        if self._body is None:
            try:
                # The base ``read`` returns a body already set, then releases the connection
                # as it always does: only the reading itself is ours.
                self._body = await self._read_bounded(_limit.get())
            except BaseException:
                self.close()  # drop the connection: the rest of the body is never read
                raise
        return await super().read()

    async def _read_bounded(self, limit: int) -> bytes:
        declared = self.content_length
        if declared is not None and declared > limit:
            raise BodyTooLarge(limit, declared=declared)
        chunks: list[bytes] = []
        received = 0
        try:
            async for chunk in self.content.iter_any():
                received += len(chunk)
                if received > limit:
                    raise BodyTooLarge(limit)
                chunks.append(chunk)
        except TimeoutError as exc:  # the request's own timeouts, met while the body arrived
            raise BodyTooSlow(received) from exc
        return b"".join(chunks)


_NOT_A_REDIRECT: Final = 304  # "not modified": no target, nothing to follow


async def refuse_redirects(
    request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    """Session middleware: a redirect ends the request with :class:`RedirectRefused`."""
    response = await handler(request)
    if 300 <= response.status < 400 and response.status != _NOT_A_REDIRECT:
        location = response.headers.get("Location")
        response.close()
        raise RedirectRefused(response.status, location)
    return response
