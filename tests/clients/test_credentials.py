"""Credentials through the real azure-identity async classes against the Entra simulator, and
the ``TokenProvider``'s cache, forced refresh and error translation."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web
from azure.core.exceptions import ClientAuthenticationError, ServiceResponseTimeoutError
from azure.identity.aio import ClientSecretCredential, WorkloadIdentityCredential

from shared.adapters.credentials import CredentialFactory, TokenProvider, credential_factory
from shared.adapters.http import open_session
from shared.adapters.tls import client_context
from shared.core.errors import (
    AuthenticationFailed,
    ConfigError,
    PipelineError,
    RateLimited,
    TlsVerificationFailed,
    UpstreamUnavailable,
)
from shared.core.secrets import Secret
from simulators.entra import EntraSimulator
from simulators.faults import FaultKind
from simulators.tokens import TokenMinter
from tests.clients.peers import World, hang_up_server, one_route

TENANT = "00000000-0000-4000-8000-0000000000aa"
CLIENT_ID = "00000000-0000-4000-8000-0000000000c1"
FEDERATED_CLIENT_ID = "00000000-0000-4000-8000-0000000000c2"
CLIENT_SECRET = "sim-client-secret-0123456789"
SCOPE = "https://management.azure.com/.default"


@contextlib.asynccontextmanager
async def entra_world(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext, *, timeout_s: float = 10.0
) -> AsyncIterator[SimpleNamespace]:
    async with (
        EntraSimulator(server_ssl, minter=TokenMinter(), tenant_id=TENANT) as entra,
        open_session(client_ssl, timeout_s=timeout_s) as session,
    ):
        entra.add_client(CLIENT_ID, CLIENT_SECRET)
        entra.add_federated_client(FEDERATED_CLIENT_ID)
        yield SimpleNamespace(entra=entra, session=session)


@pytest.fixture
def entra(server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext) -> World:
    """``entra(**options)`` opens ``entra_world`` with those options."""
    return functools.partial(entra_world, server_ssl, client_ssl)


def secret_factory(
    session: aiohttp.ClientSession, authority_host: str, **settings: Any
) -> CredentialFactory:
    """A factory for the registered client and its secret unless ``settings`` say otherwise:
    each test names only the setting it changes."""
    values: dict[str, Any] = {
        "tenant_id": TENANT,
        "client_id": CLIENT_ID,
        "client_secret": Secret(CLIENT_SECRET),
    }
    values.update(settings)
    return credential_factory(session=session, authority_host=authority_host, **values)


E = TypeVar("E", bound=BaseException)


async def refused(factory: CredentialFactory, error: type[E], *redact: str) -> E:
    """The error a fresh provider's first token request ends in; the provider is closed either
    way, so no test leaks a credential's transport."""
    provider = TokenProvider(factory, redact=tuple(Secret(r) for r in redact))
    try:
        with pytest.raises(error) as caught:
            await provider.token(SCOPE)
    finally:
        await provider.aclose()
    return caught.value


# ---- building the credential ----------------------------------------------------------------


async def workload_identity(
    w: Any, tmp_path: Path, *, client_secret: Secret | None = None
) -> CredentialFactory:
    """A factory for the federated client, with the assertion file AKS would mount."""
    token_file = tmp_path / "token"
    assertion = w.entra.issue_federated_assertion(FEDERATED_CLIENT_ID)
    await asyncio.to_thread(token_file.write_text, assertion)
    return credential_factory(
        session=w.session,
        tenant_id=TENANT,
        client_id=FEDERATED_CLIENT_ID,
        authority_host=w.entra.url,
        client_secret=client_secret,
        federated_token_file=token_file,
    )


async def test_client_secret_builds_the_async_client_secret_credential(entra: World) -> None:
    async with entra() as w:
        credential = secret_factory(w.session, w.entra.url)()
        try:
            assert isinstance(credential, ClientSecretCredential)
        finally:
            await credential.close()


async def test_a_federated_token_file_selects_workload_identity(
    entra: World, tmp_path: Path
) -> None:
    async with entra() as w:
        factory = await workload_identity(w, tmp_path, client_secret=Secret("ignored"))
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
        values: dict[str, Any] = {"authority_host": "https://login.example", **kwargs}
        with pytest.raises(ConfigError) as caught:
            secret_factory(session, **values)
        assert any(problem in line for line in caught.value.problems)
        assert CLIENT_SECRET not in str(caught.value)


