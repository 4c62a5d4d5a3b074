"""The Sentinel threat-intelligence upload adapter: one request, one honest answer.

Two APIs (specs/sentinel-and-entra.md §1, §2; DESIGN.md §6), chosen by a setting:

- ``stix-objects`` (default): ``POST {base}/workspaces/{ws}/threat-intelligence-stix-objects:upload
  ?api-version=2024-02-01-preview`` with ``{"sourcesystem", "stixobjects"}``;
- ``upload-indicators`` (legacy, the vendor's choice): ``POST {base}/{ws}/threatintelligence:
  upload-indicators?api-version=2022-07-01`` with ``{"sourcesystem", "value"}``.

**A single attempt, by design.** Sentinel's quota (100 requests a minute) belongs to the
identity, shared by every uploader replica; when one replica is told to wait, all of them must
pause together (a shared pause key), and when the network fails the batch's message locks must
be renewed while waiting. Only the uploader service can do either, so this client reports what
happened — ``RateLimited(retry_after_s)``, ``UpstreamUnavailable`` — and never sleeps.

The one exception is authentication: a 401/403 usually means the cached token went stale
(revoked, rotated, cut short), so the client asks the ``TokenProvider`` for a *new* token and
tries once more; a second refusal is ``AuthenticationFailed`` (DESIGN.md §4: refresh once, then
open the circuit).

Per-record outcomes: HTTP 200 means "at least one record was published"; records Sentinel refused
are listed in ``errors[]`` by 0-based ``recordIndex`` with the messages under ``errorMessages``
(the docs) or ``validationErrorMessages`` (the swagger) — both are read. An empty body means every
record was accepted; a body that is JSON but not an object (``[]``, ``"x"``, ``null``) is
``MalformedResponse``, because it might be a refusal we cannot attribute, and no record may pass
on a guess.

A 400 refuses the whole request (nothing stored). When its body also lists ``errors[]`` naming
records of the request (what Sentinel may send when every record fails validation, and what
the simulator sends), ``BatchRejected.records`` carries them with their messages, so the
uploader dead-letters exactly those; without such a list the answer does not say which record
is at fault, and ``records`` is empty.

A TLS handshake that refuses Sentinel's certificate is ``TlsVerificationFailed`` (fatal, no
retry): a certificate does not fix itself, and a retried "outage" would hide a missing CA or an
intercepting proxy from the operator.

**Answers we refuse to read** (``shared.adapters.http_limits``): larger than ``max_body_bytes``
(counted decompressed) is ``MalformedResponse``; a redirect (never followed: the token goes
nowhere else) is ``UpstreamUnavailable``, like a body that does not end in time. The uploader
retries them and keeps the batch, never dead-letters it: such an answer says nothing about the
records (Sentinel may have stored them; the ids are deterministic, so sending them again is
harmless).

Nothing secret (the bearer token) ever reaches an exception message or a log line.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeAlias
from urllib.parse import quote

import aiohttp
import orjson

from shared.adapters import http_limits as limits
from shared.adapters.http import json_text, peer_message, redact
from shared.core.backoff import parse_retry_after, parse_try_again_text
from shared.core.errors import (
    AuthenticationFailed,
    BatchRejected,
    DestinationNotFound,
    MalformedResponse,
    RateLimited,
    RecordError,
    TlsVerificationFailed,
    UpstreamUnavailable,
)
from shared.core.events import get_logger
from shared.core.stix import MAX_OBJECTS_PER_REQUEST, SentinelApi, check_source_system, upload_body

__all__ = [
    "DEFAULT_SCOPE",
    "MAX_OBJECTS",
    "RecordError",
    "RequestObserver",
    "SentinelApi",
    "SentinelClient",
    "UploadResult",
]

log = get_logger(__name__)

#: Objects per request, both APIs (§1.4, §2.3).
MAX_OBJECTS: Final = MAX_OBJECTS_PER_REQUEST
DEFAULT_SCOPE: Final = "https://management.azure.com/.default"
DEFAULT_SOURCE_SYSTEM: Final = "Mandiant Threat Intelligence"
#: When a 429 says neither in a header nor in its text how long to wait (§1.6).
DEFAULT_RETRY_AFTER_S: Final = 60.0
_AUTH_STATUSES: Final = frozenset({401, 403})
_ERROR_KEYS: Final = ("errorMessages", "validationErrorMessages")


DEFAULT_BASE_URLS: Final = {
    SentinelApi.STIX_OBJECTS: "https://api.ti.sentinel.azure.com",
    SentinelApi.UPLOAD_INDICATORS: "https://sentinelus.azure-api.net",
}


#: Told of every ``upload`` call: ``(seconds it took, outcome)``; the outcome is one of
#: ``accepted``, ``partial``, ``rate_limited``, ``unavailable``, ``malformed``, ``rejected``,
#: ``auth``, ``not_found``, ``tls``, ``cancelled``, ``error``. It feeds the upload-latency
#: histogram (shared.telemetry.metrics).
RequestObserver: TypeAlias = Callable[[float, str], None]
_request_observers: list[RequestObserver] = []


def observe_requests(observer: RequestObserver) -> Callable[[], None]:
    """Call ``observer`` after every ``SentinelClient.upload`` in this process (the uploader
    builds its client itself, so the hook is process-wide); returns the function that stops
    it."""
    _request_observers.append(observer)

    def remove() -> None:
        if observer in _request_observers:
            _request_observers.remove(observer)

    return remove


_OUTCOMES: Final[tuple[tuple[type[Exception], str], ...]] = (
    (RateLimited, "rate_limited"),
    (UpstreamUnavailable, "unavailable"),
    (MalformedResponse, "malformed"),
    (BatchRejected, "rejected"),
    (AuthenticationFailed, "auth"),
    (DestinationNotFound, "not_found"),
    (TlsVerificationFailed, "tls"),
)


def _outcome(result: UploadResult | None, error: BaseException | None) -> str:
    if result is not None:
        return "partial" if result.rejected else "accepted"
    if not isinstance(error, Exception):
        return "cancelled"  # the uploader stopped while the request was out
    for kind, name in _OUTCOMES:
        if isinstance(error, kind):
            return name
    return "error"


def _observed(seconds: float, outcome: str, extra: RequestObserver | None) -> None:
    """Observers are telemetry: one that fails must never fail the upload it was told of."""
    for observer in [*_request_observers, *([extra] if extra else [])]:
        try:
            observer(seconds, outcome)
        except Exception:  # telemetry must not break the pipeline
            log.exception("sentinel.observer_failed")


class Tokens(Protocol):
    """What the client needs from ``shared.adapters.credentials.TokenProvider``."""

    async def token(self, scope: str) -> str: ...

    async def refresh(self, scope: str) -> str: ...


@dataclass(frozen=True, slots=True)
class UploadResult:
    """What Sentinel did with each record of one request (indexes into the request's list)."""

    accepted: tuple[int, ...]
    rejected: tuple[RecordError, ...]


class SentinelClient:
    """Uploads up to 100 STIX objects per call to one workspace, through one API."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        tokens: Tokens,
        *,
        api: SentinelApi | str = SentinelApi.STIX_OBJECTS,
        base_url: str | None = None,
        workspace_id: str,
        source_system: str = DEFAULT_SOURCE_SYSTEM,
        scope: str = DEFAULT_SCOPE,
        on_request: RequestObserver | None = None,
        max_body_bytes: int = limits.SENTINEL_MAX_BODY,
    ) -> None:
        self._api = SentinelApi(api)
        self._on_request = on_request
        base = (base_url or DEFAULT_BASE_URLS[self._api]).rstrip("/")
        if not base.startswith("https://"):
            raise ValueError("base_url must be an https:// URL")
        if not workspace_id:
            raise ValueError("workspace_id is required")
        if max_body_bytes < 1:
            raise ValueError("max_body_bytes must be at least 1")
        self._max_body = max_body_bytes
        problem = check_source_system(source_system)
        if problem is not None:
            raise ValueError(problem)
        self._session = session
        self._tokens = tokens
        self._scope = scope
        self._source_system = source_system
        # The workspace id is quoted so a malformed setting can never change the path.
        workspace = quote(workspace_id, safe="")
        if self._api is SentinelApi.STIX_OBJECTS:
            self._url = (
                f"{base}/workspaces/{workspace}/threat-intelligence-stix-objects:upload"
                "?api-version=2024-02-01-preview"
            )
        else:
            self._url = (
                f"{base}/{workspace}/threatintelligence:upload-indicators?api-version=2022-07-01"
            )

    @property
    def api(self) -> SentinelApi:
        return self._api

    @property
    def url(self) -> str:
        """The upload URL (no credential in it: safe to log)."""
        return self._url

    def __repr__(self) -> str:
        return f"SentinelClient(api={self._api.value!r}, url={self._url!r})"

    def body(self, objects: Sequence[Mapping[str, Any]]) -> bytes:
        """The request body for ``objects`` (``shared.core.stix.upload_body``: ``sourcesystem`` plus
        the API's list key); ``ValueError`` for an empty list or more than 100 objects."""
        return orjson.dumps(upload_body(self._api, self._source_system, objects))

    async def upload(self, objects: Sequence[Mapping[str, Any]]) -> UploadResult:
        """Upload ``objects`` once and say which records Sentinel accepted and refused.

        Raises ``RateLimited``, ``UpstreamUnavailable`` (retry the same batch later),
        ``BatchRejected`` (the request itself is refused; ``records`` names the records at
        fault when the answer does),
        ``AuthenticationFailed`` / ``DestinationNotFound`` (stop and alert),
        ``MalformedResponse`` (an answer we cannot attribute to records).
        Every call, whatever its end, is timed for the request observers.
        """
        started = time.monotonic()
        result: UploadResult | None = None
        error: BaseException | None = None
        try:
            result = await self._upload(objects)
        except BaseException as exc:
            error = exc
            raise
        finally:
            _observed(time.monotonic() - started, _outcome(result, error), self._on_request)
        return result

    async def _upload(self, objects: Sequence[Mapping[str, Any]]) -> UploadResult:
        body = self.body(objects)
        token = await self._tokens.token(self._scope)
        status, payload, headers = await self._post(body, token)
        if status in _AUTH_STATUSES:
            log.info("sentinel.token_refused", status=status)
            token = await self._tokens.refresh(self._scope)
            status, payload, headers = await self._post(body, token)
            if status in _AUTH_STATUSES:
                message = peer_message(payload, secrets=(token,)) or "no message"
                raise AuthenticationFailed(
                    f"Sentinel refused a fresh token (HTTP {status}): {message}", status=status
                )
        if 200 <= status < 300:
            return _result(len(objects), payload)
        raise _failure(status, payload, headers, token, len(objects))

    async def _post(self, body: bytes, token: str) -> tuple[int, bytes, Mapping[str, str]]:
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        try:
            with limits.body_limit(self._max_body):
                async with self._session.post(self._url, data=body, headers=headers) as response:
                    return response.status, await response.read(), response.headers
        except aiohttp.InvalidURL:
            raise
        except MalformedResponse as exc:  # the session's bounds: too large
            raise MalformedResponse(f"Sentinel's upload answer was refused: {exc}") from exc
        except UpstreamUnavailable as exc:  # the session's bounds: a redirect
            raise UpstreamUnavailable(f"Sentinel upload failed: {exc}", status=exc.status) from exc
        except TimeoutError as exc:
            raise UpstreamUnavailable("Sentinel upload timed out") from exc
        except aiohttp.ClientSSLError as exc:
            # The handshake refused the server. A connection merely dropped mid-handshake is
            # a plain ClientConnectorError (a reset): transient, below.
            error = exc.os_error
            reason = getattr(error, "verify_message", None) or getattr(error, "reason", None)
            raise TlsVerificationFailed(
                f"TLS verification of Sentinel ({exc.host}) failed: "
                f"{type(error).__name__} ({reason or 'no reason given'})"
            ) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(
                f"Sentinel upload failed: connection problem ({type(exc).__name__})"
            ) from exc


def _failure(
    status: int, payload: bytes, headers: Mapping[str, str], token: str, count: int
) -> Exception:
    """The pipeline error a non-2xx, non-auth answer means."""
    message = peer_message(payload, secrets=(token,)) or "no message"
    if status == 429:
        wait = parse_retry_after(headers.get("Retry-After"))
        if wait is None:
            wait = parse_try_again_text(message)
        if wait is None:
            wait = DEFAULT_RETRY_AFTER_S
        return RateLimited(f"Sentinel rate limit (HTTP 429): {message}", retry_after_s=wait)
    if status == 408 or status >= 500:
        return UpstreamUnavailable(f"Sentinel answered HTTP {status}: {message}", status=status)
    if status == 404:
        return DestinationNotFound(f"Sentinel workspace not found (HTTP 404): {message}")
    return BatchRejected(
        f"Sentinel rejected the batch (HTTP {status}): {message}",
        status=status,
        detail=message,
        records=_refused_records(count, payload, token),
    )


def _refused_records(count: int, payload: bytes, token: str) -> tuple[RecordError, ...]:
    """The records a refusal names (``errors[]`` beside the error envelope, as the simulator and
    an all-invalid batch send it), each with its messages; empty when the body names none, or
    names one this request does not have: then nobody can say which record is at fault, and
    the uploader isolates it by splitting."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return ()
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, list) or not errors:
        return ()
    messages: dict[int, list[str]] = {}
    for entry in errors:
        if not isinstance(entry, dict):
            return ()
        index = entry.get("recordIndex")
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count:
            return ()
        found = (redact(" ".join(m.split()), token) for m in _messages_of(entry))
        messages.setdefault(index, []).extend(m for m in found if m)
    return tuple(
        RecordError(index=index, messages=tuple(found) or ("no message",))
        for index, found in sorted(messages.items())
    )


def _result(count: int, payload: bytes) -> UploadResult:
    """Accepted and rejected indexes from a 2xx answer; an empty body means all accepted, and so
    does an object without ``errors`` (Sentinel's documented success)."""
    if not payload.strip():
        return UploadResult(accepted=tuple(range(count)), rejected=())
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        # orjson's reason names a place ("depth limit exceeded: line 1 column 1026"), no content.
        raise MalformedResponse(
            f"Sentinel answered 2xx with an undecodable body ({len(payload)} bytes: {exc})"
        ) from exc
    if not isinstance(data, dict):
        # Not the documented shape: it may be a refusal, so no record may pass as accepted.
        raise MalformedResponse(f"Sentinel answered 2xx with a JSON {type(data).__name__}")
    errors = data.get("errors")
    if errors is None:
        return UploadResult(accepted=tuple(range(count)), rejected=())
    if not isinstance(errors, list):
        raise MalformedResponse("Sentinel's 'errors' is not a list")
    messages: dict[int, list[str]] = {}
    for entry in errors:
        index = entry.get("recordIndex") if isinstance(entry, dict) else None
        # A refusal we cannot attribute must not let its record pass as accepted.
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count:
            shown = json_text(index)[:60]  # whatever the peer sent: never repr, clipped
            raise MalformedResponse(
                f"Sentinel reported an error for record index {shown} of a {count}-record batch"
            )
        messages.setdefault(index, []).extend(_messages_of(entry))
    rejected = tuple(
        RecordError(index=index, messages=tuple(found) or ("no message",))
        for index, found in sorted(messages.items())
    )
    accepted = tuple(i for i in range(count) if i not in messages)
    return UploadResult(accepted=accepted, rejected=rejected)


def _messages_of(entry: Mapping[str, Any]) -> list[str]:
    found: list[str] = []
    for key in _ERROR_KEYS:
        value = entry.get(key)
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, list):
            found.extend(json_text(item) for item in value)
    return found
