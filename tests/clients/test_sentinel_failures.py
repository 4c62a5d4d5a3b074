"""The Sentinel client's failures against the simulators: a refused token is refreshed once,
then AuthenticationFailed; 429 is RateLimited with the server's wait; 5xx, timeouts and resets
are UpstreamUnavailable after a single attempt (the uploader owns waiting); odd bodies are
MalformedResponse or accepted; a refused certificate is fatal. No error carries a secret."""

from __future__ import annotations

import ssl

import aiohttp
import pytest
from aiohttp import web

from shared.adapters.http import open_session
from shared.adapters.sentinel_client import SentinelApi, SentinelClient, UploadResult
from shared.adapters.tls import client_context
from shared.core.errors import (
    AuthenticationFailed,
    BatchRejected,
    MalformedResponse,
    RateLimited,
    TlsVerificationFailed,
    UpstreamUnavailable,
)
from simulators.faults import FaultKind
from simulators.sentinel import SentinelSimulator
from simulators.tokens import TokenMinter
from tests.clients.peers import Log, World, hang_up_server
from tests.clients.sentinel_world import (
    CLIENT_SECRET,
    ROUTES,
    WORKSPACE,
    FixedTokens,
    assert_keeps_secrets,
    assert_no_secret,
    indicator,
    issued,
    upload_fails,
    upload_to_one_route,
    uploads,
)

# ---- authentication -------------------------------------------------------------------------


@pytest.mark.parametrize("api", list(SentinelApi))
async def test_401_refreshes_the_token_and_retries_once(sentinel: World, api: SentinelApi) -> None:
    async with sentinel(api=api) as w:
        await w.client.upload([indicator(0)])
        w.sentinel.faults.inject(FaultKind.EXPIRED_TOKEN, route=ROUTES[api])
        result = await w.client.upload([indicator(1)])

        assert result.accepted == (0,)
        assert [r.status for r in uploads(w.sentinel, api)] == [200, 401, 200]
        first, second = issued(w.entra)
        assert first != second  # a brand-new token, not azure-identity's cached one
        assert uploads(w.sentinel, api)[-1].headers["Authorization"] == f"Bearer {second}"


async def test_a_token_dead_on_arrival_is_replaced(sentinel: World) -> None:
    async with sentinel() as w:
        w.entra.faults.inject(FaultKind.EXPIRED_TOKEN, route="token")
        result = await w.client.upload([indicator(0)])

        assert result.accepted == (0,)
        assert [t.already_expired for t in w.entra.tokens_issued] == [True, False]
        assert [r.status for r in uploads(w.sentinel)] == [401, 200]


async def test_persistent_401_is_authentication_failed(sentinel: World, log: Log) -> None:
    async with sentinel() as w:
        w.sentinel.faults.inject(FaultKind.EXPIRED_TOKEN, route="stix_upload", times=5)
        error = await upload_fails(w, AuthenticationFailed)

        assert error.status == 401
        assert [r.status for r in uploads(w.sentinel)] == [401, 401]  # refreshed once, no loop
        assert len(w.entra.tokens_issued) == 2
        assert_keeps_secrets(w, error)
        for secret in (CLIENT_SECRET, *issued(w.entra)):
            assert secret not in log.text


async def test_legacy_api_persistent_401_is_authentication_failed(sentinel: World) -> None:
    async with sentinel(api=SentinelApi.UPLOAD_INDICATORS) as w:
        w.sentinel.faults.inject(FaultKind.EXPIRED_TOKEN, route="legacy_upload", times=2)
        error = await upload_fails(w, AuthenticationFailed)
        assert "Access token is missing or invalid" in str(error)
        assert_keeps_secrets(w, error)


# ---- rate limits ----------------------------------------------------------------------------


async def test_429_with_retry_after_header(sentinel: World) -> None:
    async with sentinel() as w:
        w.sentinel.faults.inject(
            FaultKind.RATE_LIMIT, route="stix_upload", retry_after_s=17, message_retry_s=99
        )
        error = await upload_fails(w, RateLimited)
        assert error.retry_after_s == 17.0  # the header wins over the text
        assert len(uploads(w.sentinel)) == 1  # single attempt: the uploader owns the wait
        assert_keeps_secrets(w, error)


@pytest.mark.parametrize("api", list(SentinelApi))
async def test_429_with_only_the_message_text(sentinel: World, api: SentinelApi) -> None:
    async with sentinel(api=api) as w:
        w.sentinel.faults.inject(FaultKind.RATE_LIMIT, route=ROUTES[api], message_retry_s=23)
        error = await upload_fails(w, RateLimited)
        assert error.retry_after_s == 23.0
        assert "Try again in 23 seconds" in str(error)
        assert len(uploads(w.sentinel, api)) == 1


async def test_the_real_quota_is_rate_limited_with_the_servers_wait(sentinel: World) -> None:
    async with sentinel(requests_per_minute=2, window_s=60.0) as w:
        await w.client.upload([indicator(0)])
        await w.client.upload([indicator(1)])
        error = await upload_fails(w, RateLimited, [indicator(2)])
        assert 1.0 <= error.retry_after_s <= 60.0
        assert [r.status for r in uploads(w.sentinel)] == [200, 200, 429]


# ---- transient failures ---------------------------------------------------------------------


