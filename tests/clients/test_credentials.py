"""Credentials through the real azure-identity async classes against the Entra simulator, and
the ``TokenProvider``'s cache, forced refresh and error translation."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace, TracebackType
from typing import Any

import aiohttp
import pytest
from azure.core.credentials import AccessToken
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError
from azure.identity.aio import ClientSecretCredential, WorkloadIdentityCredential

from shared.credentials import TokenProvider, credential_factory
from shared.errors import AuthenticationFailed, ConfigError, UpstreamUnavailable
from shared.http import open_session
from shared.secrets import Secret
from simulators.entra import EntraSimulator
from simulators.tokens import TokenMinter

TENANT = "00000000-0000-4000-8000-0000000000aa"
CLIENT_ID = "00000000-0000-4000-8000-0000000000c1"
FEDERATED_CLIENT_ID = "00000000-0000-4000-8000-0000000000c2"
CLIENT_SECRET = "sim-client-secret-0123456789"
SCOPE = "https://management.azure.com/.default"


@contextlib.asynccontextmanager
async def entra_world(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> AsyncIterator[SimpleNamespace]:
    async with (
        EntraSimulator(server_ssl, minter=TokenMinter(), tenant_id=TENANT) as entra,
        open_session(client_ssl) as session,
    ):
        entra.add_client(CLIENT_ID, CLIENT_SECRET)
        entra.add_federated_client(FEDERATED_CLIENT_ID)
        yield SimpleNamespace(entra=entra, session=session)


def secret_factory(w: SimpleNamespace, secret: str = CLIENT_SECRET) -> Any:
    return credential_factory(
        session=w.session,
        tenant_id=TENANT,
        client_id=CLIENT_ID,
        authority_host=w.entra.url,
        client_secret=Secret(secret),
    )


# ---- building the credential ----------------------------------------------------------------


async def test_client_secret_builds_the_async_client_secret_credential(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    async with entra_world(server_ssl, client_ssl) as w:
        credential = secret_factory(w)()
        try:
            assert isinstance(credential, ClientSecretCredential)
        finally:
            await credential.close()


async def test_a_federated_token_file_selects_workload_identity(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext, tmp_path: Path
) -> None:
    async with entra_world(server_ssl, client_ssl) as w:
        token_file = tmp_path / "token"
        assertion = w.entra.issue_federated_assertion(FEDERATED_CLIENT_ID)
        await asyncio.to_thread(token_file.write_text, assertion)
        factory = credential_factory(
            session=w.session,
            tenant_id=TENANT,
            client_id=FEDERATED_CLIENT_ID,
            authority_host=w.entra.url,
            client_secret=Secret("ignored-when-federated"),
            federated_token_file=token_file,
        )
        provider = TokenProvider(factory)
        try:
            assert isinstance(provider._credential, WorkloadIdentityCredential)
            token = await provider.token(SCOPE)
        finally:
            await provider.aclose()
        (issued,) = w.entra.tokens_issued
        assert issued.access_token == token
        assert issued.client_id == FEDERATED_CLIENT_ID


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"client_secret": None}, "AZURE_CLIENT_SECRET or AZURE_FEDERATED_TOKEN_FILE"),
        ({"client_secret": Secret("")}, "AZURE_CLIENT_SECRET or AZURE_FEDERATED_TOKEN_FILE"),
        ({"tenant_id": ""}, "AZURE_TENANT_ID"),
        ({"client_id": ""}, "AZURE_CLIENT_ID"),
        ({"authority_host": "http://login.example"}, "AZURE_AUTHORITY_HOST"),
    ],
)
async def test_identity_settings_are_checked_up_front(
    client_ssl: ssl.SSLContext, kwargs: dict[str, Any], problem: str
) -> None:
    async with open_session(client_ssl) as session:
        values: dict[str, Any] = {
            "session": session,
            "tenant_id": TENANT,
            "client_id": CLIENT_ID,
            "authority_host": "https://login.example",
            "client_secret": Secret(CLIENT_SECRET),
        }
        values.update(kwargs)
        with pytest.raises(ConfigError) as caught:
            credential_factory(**values)
        assert any(problem in line for line in caught.value.problems)
        assert CLIENT_SECRET not in str(caught.value)


# ---- cache and refresh ----------------------------------------------------------------------


async def test_tokens_are_cached_and_refresh_forces_a_new_one(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    async with entra_world(server_ssl, client_ssl) as w:
        provider = TokenProvider(secret_factory(w))
        try:
            first = await provider.token(SCOPE)
            assert await provider.token(SCOPE) == first
            assert len(w.entra.tokens_issued) == 1

            fresh = await provider.refresh(SCOPE)
            assert fresh != first
            assert await provider.token(SCOPE) == fresh
            assert [t.access_token for t in w.entra.tokens_issued] == [first, fresh]
        finally:
            await provider.aclose()
        assert not w.session.closed  # the credential's transport never owned the session


async def test_concurrent_refreshes_share_one_new_token(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    async with entra_world(server_ssl, client_ssl) as w:
        provider = TokenProvider(secret_factory(w))
        try:
            await provider.token(SCOPE)
            tokens = await asyncio.gather(*(provider.refresh(SCOPE) for _ in range(5)))
            assert len(set(tokens)) == 1
            assert len(w.entra.tokens_issued) == 2
        finally:
            await provider.aclose()


async def test_a_closed_provider_refuses_to_serve(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    async with entra_world(server_ssl, client_ssl) as w:
        provider = TokenProvider(secret_factory(w))
        await provider.aclose()
        await provider.aclose()  # idempotent
        with pytest.raises(RuntimeError, match="closed"):
            await provider.token(SCOPE)


# ---- errors ---------------------------------------------------------------------------------


async def test_a_wrong_client_secret_is_authentication_failed(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    wrong = "wrong-secret-9876543210"
    async with entra_world(server_ssl, client_ssl) as w:
        provider = TokenProvider(secret_factory(w, wrong), redact=(Secret(wrong),))
        try:
            with pytest.raises(AuthenticationFailed) as caught:
                await provider.token(SCOPE)
        finally:
            await provider.aclose()
        assert caught.value.status == 401
        assert "AADSTS7000215" in str(caught.value)
        assert wrong not in str(caught.value)
        assert wrong not in repr(caught.value)


async def test_an_unknown_tenant_is_authentication_failed(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    async with entra_world(server_ssl, client_ssl) as w:
        factory = credential_factory(
            session=w.session,
            tenant_id="00000000-0000-4000-8000-00000000dead",
            client_id=CLIENT_ID,
            authority_host=w.entra.url,
            client_secret=Secret(CLIENT_SECRET),
        )
        provider = TokenProvider(factory)
        try:
            with pytest.raises(AuthenticationFailed) as caught:
                await provider.token(SCOPE)
        finally:
            await provider.aclose()
        assert caught.value.status == 400
        assert "AADSTS90002" in str(caught.value)


class _Response:
    """Just enough of an azure-core response for ``HttpResponseError``."""

    def __init__(self, status_code: int) -> None:
        self.status_code = status_code
        self.reason = "reason"
        self.headers: dict[str, str] = {}

    def text(self, encoding: str | None = None) -> str:
        return ""

    def body(self) -> bytes:
        return b""


class _FailingCredential:
    """A credential whose ``get_token`` raises a prepared azure error."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.closed = False

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        raise self.error

    async def close(self) -> None:
        self.closed = True

    async def __aenter__(self) -> _FailingCredential:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> None:
        await self.close()


