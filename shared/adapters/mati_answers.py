"""What an answer of the MATI API means: a result, a failure worth repeating (``Retry``), or an
error of the pipeline's tree; and the error a repeated failure becomes once the back-off
policy gives up (specs/mati-api-v4.md §11).

Kept apart from the client so the meaning of every status can be read (and tested) without
the paging, token and pacing machinery around it. Messages quoted from the server pass
``peer_message``, which clips them and strikes out the secrets it is given.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import orjson
from multidict import CIMultiDictProxy

from shared.adapters.http import peer_message
from shared.core.backoff import parse_retry_after
from shared.core.errors import (
    MalformedResponse,
    PagingInterrupted,
    PipelineError,
    QueryRejected,
    RateLimited,
    TlsVerificationFailed,
    UpstreamUnavailable,
)


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    headers: CIMultiDictProxy[str]


class Retry(Exception):
    """One failed attempt that may succeed if repeated; internal to the client's retry loop."""

    def __init__(
        self,
        reason: str,
        *,
        kind: Literal["unavailable", "rate_limited", "malformed"] = "unavailable",
        status: int | None = None,
        server_wait_s: float | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
        self.status = status
        self.server_wait_s = server_wait_s


def failure(answer: Answer, message: Callable[[], str], *, follow_up: bool) -> Exception:
    """The error a non-2xx, non-auth answer means (a ``Retry`` when it may pass). ``message``
    reads the server's own words, only for the answers that quote them."""
    status = answer.status
    if status == 429:
        wait = parse_retry_after(answer.headers.get("Retry-After"))
        return Retry("rate limited (HTTP 429)", kind="rate_limited", status=429, server_wait_s=wait)
    if status == 408 or status >= 500:
        return Retry(f"HTTP {status}", status=status)
    if status == 400 and follow_up:
        return PagingInterrupted(
            f"MATI no longer honours the paging cursor (HTTP 400: {message()}); "
            "restart the window from the checkpoint"
        )
    return QueryRejected(f"MATI rejected the request (HTTP {status}): {message()}", status=status)


def unanswered(exc: aiohttp.ClientError | TimeoutError) -> Exception:
    """What a request that got no answer means: a timeout or a dropped connection is worth
    asking again; a refused TLS handshake is not."""
    if isinstance(exc, TimeoutError):
        return Retry("timed out")
    if isinstance(exc, aiohttp.ClientSSLError):
        # The handshake refused the server. A connection merely dropped mid-handshake is a
        # plain ClientConnectorError (a reset), retried below.
        return TlsVerificationFailed(
            f"TLS verification of MATI ({exc.host}) failed: {type(exc.os_error).__name__}"
            f" ({ssl_reason(exc.os_error)})"
        )
    return Retry(f"connection failed ({type(exc).__name__})")


def refused(exc: MalformedResponse | UpstreamUnavailable, request: str) -> PipelineError:
    """An answer the session refused to read (``shared.adapters.http_limits``), as MATI's
    ``request`` ("GET /v4/indicator"). Not asked for again: the same request would bring the
    same answer as large, and a redirect is a wrong base URL or an interception, which no retry
    within seconds fixes; the fetcher's next sync asks again from its checkpoint."""
    if isinstance(exc, UpstreamUnavailable):
        return UpstreamUnavailable(f"MATI {request}: {exc}", status=exc.status)
    return MalformedResponse(f"MATI {request}: {exc}")


def message(answer: Answer, secrets: tuple[str, ...]) -> str:
    """The server's own words about ``answer``, clipped, with ``secrets`` struck out."""
    return peer_message(answer.body, secrets=secrets) or "no message"


def decode(answer: Answer) -> Any:
    """The JSON body; a body that does not decode is worth asking for again. orjson's reason
    ("depth limit exceeded", "unexpected character"…) names a place, never the content."""
    try:
        return orjson.loads(answer.body)
    except orjson.JSONDecodeError as exc:
        raise Retry(
            f"undecodable JSON body ({len(answer.body)} bytes: {exc})",
            kind="malformed",
            status=answer.status,
        ) from exc


def check_encodable(record: dict[str, Any]) -> None:
    """Refuse a looked-up ``record`` that cannot be written as JSON again: orjson reads 1,024
    levels of nesting but writes only 254, and the operator commands that look a record up
    show it and derive its message from it. ``MalformedResponse`` naming its id, at once.

    A page's records are not checked here: the fetcher publishes a stand-in for such a record
    (``shared.core.record_bounds``), so it costs that record and never its page."""
    try:
        orjson.dumps(record)
    except orjson.JSONEncodeError:
        known = record.get("id")
        named = f" (id {known[:_MAX_ID_CHARS]!r})" if isinstance(known, str) else ""
        raise MalformedResponse(
            f"MATI GET /v4/indicator/{{…}}: the record is nested too deep to show{named}"
        ) from None


#: How much of a record's id a message quotes (real ids are about 45 characters).
_MAX_ID_CHARS = 100


def exhausted(what: str, retry: Retry, failures: int) -> Exception:
    """The error a failure still repeating after ``failures`` attempts stands for."""
    text = f"MATI {what}: {retry.reason} after {failures} attempt(s)"
    if retry.kind == "rate_limited":
        return RateLimited(
            text, retry_after_s=retry.server_wait_s if retry.server_wait_s is not None else 60.0
        )
    if retry.kind == "malformed":
        return MalformedResponse(text)
    return UpstreamUnavailable(text, status=retry.status)


def ssl_reason(error: OSError) -> str:
    """The short reason OpenSSL gave ("CERTIFICATE_VERIFY_FAILED…"), never a payload."""
    reason = getattr(error, "verify_message", None) or getattr(error, "reason", None)
    return str(reason or "no reason given")


def seconds(value: Any) -> float | None:
    """A non-negative finite number of seconds from JSON (int, float or numeric string)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = float(value)
        except ValueError:
            return None
    else:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