@pytest.mark.parametrize("api", list(SentinelApi))
@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_5xx_is_upstream_unavailable(sentinel: World, status: int, api: SentinelApi) -> None:
    async with sentinel(api=api) as w:
        w.sentinel.faults.inject(FaultKind.SERVER_ERROR, route=ROUTES[api], status=status)
        error = await upload_fails(w, UpstreamUnavailable)
        assert error.status == status
        assert len(uploads(w.sentinel, api)) == 1
        assert_keeps_secrets(w, error)


async def test_empty_500_is_upstream_unavailable(sentinel: World) -> None:
    async with sentinel() as w:
        w.sentinel.faults.inject(FaultKind.EMPTY_500, route="stix_upload")
        error = await upload_fails(w, UpstreamUnavailable)
        assert error.status == 500
        assert "no message" in str(error)


@pytest.mark.parametrize("api", list(SentinelApi))
async def test_timeout_is_upstream_unavailable(sentinel: World, api: SentinelApi) -> None:
    async with sentinel(api=api, timeout_s=0.5) as w:
        # Warm the token first, so only the Sentinel request meets the short timeout.
        await w.tokens.token("https://management.azure.com/.default")
        w.sentinel.faults.inject(FaultKind.TIMEOUT, route=ROUTES[api], delay_s=1.0)
        error = await upload_fails(w, UpstreamUnavailable)
        assert error.status is None
        assert "timed out" in str(error)
        assert isinstance(error.__cause__, TimeoutError)
        assert_keeps_secrets(w, error)


@pytest.mark.parametrize("api", list(SentinelApi))
async def test_connection_reset_is_upstream_unavailable(sentinel: World, api: SentinelApi) -> None:
    async with sentinel(api=api) as w:
        w.sentinel.faults.inject(FaultKind.RESET, route=ROUTES[api])
        error = await upload_fails(w, UpstreamUnavailable)
        assert "connection" in str(error)
        assert w.sentinel.store == {}
        assert_keeps_secrets(w, error)


async def test_an_undecodable_success_body_is_malformed_response(sentinel: World) -> None:
    async with sentinel() as w:
        w.sentinel.faults.inject(FaultKind.MALFORMED_JSON, route="stix_upload")
        await upload_fails(w, MalformedResponse)


async def test_a_peer_echoing_the_token_never_puts_it_in_the_error(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    token = "eyJ.echoed-bearer-token.sig"

    async def echo(request: web.Request) -> web.Response:
        body = {"error": {"code": "Bad", "message": f"got {request.headers['Authorization']}"}}
        return web.json_response(body, status=400)

    with pytest.raises(BatchRejected) as caught:
        await upload_to_one_route(server_ssl, client_ssl, echo, [indicator(0)], token=token)
    assert "got Bearer ********" in str(caught.value)
    assert_no_secret(caught.value, token)


# ---- bodies the simulator never sends ---------------------------------------------------


async def upload_two_answered_with(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext, body: bytes
) -> UploadResult:
    """Upload two records to a one-route server that answers 200 with ``body``."""

    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=200, body=body, content_type="application/json")

    return await upload_to_one_route(server_ssl, client_ssl, answer, [indicator(0), indicator(1)])


@pytest.mark.parametrize("body", [b"[]", b'"x"', b"null", b"1", b'[{"recordIndex": 0}]'])
async def test_a_success_body_that_is_not_an_object_is_malformed_response(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext, body: bytes
) -> None:
    # It might be a refusal in a shape we do not know: no record may pass as accepted.
    with pytest.raises(MalformedResponse):
        await upload_two_answered_with(server_ssl, client_ssl, body)


@pytest.mark.parametrize("body", [b"", b"  \n", b"{}", b'{"errors": null}', b'{"errors": []}'])
async def test_an_empty_or_error_free_success_body_accepts_every_record(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext, body: bytes
) -> None:
    result = await upload_two_answered_with(server_ssl, client_ssl, body)
    assert result == UploadResult(accepted=(0, 1), rejected=())


# ---- TLS ------------------------------------------------------------------------------------


async def test_a_refused_certificate_is_tls_verification_failed(
    server_ssl: ssl.SSLContext,
) -> None:
    async with (
        SentinelSimulator(server_ssl, minter=TokenMinter(), workspace_id=WORKSPACE) as sen,
        open_session(client_context(None)) as untrusting,  # the system store only
    ):
        client = SentinelClient(untrusting, FixedTokens(), base_url=sen.url, workspace_id=WORKSPACE)
        with pytest.raises(TlsVerificationFailed) as caught:
            await client.upload([indicator(0)])
        assert isinstance(caught.value.__cause__, aiohttp.ClientConnectorCertificateError)
        assert "SSLCertVerificationError" in str(caught.value)
        assert sen.recorder.requests == []
        assert_no_secret(caught.value, FixedTokens.TOKEN)


async def test_a_handshake_dropped_by_the_network_is_upstream_unavailable(
    client_ssl: ssl.SSLContext,
) -> None:
    async with hang_up_server() as url, open_session(client_ssl) as session:
        client = SentinelClient(session, FixedTokens(), base_url=url, workspace_id=WORKSPACE)
        with pytest.raises(UpstreamUnavailable) as caught:
            await client.upload([indicator(0)])
        assert "connection problem" in str(caught.value)