def _provider(error: Exception) -> TokenProvider:
    def factory() -> AsyncTokenCredential:
        return _FailingCredential(error)

    return TokenProvider(factory, redact=(Secret(CLIENT_SECRET),))


async def test_an_echoed_secret_is_redacted_from_the_error() -> None:
    provider = _provider(
        ClientAuthenticationError(message=f"bad credential {CLIENT_SECRET} refused")
    )
    with pytest.raises(AuthenticationFailed) as caught:
        await provider.token(SCOPE)
    await provider.aclose()
    assert CLIENT_SECRET not in str(caught.value)
    assert "********" in str(caught.value)


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_entra_throttling_or_outage_is_upstream_unavailable(status: int) -> None:
    error = ClientAuthenticationError(message="busy", response=_Response(status))  # type: ignore[arg-type]
    provider = _provider(error)
    with pytest.raises(UpstreamUnavailable) as caught:
        await provider.token(SCOPE)
    await provider.aclose()
    assert caught.value.status == status


async def test_a_network_failure_is_upstream_unavailable() -> None:
    provider = _provider(ServiceRequestError("Cannot connect to host login.example"))
    with pytest.raises(UpstreamUnavailable) as caught:
        await provider.token(SCOPE)
    await provider.aclose()
    assert caught.value.status is None
    assert isinstance(caught.value.__cause__, ServiceRequestError)


async def test_an_unreadable_federated_token_file_is_authentication_failed(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext, tmp_path: Path
) -> None:
    async with entra_world(server_ssl, client_ssl) as w:
        factory = credential_factory(
            session=w.session,
            tenant_id=TENANT,
            client_id=FEDERATED_CLIENT_ID,
            authority_host=w.entra.url,
            federated_token_file=tmp_path / "missing",
        )
        provider = TokenProvider(factory)
        try:
            with pytest.raises(AuthenticationFailed):
                await provider.token(SCOPE)
        finally:
            await provider.aclose()
        assert w.entra.tokens_issued == []


async def test_open_session_shares_one_tls_context(client_ssl: ssl.SSLContext) -> None:
    async with open_session(client_ssl, timeout_s=3) as session:
        connector = session.connector
        assert isinstance(connector, aiohttp.TCPConnector)
        assert connector._ssl is client_ssl  # the one context, verification on
        assert client_ssl.verify_mode is ssl.CERT_REQUIRED
        assert session.timeout.total == 3
        assert session.headers["User-Agent"].startswith("mati2sentinel/")
    with pytest.raises(ValueError, match="positive"):
        open_session(client_ssl, timeout_s=0)
