"""The Sentinel client against the Entra ID and Sentinel simulators over real TLS, with the real
azure-identity async credentials fetching the tokens. One test per behaviour or fault.

The client makes a single attempt (the uploader owns waiting), so each test asserts the error it
raised, the requests the simulators recorded, and the tokens Entra issued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from shared.adapters.credentials import TokenProvider, credential_factory
from shared.adapters.http import open_session
from shared.adapters.sentinel_client import RecordError, SentinelApi, SentinelClient, UploadResult
from shared.adapters.tls import client_context
from shared.core.errors import (
    AuthenticationFailed,
    BatchRejected,
    DestinationNotFound,
    MalformedResponse,
    RateLimited,
    TlsVerificationFailed,
    UpstreamUnavailable,
)
from shared.core.secrets import Secret
from simulators.entra import EntraSimulator
from simulators.faults import SCHEMA_CHANGED, FaultKind
from simulators.sentinel import SentinelSimulator
from simulators.tokens import TokenMinter
from tests.clients.peers import hang_up_server, one_route

TENANT = "00000000-0000-4000-8000-0000000000aa"
CLIENT_ID = "00000000-0000-4000-8000-0000000000c1"
FEDERATED_CLIENT_ID = "00000000-0000-4000-8000-0000000000c2"
CLIENT_SECRET = "sim-client-secret-0123456789"
WORKSPACE = "00000000-0000-4000-8000-0000000000b0"
MISSING_PATTERN = "Error for Property=pattern: Required property is missing. Actual value: NULL."
ROUTES = {SentinelApi.STIX_OBJECTS: "stix_upload", SentinelApi.UPLOAD_INDICATORS: "legacy_upload"}
STIX_PATH = "/workspaces/{ws}/threat-intelligence-stix-objects:upload"


def indicator(n: int, **overrides: Any) -> dict[str, Any]:
    """A valid STIX 2.1 indicator, distinct per ``n``."""
    obj: dict[str, Any] = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--{uuid.uuid5(uuid.NAMESPACE_URL, f'test-{n}')}",
        "created": "2025-05-01T00:00:00.000Z",
        "modified": "2025-05-01T00:00:00.000Z",
        "name": f"10.0.0.{n}",
        "pattern": f"[ipv4-addr:value = '10.0.0.{n}']",
        "pattern_type": "stix",
        "valid_from": "2025-05-01T00:00:00.000Z",
        "valid_until": "2099-05-08T00:00:00.000Z",
        "confidence": 80,
    }
    obj.update(overrides)
    return obj


@contextlib.asynccontextmanager
async def world(
    server_ssl: ssl.SSLContext,
    client_ssl: ssl.SSLContext,
    *,
    api: SentinelApi = SentinelApi.STIX_OBJECTS,
    workspace_id: str = WORKSPACE,
    timeout_s: float = 10.0,
    federated_token_file: Path | None = None,
    **sentinel: Any,
) -> AsyncIterator[SimpleNamespace]:
    minter = TokenMinter()
    async with (
        EntraSimulator(server_ssl, minter=minter, tenant_id=TENANT) as entra,
        SentinelSimulator(server_ssl, minter=minter, workspace_id=WORKSPACE, **sentinel) as sen,
        open_session(client_ssl, timeout_s=timeout_s) as session,
    ):
        entra.add_client(CLIENT_ID, CLIENT_SECRET)
        entra.add_federated_client(FEDERATED_CLIENT_ID)
        if federated_token_file is not None:
            assertion = entra.issue_federated_assertion(FEDERATED_CLIENT_ID)
            await asyncio.to_thread(federated_token_file.write_text, assertion)
        factory = credential_factory(
            session=session,
            tenant_id=TENANT,
            client_id=FEDERATED_CLIENT_ID if federated_token_file else CLIENT_ID,
            authority_host=entra.url,
            client_secret=None if federated_token_file else Secret(CLIENT_SECRET),
            federated_token_file=federated_token_file,
        )
        tokens = TokenProvider(factory, redact=(Secret(CLIENT_SECRET),))
        try:
            yield SimpleNamespace(
                entra=entra,
                sentinel=sen,
                tokens=tokens,
                client=SentinelClient(
                    session, tokens, api=api, base_url=sen.url, workspace_id=workspace_id
                ),
            )
        finally:
            await tokens.aclose()


def issued(entra: EntraSimulator) -> list[str]:
    return [t.access_token for t in entra.tokens_issued]


def uploads(sentinel: SentinelSimulator, api: SentinelApi = SentinelApi.STIX_OBJECTS) -> list[Any]:
    return sentinel.recorder.of(ROUTES[api])


def assert_no_secret(exc: BaseException, *secrets: str) -> None:
    """Neither the error nor anything it chains to shows a secret in ``str`` or ``repr``."""
    seen: BaseException | None = exc
    while seen is not None:
        for text in (str(seen), repr(seen), repr(seen.args)):
            for secret in secrets:
                assert secret not in text, f"secret leaked in {type(seen).__name__}"
        seen = seen.__cause__ or seen.__context__


# ---- success --------------------------------------------------------------------------------


@pytest.mark.parametrize("api", list(SentinelApi))
async def test_upload_stores_every_object_through_either_api(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext, api: SentinelApi
) -> None:
    objects = [indicator(n) for n in range(3)]
    async with world(server_ssl, client_ssl, api=api) as w:
        result = await w.client.upload(objects)

        assert result == UploadResult(accepted=(0, 1, 2), rejected=())
        assert set(w.sentinel.store) == {o["id"] for o in objects}
        (request,) = uploads(w.sentinel, api)
        body = request.json()
        assert body["sourcesystem"] == "Mandiant Threat Intelligence"
        assert body["stixobjects" if api is SentinelApi.STIX_OBJECTS else "value"] == objects
        assert request.headers["Authorization"] == f"Bearer {issued(w.entra)[0]}"
        assert request.headers["Content-Type"] == "application/json"
        # The real azure-identity async client: one token request, the management audience.
        (token,) = w.entra.tokens_issued
        assert token.audience == "https://management.azure.com"
        assert token.client_id == CLIENT_ID


async def test_the_token_is_cached_across_uploads(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    async with world(server_ssl, client_ssl) as w:
        for n in range(3):
            await w.client.upload([indicator(n)])
        assert len(w.entra.tokens_issued) == 1
        assert len(uploads(w.sentinel)) == 3


async def test_workload_identity_credential_uploads(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext, tmp_path: Path
) -> None:
    token_file = tmp_path / "azure-identity-token"
    async with world(server_ssl, client_ssl, federated_token_file=token_file) as w:
        result = await w.client.upload([indicator(1)])
        assert result.accepted == (0,)
        (token,) = w.entra.tokens_issued
        assert token.client_id == FEDERATED_CLIENT_ID
        (token_request,) = w.entra.recorder.of("token")
        assert b"client_assertion_type=" in token_request.body
        assert b"client_secret" not in token_request.body


def test_more_than_100_objects_is_refused_before_sending() -> None:
    class NoTokens:
        async def token(self, scope: str) -> str:
            raise AssertionError("no request may be made")

        async def refresh(self, scope: str) -> str:
            raise AssertionError("no request may be made")

    async def run() -> None:
        async with open_session(ssl.create_default_context()) as session:
            client = SentinelClient(
                session, NoTokens(), base_url="https://sentinel.example", workspace_id=WORKSPACE
            )
            with pytest.raises(ValueError, match="100"):
                await client.upload([indicator(n) for n in range(101)])
            with pytest.raises(ValueError, match=r"1\.\.100"):
                await client.upload([])

    asyncio.run(run())


@pytest.mark.parametrize(
    ("api", "url"),
    [
        (
            SentinelApi.STIX_OBJECTS,
            "https://ti.example/workspaces/ws%2F1/threat-intelligence-stix-objects:upload"
            "?api-version=2024-02-01-preview",
        ),
        (
            SentinelApi.UPLOAD_INDICATORS,
            "https://ti.example/ws%2F1/threatintelligence:upload-indicators?api-version=2022-07-01",
        ),
    ],
)
async def test_urls_per_api(client_ssl: ssl.SSLContext, api: SentinelApi, url: str) -> None:
    async with open_session(client_ssl) as session:
        client = SentinelClient(
            session, _NoTokens(), api=api, base_url="https://ti.example/", workspace_id="ws/1"
        )
        assert client.url == url
        with pytest.raises(ValueError, match="https"):
            SentinelClient(session, _NoTokens(), base_url="http://ti.example", workspace_id="w")
        with pytest.raises(ValueError, match="reserved"):
            SentinelClient(
                session,
                _NoTokens(),
                base_url="https://ti.example",
                workspace_id="w",
                source_system="Microsoft Sentinel",
            )


class FixedTokens:
    """Hands out one made-up bearer token: for peers that do not check it."""

    TOKEN = "eyJ.fixed-bearer-token.sig"

    def __init__(self, token: str = TOKEN) -> None:
        self._token = token

    async def token(self, scope: str) -> str:
        return self._token

    async def refresh(self, scope: str) -> str:
        return self._token


class _NoTokens:
    async def token(self, scope: str) -> str:
        raise AssertionError("unused")

    async def refresh(self, scope: str) -> str:
        raise AssertionError("unused")


async def upload_to_one_route(
    server_ssl: ssl.SSLContext,
    client_ssl: ssl.SSLContext,
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    objects: list[dict[str, Any]],
    *,
    token: str = FixedTokens.TOKEN,
) -> UploadResult:
    """Upload ``objects`` to a one-route server whose STIX upload answers with ``handler``."""
    async with (
        one_route(server_ssl, STIX_PATH, handler) as url,
        open_session(client_ssl) as session,
    ):
        client = SentinelClient(session, FixedTokens(token), base_url=url, workspace_id=WORKSPACE)
        return await client.upload(objects)


# ---- per-record and whole-batch refusals ----------------------------------------------------


@pytest.mark.parametrize("error_key", ["errorMessages", "validationErrorMessages"])
@pytest.mark.parametrize("api", list(SentinelApi))
async def test_partial_record_errors_are_reported_per_record(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext, error_key: str, api: SentinelApi
) -> None:
    objects = [indicator(0), indicator(1, pattern=None), indicator(2), indicator(3)]
    async with world(server_ssl, client_ssl, api=api, error_key=error_key) as w:
        w.sentinel.faults.inject(FaultKind.PARTIAL_ERRORS, route=ROUTES[api], record_indexes=(3,))
        result = await w.client.upload(objects)

        assert result.accepted == (0, 2)
        assert [r.index for r in result.rejected] == [1, 3]
        missing_pattern, transient = result.rejected
        assert missing_pattern == RecordError(
            index=1,
            messages=(MISSING_PATTERN,),
        )
        assert "could not be ingested" in transient.messages[0]
        assert set(w.sentinel.store) == {objects[0]["id"], objects[2]["id"]}


async def test_a_batch_sentinel_refuses_is_batch_rejected(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    async with world(server_ssl, client_ssl) as w:
        with pytest.raises(BatchRejected) as caught:
            await w.client.upload([indicator(0, pattern=None), indicator(1, created=None)])
        assert caught.value.status == 400
        assert "None of the 2 objects" in str(caught.value)
        assert w.sentinel.store == {}
        assert_no_secret(caught.value, CLIENT_SECRET, *issued(w.entra))


@pytest.mark.parametrize("error_key", ["errorMessages", "validationErrorMessages"])
@pytest.mark.parametrize("api", list(SentinelApi))
async def test_a_400_that_names_records_carries_each_with_its_messages(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext, error_key: str, api: SentinelApi
) -> None:
    """Every record fails: the simulator answers 400 with ``errors[]`` in either envelope."""
    async with world(server_ssl, client_ssl, api=api, error_key=error_key) as w:
        with pytest.raises(BatchRejected) as caught:
            await w.client.upload([indicator(0, pattern=None), indicator(1, pattern=None)])
        error = caught.value
        assert error.records == (
            RecordError(index=0, messages=(MISSING_PATTERN,)),
            RecordError(index=1, messages=(MISSING_PATTERN,)),
        )
        overall = "None of the 2 objects in the request passed validation."
        legacy = api is SentinelApi.UPLOAD_INDICATORS
        assert error.detail == (overall if legacy else f"InvalidStixObjects: {overall}")


@pytest.mark.parametrize("api", list(SentinelApi))
async def test_a_400_naming_no_record_has_no_records(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext, api: SentinelApi
) -> None:
    async with world(server_ssl, client_ssl, api=api) as w:
        w.sentinel.faults.inject(FaultKind.REJECT_ALL, route=ROUTES[api])
        with pytest.raises(BatchRejected) as caught:
            await w.client.upload([indicator(0), indicator(1)])
        assert caught.value.records == ()
        assert caught.value.detail.endswith(SCHEMA_CHANGED)
        assert SCHEMA_CHANGED in str(caught.value)
        assert w.sentinel.store == {}


async def test_a_400_naming_some_records_names_exactly_those(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    objects = [indicator(n) for n in range(4)]
    async with world(server_ssl, client_ssl) as w:
        w.sentinel.faults.inject(FaultKind.REJECT_RECORDS, record_indexes=(2,))
        with pytest.raises(BatchRejected) as caught:
            await w.client.upload(objects)
        [record] = caught.value.records
        assert record.index == 2
        assert record.messages == (
            "Error for Property=pattern: The pattern could not be parsed. "
            f"Actual value: {objects[2]['pattern']}.",
        )
        assert w.sentinel.store == {}


@pytest.mark.parametrize(
    "errors",
    [
        [{"recordIndex": 2, "errorMessages": ["out of range"]}],
        [{"recordIndex": 0, "errorMessages": ["ok"]}, {"recordIndex": -1}],
        [{"recordIndex": True, "errorMessages": ["a bool is no index"]}],
        [{"errorMessages": ["no index"]}],
        ["not an entry"],
        {"recordIndex": 0},
        [],
    ],
)
async def test_a_400_whose_errors_name_no_record_of_the_request_names_none(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext, errors: Any
) -> None:
    """A list we cannot map onto this request's records says nothing about who is at fault:
    the uploader must then isolate the record itself, not dead-letter on a guess."""

    async def refuse(request: web.Request) -> web.Response:
        body = {"error": {"code": "InvalidStixObjects", "message": "refused"}, "errors": errors}
        return web.json_response(body, status=400)

    with pytest.raises(BatchRejected) as caught:
        await upload_to_one_route(server_ssl, client_ssl, refuse, [indicator(0), indicator(1)])
    assert caught.value.records == ()
    assert caught.value.detail == "InvalidStixObjects: refused"


async def test_record_messages_of_a_400_never_carry_the_token(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    token = "eyJ.echoed-bearer-token.sig"

    async def echo(request: web.Request) -> web.Response:
        seen = request.headers["Authorization"]
        body = {"errors": [{"recordIndex": 0, "validationErrorMessages": [f"got {seen}"]}]}
        return web.json_response(body, status=400)

    with pytest.raises(BatchRejected) as caught:
        await upload_to_one_route(server_ssl, client_ssl, echo, [indicator(0)], token=token)
    assert caught.value.records == (RecordError(index=0, messages=("got Bearer ********",)),)
    assert_no_secret(caught.value, token)


async def test_a_wrong_workspace_is_destination_not_found(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    other = "00000000-0000-4000-8000-0000000000ff"
    async with world(server_ssl, client_ssl, workspace_id=other) as w:
        with pytest.raises(DestinationNotFound) as caught:
            await w.client.upload([indicator(0)])
        assert other in str(caught.value)
        assert [r.status for r in uploads(w.sentinel)] == [404]
        assert_no_secret(caught.value, CLIENT_SECRET, *issued(w.entra))


# ---- authentication -------------------------------------------------------------------------


@pytest.mark.parametrize("api", list(SentinelApi))
async def test_401_refreshes_the_token_and_retries_once(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext, api: SentinelApi
) -> None:
    async with world(server_ssl, client_ssl, api=api) as w:
        await w.client.upload([indicator(0)])
        w.sentinel.faults.inject(FaultKind.EXPIRED_TOKEN, route=ROUTES[api])
        result = await w.client.upload([indicator(1)])

        assert result.accepted == (0,)
        assert [r.status for r in uploads(w.sentinel, api)] == [200, 401, 200]
        first, second = issued(w.entra)
        assert first != second  # a brand-new token, not azure-identity's cached one
        assert uploads(w.sentinel, api)[-1].headers["Authorization"] == f"Bearer {second}"


async def test_a_token_dead_on_arrival_is_replaced(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    async with world(server_ssl, client_ssl) as w:
        w.entra.faults.inject(FaultKind.EXPIRED_TOKEN, route="token")
        result = await w.client.upload([indicator(0)])

        assert result.accepted == (0,)
        assert [t.already_expired for t in w.entra.tokens_issued] == [True, False]
        assert [r.status for r in uploads(w.sentinel)] == [401, 200]


async def test_persistent_401_is_authentication_failed(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with world(server_ssl, client_ssl) as w:
        w.sentinel.faults.inject(FaultKind.EXPIRED_TOKEN, route="stix_upload", times=5)
        with pytest.raises(AuthenticationFailed) as caught:
            await w.client.upload([indicator(0)])

        assert caught.value.status == 401
        assert [r.status for r in uploads(w.sentinel)] == [401, 401]  # refreshed once, no loop
        assert len(w.entra.tokens_issued) == 2
        assert_no_secret(caught.value, CLIENT_SECRET, *issued(w.entra))
        for secret in (CLIENT_SECRET, *issued(w.entra)):
            assert secret not in caplog.text


async def test_legacy_api_persistent_401_is_authentication_failed(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    async with world(server_ssl, client_ssl, api=SentinelApi.UPLOAD_INDICATORS) as w:
        w.sentinel.faults.inject(FaultKind.EXPIRED_TOKEN, route="legacy_upload", times=2)
        with pytest.raises(AuthenticationFailed) as caught:
            await w.client.upload([indicator(0)])
        assert "Access token is missing or invalid" in str(caught.value)
        assert_no_secret(caught.value, CLIENT_SECRET, *issued(w.entra))


# ---- rate limits ----------------------------------------------------------------------------


async def test_429_with_retry_after_header(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    async with world(server_ssl, client_ssl) as w:
        w.sentinel.faults.inject(
            FaultKind.RATE_LIMIT, route="stix_upload", retry_after_s=17, message_retry_s=99
        )
        with pytest.raises(RateLimited) as caught:
            await w.client.upload([indicator(0)])
        assert caught.value.retry_after_s == 17.0  # the header wins over the text
        assert len(uploads(w.sentinel)) == 1  # single attempt: the uploader owns the wait
        assert_no_secret(caught.value, CLIENT_SECRET, *issued(w.entra))


@pytest.mark.parametrize("api", list(SentinelApi))
async def test_429_with_only_the_message_text(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext, api: SentinelApi
) -> None:
    async with world(server_ssl, client_ssl, api=api) as w:
        w.sentinel.faults.inject(FaultKind.RATE_LIMIT, route=ROUTES[api], message_retry_s=23)
        with pytest.raises(RateLimited) as caught:
            await w.client.upload([indicator(0)])
        assert caught.value.retry_after_s == 23.0
        assert "Try again in 23 seconds" in str(caught.value)
        assert len(uploads(w.sentinel, api)) == 1


async def test_the_real_quota_is_rate_limited_with_the_servers_wait(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    async with world(server_ssl, client_ssl, requests_per_minute=2, window_s=60.0) as w:
        await w.client.upload([indicator(0)])
        await w.client.upload([indicator(1)])
        with pytest.raises(RateLimited) as caught:
            await w.client.upload([indicator(2)])
        assert 1.0 <= caught.value.retry_after_s <= 60.0
        assert [r.status for r in uploads(w.sentinel)] == [200, 200, 429]


# ---- transient failures ---------------------------------------------------------------------


@pytest.mark.parametrize("api", list(SentinelApi))
@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_5xx_is_upstream_unavailable(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext, status: int, api: SentinelApi
) -> None:
    async with world(server_ssl, client_ssl, api=api) as w:
        w.sentinel.faults.inject(FaultKind.SERVER_ERROR, route=ROUTES[api], status=status)
        with pytest.raises(UpstreamUnavailable) as caught:
            await w.client.upload([indicator(0)])
        assert caught.value.status == status
        assert len(uploads(w.sentinel, api)) == 1
        assert_no_secret(caught.value, CLIENT_SECRET, *issued(w.entra))


async def test_empty_500_is_upstream_unavailable(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    async with world(server_ssl, client_ssl) as w:
        w.sentinel.faults.inject(FaultKind.EMPTY_500, route="stix_upload")
        with pytest.raises(UpstreamUnavailable) as caught:
            await w.client.upload([indicator(0)])
        assert caught.value.status == 500
        assert "no message" in str(caught.value)


@pytest.mark.parametrize("api", list(SentinelApi))
async def test_timeout_is_upstream_unavailable(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext, api: SentinelApi
) -> None:
    async with world(server_ssl, client_ssl, api=api, timeout_s=0.5) as w:
        # Warm the token first, so only the Sentinel request meets the short timeout.
        await w.tokens.token("https://management.azure.com/.default")
        w.sentinel.faults.inject(FaultKind.TIMEOUT, route=ROUTES[api], delay_s=1.0)
        with pytest.raises(UpstreamUnavailable) as caught:
            await w.client.upload([indicator(0)])
        assert caught.value.status is None
        assert "timed out" in str(caught.value)
        assert isinstance(caught.value.__cause__, TimeoutError)
        assert_no_secret(caught.value, CLIENT_SECRET, *issued(w.entra))


@pytest.mark.parametrize("api", list(SentinelApi))
async def test_connection_reset_is_upstream_unavailable(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext, api: SentinelApi
) -> None:
    async with world(server_ssl, client_ssl, api=api) as w:
        w.sentinel.faults.inject(FaultKind.RESET, route=ROUTES[api])
        with pytest.raises(UpstreamUnavailable) as caught:
            await w.client.upload([indicator(0)])
        assert "connection" in str(caught.value)
        assert w.sentinel.store == {}
        assert_no_secret(caught.value, CLIENT_SECRET, *issued(w.entra))


async def test_an_undecodable_success_body_is_malformed_response(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    async with world(server_ssl, client_ssl) as w:
        w.sentinel.faults.inject(FaultKind.MALFORMED_JSON, route="stix_upload")
        with pytest.raises(MalformedResponse):
            await w.client.upload([indicator(0)])


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