# ---- cache and refresh ----------------------------------------------------------------------


async def test_tokens_are_cached_and_refresh_forces_a_new_one(entra: World) -> None:
    async with entra() as w:
        provider = TokenProvider(secret_factory(w.session, w.entra.url))
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


async def test_concurrent_refreshes_share_one_new_token(entra: World) -> None:
    async with entra() as w:
        provider = TokenProvider(secret_factory(w.session, w.entra.url))
        try:
            await provider.token(SCOPE)
            tokens = await asyncio.gather(*(provider.refresh(SCOPE) for _ in range(5)))
            assert len(set(tokens)) == 1
            assert len(w.entra.tokens_issued) == 2
        finally:
            await provider.aclose()


async def test_a_closed_provider_refuses_to_serve(entra: World) -> None:
    async with entra() as w:
        provider = TokenProvider(secret_factory(w.session, w.entra.url))
        await provider.aclose()
        await provider.aclose()  # idempotent
        with pytest.raises(RuntimeError, match="closed"):
            await provider.token(SCOPE)


# ---- errors ---------------------------------------------------------------------------------


async def test_a_wrong_client_secret_is_authentication_failed(entra: World) -> None:
    wrong = "wrong-secret-9876543210"
    async with entra() as w:
        factory = secret_factory(w.session, w.entra.url, client_secret=Secret(wrong))
        error = await refused(factory, AuthenticationFailed, wrong)
    assert error.status == 401
    assert "AADSTS7000215" in str(error)
    assert wrong not in str(error)
    assert wrong not in repr(error)


async def test_an_unknown_tenant_is_authentication_failed(entra: World) -> None:
    async with entra() as w:
        unknown = "00000000-0000-4000-8000-00000000dead"
        factory = secret_factory(w.session, w.entra.url, tenant_id=unknown)
        error = await refused(factory, AuthenticationFailed)
    assert error.status == 400
    assert "AADSTS90002" in str(error)


