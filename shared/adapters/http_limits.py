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

The refusals are the pipeline's own errors, raised from inside the request so that whoever made
it meets them as they are: an answer too large is ``MalformedResponse``, a redirect
``UpstreamUnavailable`` (azure-core and azure-identity let them through untouched; each client
prefixes its own context). A body that does not end is cut by the request's own timeout, which
every client already turns into a retry. No message carries a body, a header or a URL's path or
query: a refused redirect names the target's scheme and host only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Final

import aiohttp
from yarl import URL

from shared.core.errors import MalformedResponse, UpstreamUnavailable

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
    stops at the limit in force: ``MalformedResponse`` saying so, the connection dropped."""

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
            raise MalformedResponse(_too_large(limit, f"it declared {declared} bytes"))
        chunks: list[bytes] = []
        received = 0
        async for chunk in self.content.iter_any():
            received += len(chunk)
            if received > limit:
                raise MalformedResponse(_too_large(limit, "refused at the limit"))
            chunks.append(chunk)
        return b"".join(chunks)


def _too_large(limit: int, seen: str) -> str:
    return f"answer larger than the {size(limit)} allowed ({seen})"


_NOT_A_REDIRECT: Final = 304  # "not modified": no target, nothing to follow


async def refuse_redirects(
    request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    """Session middleware: a redirect ends the request with ``UpstreamUnavailable``."""
    response = await handler(request)
    status = response.status
    if 300 <= status < 400 and status != _NOT_A_REDIRECT:
        target = _target(response.headers.get("Location"))
        response.close()
        raise UpstreamUnavailable(
            f"refused to follow a redirect (HTTP {status}) {target}", status=status
        )
    return response
