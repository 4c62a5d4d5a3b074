"""Entra ID tokens for Sentinel, through azure-identity's async credentials — never a hand-written
token request.

Two identities (DESIGN.md §6):

- **workload identity** (``WorkloadIdentityCredential``) when a federated token file is
  configured: AKS projects a service-account token into the pod and Entra exchanges it; no
  secret exists anywhere;
- **client secret** (``ClientSecretCredential``) where the deployment gives one (the vendor's
  settings do).

The authority host is a setting (sovereign clouds, the Entra simulator). The credential's HTTP
transport is azure-core's ``AioHttpTransport`` over *our* session (``session_owner=False``), so
token requests use the same TLS context as every other request (system store + ``SSL_CERT_FILE``)
and the same connection pool; closing a credential never closes the shared session.

:class:`TokenProvider` is the small surface the Sentinel client needs: a cached token, a forced
new one after a 401/403, and closing. azure-identity exposes no "bypass the cache" switch: its
async credentials keep tokens in memory until shortly before expiry, so asking again after a 401
would hand back the very token the peer just refused (revoked role assignment, rotated secret,
clock skew…). Building a fresh credential from a factory gives an empty cache, hence a new token
request, while staying entirely on azure-identity's code path.

**Who retries a failed token request: not azure-core.** Its ``AsyncRetryPolicy`` would, by
default, retry a token POST up to ten times, sleeping exponentially (up to two minutes a wait)
and honouring any ``Retry-After`` Entra sends — all *inside* ``upload()``, while the uploader's
message locks run out and without the shared pause that keeps every replica off a throttled
identity. So the credential is built with ``retry_total=0``: one token request per
``token()``/``refresh()``, and its failure comes back at once as a pipeline error. The uploader,
which already owns back-off, the shared pause and lock renewal for Sentinel's own 429/5xx (see
``shared.adapters.sentinel_client``), retries the batch — and with it the token request. Tokens live
about an hour and are renewed ahead of expiry, so a failed renewal costs one retried batch.

The token request's timeouts are the session's (``connection_timeout``/``read_timeout`` on the
transport): azure-core would otherwise replace the session's bounds with its own 300 s ones. Its
per-read timeouts alone would let an answer trickling a byte at a time run for ever, so the
transport also bounds the whole request by the session's total; and it reads token answers
within ``TOKEN_MAX_BODY`` (``shared.adapters.http_limits``, whose response class and redirect
refusal the transport goes through, being over our session).

**Errors.** azure-identity raises ``ClientAuthenticationError`` for *any* token answer it cannot
use — also a 429 or 5xx whose body has no OAuth ``error`` key, and then without the status. So
the class alone says nothing; :meth:`TokenProvider._translate` decides from the HTTP status and
the body: only a 400/401/403 carrying an OAuth error (``invalid_client``,
``unauthorized_client``, AADSTS codes…) is Entra refusing us (``AuthenticationFailed``, fatal).
Throttling is ``RateLimited`` when Entra said how long to wait; everything else that failed —
429 without a wait, 5xx, empty or unreadable bodies, timeouts, resets — is
``UpstreamUnavailable``. A refused TLS handshake is ``TlsVerificationFailed`` (fatal). An answer
refused unread (too large, never ending, a redirect), nested too deep to decode, or whose access
token is not a string (azure-identity passes on any JSON value) is ``UpstreamUnavailable`` with
that reason: it says nothing about the credential.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any, Final, overload

import aiohttp
import orjson
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceResponseTimeoutError,
)
from azure.core.pipeline.transport import AioHttpTransport, AsyncHttpResponse, HttpRequest
from azure.core.rest import AsyncHttpResponse as RestAsyncHttpResponse
from azure.core.rest import HttpRequest as RestHttpRequest
from azure.identity import CredentialUnavailableError
from azure.identity.aio import ClientSecretCredential, WorkloadIdentityCredential

from shared.adapters.http import MAX_PEER_MESSAGE, redact
from shared.adapters.http_limits import TOKEN_MAX_BODY, body_limit
from shared.core.backoff import parse_retry_after
from shared.core.errors import (
    AuthenticationFailed,
    ConfigError,
    MalformedResponse,
    RateLimited,
    TlsVerificationFailed,
    UpstreamUnavailable,
)
from shared.core.secrets import Secret

#: Public Azure cloud; sovereign clouds and the simulator pass their own.
DEFAULT_AUTHORITY = "https://login.microsoftonline.com"

CredentialFactory = Callable[[], AsyncTokenCredential]

#: Statuses with which Entra refuses a client-credentials request (RFC 6749 §5.2, AADSTS).
_REFUSAL_STATUSES: Final = frozenset({400, 401, 403})
#: OAuth ``error`` values that mean "Entra is failing", not "Entra refuses you" (RFC 6749 §4.1.2.1).
_TRANSIENT_OAUTH_ERRORS: Final = frozenset({"temporarily_unavailable", "server_error"})
#: JSON's names of what a decoded value may be, for a message that must not show the value.
_JSON_KINDS: Final[dict[type, str]] = {list: "array", dict: "object", int: "number"}
#: Used when the session sets no bound (aiohttp allows ``None``); azure-core's own is 300 s.
_FALLBACK_TIMEOUT_S: Final = 30.0


def credential_factory(
    *,
    session: aiohttp.ClientSession,
    tenant_id: str,
    client_id: str,
    authority_host: str = DEFAULT_AUTHORITY,
    client_secret: Secret | None = None,
    federated_token_file: Path | None = None,
) -> CredentialFactory:
    """Check the identity settings now and return a function that builds a fresh credential.

    Workload identity wins when ``federated_token_file`` is set (that is how AKS announces it);
    otherwise ``client_secret`` is required. Problems raise ``ConfigError`` at start-up rather
    than at the first upload. The secret is revealed only inside the factory, at the point where
    azure-identity takes it.
    """
    problems: list[str] = []
    if not tenant_id:
        problems.append("AZURE_TENANT_ID: missing")
    if not client_id:
        problems.append("AZURE_CLIENT_ID: missing")
    if federated_token_file is None and not client_secret:
        problems.append(
            "AZURE_CLIENT_SECRET or AZURE_FEDERATED_TOKEN_FILE: one of them is required"
        )
    if not authority_host.startswith("https://"):
        problems.append("AZURE_AUTHORITY_HOST: must be an https:// URL")
    if problems:
        raise ConfigError(problems)

    # The session's bounds, passed on because azure-core's transport replaces them per request.
    read_timeout = session.timeout.total or session.timeout.sock_read or _FALLBACK_TIMEOUT_S
    connect_timeout = session.timeout.connect or session.timeout.sock_connect or read_timeout

    def transport() -> AioHttpTransport:
        return _BoundedTransport(
            session=session,
            session_owner=False,
            connection_timeout=connect_timeout,
            read_timeout=read_timeout,
        )

    # One token request per call: the uploader owns retries (module docstring).
    options: dict[str, Any] = {"authority": authority_host, "retry_total": 0}

    if federated_token_file is not None:
        token_file = str(federated_token_file)

        def workload() -> AsyncTokenCredential:
            return WorkloadIdentityCredential(
                tenant_id=tenant_id,
                client_id=client_id,
                token_file_path=token_file,
                transport=transport(),
                **options,
            )

        return workload

    if client_secret is None:  # unreachable after the checks above; narrows the type
        raise ConfigError(["AZURE_CLIENT_SECRET: missing"])
    secret = client_secret

    def client_secret_credential() -> AsyncTokenCredential:
        return ClientSecretCredential(
            tenant_id,
            client_id,
            secret.reveal(),
            transport=transport(),
            **options,
        )

    return client_secret_credential


# azure-core exports the transport through a module ``__getattr__``: mypy sees it as Any.
class _BoundedTransport(AioHttpTransport):  # type: ignore[misc]
    """azure-core's transport over our session, bounded as the module docstring says: token
    answers within ``TOKEN_MAX_BODY``, the whole request within ``read_timeout``."""

    @overload
    async def send(
        self,
        request: HttpRequest,
        *,
        stream: bool = False,
        proxies: MutableMapping[str, str] | None = None,
        **config: Any,
    ) -> AsyncHttpResponse: ...

    @overload
    async def send(
        self,
        request: RestHttpRequest,
        *,
        stream: bool = False,
        proxies: MutableMapping[str, str] | None = None,
        **config: Any,
    ) -> RestAsyncHttpResponse: ...

    async def send(
        self,
        request: HttpRequest | RestHttpRequest,
        *,
        stream: bool = False,
        proxies: MutableMapping[str, str] | None = None,
        **config: Any,
    ) -> AsyncHttpResponse | RestAsyncHttpResponse:
        total = self.connection_config.read_timeout
        with body_limit(TOKEN_MAX_BODY):
            try:
                async with asyncio.timeout(total):
                    sent: AsyncHttpResponse | RestAsyncHttpResponse = await super().send(
                        request, stream=stream, proxies=proxies, **config
                    )
                    return sent
            except TimeoutError as exc:  # ours: azure-core turns aiohttp's into its own errors
                raise ServiceResponseTimeoutError(
                    f"the token request did not end within {total:g} s"
                ) from exc


class TokenProvider:
    """Access tokens for one identity: cached by azure-identity, renewed on demand.

    ``redact`` lists secrets (the client secret) that must never reach an error message even
    if a peer echoes them.
    """

    def __init__(self, factory: CredentialFactory, *, redact: tuple[Secret, ...] = ()) -> None:
        self._factory = factory
        self._credential: AsyncTokenCredential | None = factory()
        self._lock = asyncio.Lock()
        self._generation = 0
        self._redact = redact

    async def token(self, scope: str) -> str:
        """A valid token for ``scope``; azure-identity serves it from its cache when it can."""
        credential = self._credential
        if credential is None:
            raise RuntimeError("TokenProvider is closed")
        try:
            access = await credential.get_token(scope)
        except AzureError as exc:
            raise self._translate(exc) from exc
        except (MalformedResponse, UpstreamUnavailable) as exc:  # the session's bounds
            raise UpstreamUnavailable(f"Entra ID token request failed: {exc}") from exc
        except RecursionError as exc:  # the stdlib decoder azure-core uses, on deep nesting
            raise UpstreamUnavailable(
                "Entra ID token request failed: the answer is nested too deep to decode"
            ) from exc
        except OSError as exc:  # workload identity: the projected token file is unreadable
            raise AuthenticationFailed(
                f"cannot read the federated token file ({type(exc).__name__})"
            ) from exc
        # azure-identity hands on whatever JSON value the answer's access_token held.
        token: object = access.token
        if not isinstance(token, str) or not token:
            kind = "empty" if token == "" else f"a JSON {_JSON_KINDS.get(type(token), 'value')}"
            raise UpstreamUnavailable(
                f"Entra ID token request failed: the answer's access token is {kind}"
            )
        return token

    async def refresh(self, scope: str) -> str:
        """A token that was certainly issued after this call started (the cache is discarded).

        Concurrent callers that all saw the same 401 share one rebuild and one token request:
        whoever gets the lock second finds the generation moved on and takes the new
        credential's cached token.
        """
        seen = self._generation
        async with self._lock:
            if self._generation != seen:
                return await self.token(scope)  # rebuilt while we waited: cached, fresh
            try:
                old, self._credential = self._credential, None
                if old is not None:
                    await old.close()
                self._credential = self._factory()
                # Fetched under the lock so the callers queued behind us find it in the new
                # credential's cache instead of each sending a token request of its own.
                return await self.token(scope)
            finally:
                # Moved on only now: a refresh that started while this one was still running
                # saw the old generation and will reuse this token rather than rebuild again.
                self._generation += 1

    async def aclose(self) -> None:
        """Close the credential (its transport leaves the shared session open)."""
        credential, self._credential = self._credential, None
        if credential is not None:
            await credential.close()

    def _translate(self, exc: AzureError) -> Exception:
        """The pipeline error an azure-core/azure-identity failure means (module docstring).

        Fatal only when Entra itself refused the credential — a 400/401/403 whose body is an
        OAuth error — or when TLS verification failed; every other failure is transient.
        """
        detail = " ".join(str(exc.message or type(exc).__name__).split())[:MAX_PEER_MESSAGE]
        detail = redact(detail, *(s.reveal() for s in self._redact))
        tls = _tls_refusal(exc)
        if tls is not None:
            return TlsVerificationFailed(
                f"TLS verification of Entra ID failed ({type(tls).__name__}): {detail}"
            )
        if isinstance(exc, CredentialUnavailableError):  # it cannot even try: settings or file
            return AuthenticationFailed(f"Entra ID credential unavailable: {detail}")
        response = exc.response if isinstance(exc, HttpResponseError) else None
        status = exc.status_code if isinstance(exc, HttpResponseError) else None
        if (
            isinstance(exc, ClientAuthenticationError)
            and status in _REFUSAL_STATUSES
            and _oauth_refusal(response)
        ):
            return AuthenticationFailed(
                f"Entra ID refused the credential (status {status}): {detail}", status=status
            )
        if status == 429:
            headers = getattr(response, "headers", None) or {}
            wait = parse_retry_after(headers.get("Retry-After"))
            if wait is not None:
                return RateLimited(f"Entra ID rate limit (HTTP 429): {detail}", retry_after_s=wait)
        return UpstreamUnavailable(f"Entra ID token request failed: {detail}", status=status)


def _oauth_refusal(response: Any) -> bool:
    """Whether an error answer's body is an OAuth error that refuses us (RFC 6749 §5.2).

    azure-core has read the body by the time the error is raised; anything unreadable, or an
    ``error`` such as ``temporarily_unavailable``, is not a refusal.
    """
    if response is None:
        return False
    try:
        data = orjson.loads(response.body())
    except Exception:  # unread, or not JSON: not a refusal we can prove
        return False
    error = data.get("error") if isinstance(data, dict) else None
    return isinstance(error, str) and bool(error) and error not in _TRANSIENT_OAUTH_ERRORS


def _tls_refusal(exc: BaseException) -> BaseException | None:
    """The TLS error inside ``exc`` when the handshake refused the peer, else ``None``.

    azure-core wraps aiohttp's exception (``inner_exception`` / ``__cause__``). A handshake that
    merely lost its connection arrives as a reset (``ClientConnectorError``), not as an SSL
    error, so it stays transient.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, aiohttp.ClientSSLError):
            return current.os_error
        inner = getattr(current, "inner_exception", None)
        current = inner if isinstance(inner, BaseException) else current.__cause__
    return None
