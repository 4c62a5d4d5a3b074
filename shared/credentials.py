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
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import aiohttp
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError
from azure.core.pipeline.transport import AioHttpTransport
from azure.identity.aio import ClientSecretCredential, WorkloadIdentityCredential

from shared.errors import AuthenticationFailed, ConfigError, UpstreamUnavailable
from shared.http import MAX_PEER_MESSAGE, redact
from shared.secrets import Secret

#: Public Azure cloud; sovereign clouds and the simulator pass their own.
DEFAULT_AUTHORITY = "https://login.microsoftonline.com"

CredentialFactory = Callable[[], AsyncTokenCredential]


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

    def transport() -> AioHttpTransport:
        return AioHttpTransport(session=session, session_owner=False)

    if federated_token_file is not None:
        token_file = str(federated_token_file)

        def workload() -> AsyncTokenCredential:
            return WorkloadIdentityCredential(
                tenant_id=tenant_id,
                client_id=client_id,
                token_file_path=token_file,
                authority=authority_host,
                transport=transport(),
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
            authority=authority_host,
            transport=transport(),
        )

    return client_secret_credential


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
        except OSError as exc:  # workload identity: the projected token file is unreadable
            raise AuthenticationFailed(
                f"cannot read the federated token file ({type(exc).__name__})"
            ) from exc
        return access.token

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
        """Entra refusing us is fatal (``AuthenticationFailed``); Entra or the network failing
        (429, 5xx, connection errors, all after azure-core's own retries) is transient."""
        status = exc.status_code if isinstance(exc, HttpResponseError) else None
        detail = " ".join(str(exc.message or type(exc).__name__).split())[:MAX_PEER_MESSAGE]
        detail = redact(detail, *(s.reveal() for s in self._redact))
        if isinstance(exc, ClientAuthenticationError) and (
            status is None or not (status == 429 or status >= 500)
        ):
            return AuthenticationFailed(
                f"Entra ID refused the credential (status {status}): {detail}", status=status
            )
        return UpstreamUnavailable(f"Entra ID token request failed: {detail}", status=status)
