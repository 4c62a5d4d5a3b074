"""What a failed Log Analytics query means, as the pipeline's error tree (the module docstring
of ``shared.adapters.workspace_reader`` lists the mapping); kept apart from the reading so each
can be read whole.

One query runs two requests that can fail alike: the token request (azure-identity's, made
inside the query call) and the query itself. azure-identity's own errors say which host
answered; the rest do not (the session's refusals of an answer too large or a redirect, and a
``RecursionError`` from the stdlib decoder both use on JSON nested too deep): they arrive as
they were raised, from either. :class:`WatchedCredential` keeps the token request's last
failure, so :meth:`QueryFailures.refused` can tell them apart by identity and name the right
peer: an operator told "Log Analytics" would look at the wrong service.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
from azure.core.credentials import AccessToken
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    DecodeError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.identity import CredentialUnavailableError
from azure.monitor.query import LogsQueryError

from shared.adapters.http import MAX_PEER_MESSAGE
from shared.core.errors import (
    AuthenticationFailed,
    DestinationNotFound,
    MalformedResponse,
    PipelineError,
    QueryRejected,
    TlsVerificationFailed,
    UpstreamUnavailable,
)

_AUTH_STATUSES: Final = frozenset({401, 403})
_TRANSIENT_STATUSES: Final = frozenset({408, 429})
#: What nobody's answer may be, whichever request met it (the module docstring).
Unattributed = MalformedResponse | UpstreamUnavailable | RecursionError


class WatchedCredential:
    """The reader's credential as the query client calls it: the same tokens, and the last
    exception the token request raised kept in ``failure`` (``None`` since a call began)."""

    def __init__(self, credential: AsyncTokenCredential) -> None:
        self.credential = credential
        self.failure: BaseException | None = None

    async def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        self.failure = None
        try:
            return await self.credential.get_token(
                *scopes, claims=claims, tenant_id=tenant_id, enable_cae=enable_cae, **kwargs
            )
        except BaseException as exc:
            self.failure = exc
            raise

    async def close(self) -> None:
        await self.credential.close()

    async def __aenter__(self) -> WatchedCredential:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.close()


class QueryFailures:
    """What a failed query of ``workspace_id`` (at ``endpoint``) means."""

    def __init__(self, workspace_id: str, endpoint: str, credential: WatchedCredential) -> None:
        self.workspace_id = workspace_id
        self.credential = credential
        self._endpoint_netloc = urlsplit(endpoint).netloc.lower()

    def refused(self, exc: Unattributed, what: str) -> PipelineError:
        """An answer the session refused to read (too large, a redirect) or that is nested
        too deep to decode: the token request's (transient, like TokenProvider says it) or
        the query's (refused for what it is: asking again brings the same)."""
        deep = isinstance(exc, RecursionError)
        if exc is self.credential.failure:
            reason = "the answer is nested too deep to decode" if deep else str(exc)
            return UpstreamUnavailable(f"Entra ID token request failed: {reason}")
        if deep:
            return MalformedResponse(f"Log Analytics answered {what} nested too deep to decode")
        if isinstance(exc, UpstreamUnavailable):  # a redirect, never followed
            return UpstreamUnavailable(
                f"Log Analytics query for {what} failed: {exc}", status=exc.status
            )
        return MalformedResponse(f"Log Analytics' answer to {what} was refused: {exc}")

    def translate(self, exc: BaseException, what: str) -> PipelineError:
        """The pipeline error a failed query means (the reader's module docstring)."""
        tls = _tls_refusal(exc)
        if tls is not None:
            return TlsVerificationFailed(
                f"TLS verification failed while querying Log Analytics ({type(tls).__name__}): "
                f"{clip(str(getattr(tls, 'verify_message', None) or tls))}"
            )
        token_failure = self._token_failure(exc)
        if token_failure is not None:
            return token_failure
        status = exc.status_code if isinstance(exc, HttpResponseError) else None
        if any(isinstance(cause, DecodeError) for cause in _chain(exc)) or (
            status is not None and status < 300
        ):
            return MalformedResponse(f"Log Analytics answered {what} with a body it cannot read")
        detail = _detail(exc)
        workspace = self.workspace_id
        if status in _AUTH_STATUSES:
            return AuthenticationFailed(
                f"Log Analytics refused the query (HTTP {status}): the identity needs the Log "
                f"Analytics Reader role on workspace {workspace} (a new role assignment can take "
                f"up to an hour to apply): {detail}",
                status=status,
            )
        if status == 404:
            return DestinationNotFound(
                f"Log Analytics workspace {workspace} not found (HTTP 404): the workspace id "
                f"must be the workspace's ID (a GUID) in this cloud: {detail}"
            )
        if status is None or status in _TRANSIENT_STATUSES or status >= 500:
            reason = f"HTTP {status}" if status is not None else type(exc).__name__
            return UpstreamUnavailable(
                f"Log Analytics query failed ({reason}) for {what}: {detail}", status=status
            )
        return QueryRejected(
            f"Log Analytics refused {what} (HTTP {status}): {detail}", status=status
        )

    def _token_failure(self, exc: BaseException) -> PipelineError | None:
        """The error when the token request failed rather than the query: azure-identity's
        error surfaces from inside the query call, and only its response's host and port (Entra's,
        not the endpoint's) or its absence tells the two apart."""
        for cause in _chain(exc):
            if isinstance(cause, CredentialUnavailableError):
                return AuthenticationFailed(f"the credential is unavailable: {_detail(cause)}")
            if not isinstance(cause, ClientAuthenticationError):
                continue
            response = cause.response
            url = getattr(getattr(response, "request", None), "url", "") or ""
            if response is not None and urlsplit(url).netloc.lower() == self._endpoint_netloc:
                return None  # the query itself was refused
            status = cause.status_code
            if status in (400, 401, 403):
                return AuthenticationFailed(
                    f"Entra ID refused the reader's credential (HTTP {status}): {_detail(cause)}",
                    status=status,
                )
            return UpstreamUnavailable(
                f"Entra ID token request failed: {_detail(cause)}", status=status
            )
        return None


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps (azure-core's ``inner_exception``, causes and contexts)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not s for s in seen):
        seen.append(current)
        inner = getattr(current, "inner_exception", None)
        if isinstance(inner, BaseException) and all(inner is not s for s in seen):
            current = inner
        else:
            current = current.__cause__ or current.__context__
    return seen


def _tls_refusal(exc: BaseException) -> BaseException | None:
    """The TLS error inside ``exc`` when the handshake refused the peer, else ``None``. A
    handshake merely cut off arrives as a connection reset and stays transient."""
    for cause in _chain(exc):
        if isinstance(cause, aiohttp.ClientSSLError):
            return cause.os_error
    return None


def _detail(exc: BaseException) -> str:
    """The service's error code and message when it sent them, else the exception's class."""
    model = getattr(exc, "model", None)
    if isinstance(model, LogsQueryError) and (model.code or model.message):
        return clip(f"{model.code}: {model.message}")
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        inner = getattr(exc, "inner_exception", None)
        return type(inner or exc).__name__
    message = getattr(exc, "message", None)
    text = message if isinstance(message, str) and message else type(exc).__name__
    return clip(text.splitlines()[0] if text.strip() else type(exc).__name__)


def clip(text: str) -> str:
    """``text`` on one line, at most ``MAX_PEER_MESSAGE`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= MAX_PEER_MESSAGE else text[: MAX_PEER_MESSAGE - 1] + "…"