async def test_an_echoed_secret_is_redacted_from_the_error(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    async def echo(request: web.Request) -> web.Response:
        # A misbehaving peer that quotes the form back, secret included, in an OAuth refusal.
        secret = (await request.post()).get("client_secret")
        assert isinstance(secret, str)
        body = {
            "error": "invalid_client",
            "error_description": f"AADSTS7000215: Invalid client secret {secret}",
            "error_codes": [7000215],
        }
        return web.json_response(body, status=401)

    async with (
        one_route(server_ssl, "/{tenant}/oauth2/v2.0/token", echo) as url,
        open_session(client_ssl) as session,
    ):
        error = await refused(secret_factory(session, url), AuthenticationFailed, CLIENT_SECRET)
    assert error.status == 401
    assert CLIENT_SECRET not in str(error)
    assert CLIENT_SECRET not in repr(error)
    assert "********" in str(error)


# Through the real async ClientSecretCredential against the Entra simulator's faults. azure-core's
# own retries are off by design (shared.adapters.credentials docstring), so each failure is exactly
# one token request, answered at once as a pipeline error, and the next call starts afresh.


async def _fails_once(w: SimpleNamespace, **fault: Any) -> PipelineError:
    """Inject ``fault`` once on the token route; return the error, after checking recovery."""
    w.entra.faults.inject(route="token", **fault)
    provider = TokenProvider(
        secret_factory(w.session, w.entra.url), redact=(Secret(CLIENT_SECRET),)
    )
    try:
        with pytest.raises(PipelineError) as caught:
            await provider.token(SCOPE)
        assert w.entra.tokens_issued == []
        token = await provider.token(SCOPE)  # the fault is spent: the same provider recovers
    finally:
        await provider.aclose()
    assert [t.access_token for t in w.entra.tokens_issued] == [token]
    assert CLIENT_SECRET not in str(caught.value)
    return caught.value


async def test_entra_throttling_with_retry_after_is_rate_limited(entra: World) -> None:
    async with entra() as w:
        error = await _fails_once(w, kind=FaultKind.RATE_LIMIT, retry_after_s=7)
        assert isinstance(error, RateLimited)
        assert error.retry_after_s == 7.0
        assert "AADSTS90055" in str(error)
        assert [r.status for r in w.entra.recorder.of("token")] == [429, 200]


@pytest.mark.parametrize(
    ("kind", "status", "first"),
    [
        pytest.param(FaultKind.RATE_LIMIT, 429, (429, FaultKind.RATE_LIMIT), id="429-no-wait"),
        pytest.param(FaultKind.EMPTY_500, 500, (500, FaultKind.EMPTY_500), id="empty-500"),
        pytest.param(FaultKind.MALFORMED_JSON, 200, (200, FaultKind.MALFORMED_JSON), id="bad-json"),
        pytest.param(FaultKind.RESET, None, (None, FaultKind.RESET), id="reset"),
    ],
)
async def test_a_failed_token_request_is_upstream_unavailable(
    entra: World, kind: FaultKind, status: int | None, first: tuple[int | None, FaultKind]
) -> None:
    async with entra() as w:
        error = await _fails_once(w, kind=kind)
        assert isinstance(error, UpstreamUnavailable)
        assert error.status == status
        answered = [(r.status, r.fault) for r in w.entra.recorder.of("token")]
        assert answered == [first, (200, None)]


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_entra_outage_is_upstream_unavailable(entra: World, status: int) -> None:
    async with entra() as w:
        error = await _fails_once(w, kind=FaultKind.SERVER_ERROR, status=status)
        assert isinstance(error, UpstreamUnavailable)
        assert error.status == status
        assert "temporarily_unavailable" in str(error)
        assert [r.status for r in w.entra.recorder.of("token")] == [status, 200]


@pytest.mark.parametrize("status", [429, 502, 503])
async def test_a_gateway_html_page_is_upstream_unavailable(entra: World, status: int) -> None:
    # No OAuth "error" key: azure-identity raises ClientAuthenticationError *without* a status
    # ("Unexpected response"), which once read as a refused credential and opened the circuit.
    async with entra() as w:
        error = await _fails_once(w, kind=FaultKind.GATEWAY_ERROR, status=status)
        assert isinstance(error, UpstreamUnavailable)
        assert isinstance(error.__cause__, ClientAuthenticationError)
        assert f"<title>{status} " in str(error)


async def test_a_timeout_honours_the_session_bound_and_is_upstream_unavailable(
    entra: World,
) -> None:
    # azure-core would replace the session's bound with its own 300 s read timeout; the
    # factory passes the session's on, so the short one here is what fires.
    async with entra(timeout_s=0.5) as w:
        w.entra.faults.inject(FaultKind.TIMEOUT, route="token", delay_s=1.0)
        provider = TokenProvider(secret_factory(w.session, w.entra.url))
        try:
            with pytest.raises(UpstreamUnavailable) as caught:
                await provider.token(SCOPE)
            await provider.token(SCOPE)
        finally:
            await provider.aclose()
        assert isinstance(caught.value.__cause__, ServiceResponseTimeoutError)
        assert len(w.entra.tokens_issued) == 1
    # The held request is recorded once the simulator has shut down; nothing was retried.
    assert sorted(str(r.fault) for r in w.entra.recorder.of("token")) == ["None", "timeout"]


async def test_workload_identity_makes_one_token_request_per_call_too(
    entra: World, tmp_path: Path
) -> None:
    async with entra() as w:
        factory = await workload_identity(w, tmp_path)
        w.entra.faults.inject(FaultKind.SERVER_ERROR, route="token", status=503, times=5)
        await refused(factory, UpstreamUnavailable)
        assert len(w.entra.recorder.of("token")) == 1


async def test_an_untrusted_certificate_is_tls_verification_failed(entra: World) -> None:
    async with entra() as w:
        async with open_session(client_context(None)) as untrusting:  # the system store only
            factory = secret_factory(untrusting, w.entra.url)
            error = await refused(factory, TlsVerificationFailed, CLIENT_SECRET)
        assert "CERTIFICATE_VERIFY_FAILED" in str(error)
        assert CLIENT_SECRET not in str(error)
        assert w.entra.recorder.requests == []


async def test_a_handshake_dropped_by_the_network_is_upstream_unavailable(
    client_ssl: ssl.SSLContext,
) -> None:
    async with hang_up_server() as url, open_session(client_ssl) as session:
        await refused(secret_factory(session, url), UpstreamUnavailable)


async def test_an_unreadable_federated_token_file_is_authentication_failed(
    entra: World, tmp_path: Path
) -> None:
    async with entra() as w:
        factory = credential_factory(
            session=w.session,
            tenant_id=TENANT,
            client_id=FEDERATED_CLIENT_ID,
            authority_host=w.entra.url,
            federated_token_file=tmp_path / "missing",
        )
        await refused(factory, AuthenticationFailed)
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
