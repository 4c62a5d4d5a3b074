"""The Sentinel client against the Entra ID and Sentinel simulators over real TLS, with the real
azure-identity async credentials fetching the tokens. One test per behaviour or fault.

The client makes a single attempt (the uploader owns waiting), so each test asserts the error it
raised, the requests the simulators recorded, and the tokens Entra issued.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from shared.adapters.http import open_session
from shared.adapters.sentinel_client import RecordError, SentinelApi, SentinelClient, UploadResult
from shared.core.errors import (
    BatchRejected,
    DestinationNotFound,
)
from simulators.faults import SCHEMA_CHANGED, FaultKind
from tests.clients.peers import World
from tests.clients.sentinel_world import (
    CLIENT_ID,
    FEDERATED_CLIENT_ID,
    MISSING_PATTERN,
    ROUTES,
    WORKSPACE,
    assert_keeps_secrets,
    assert_no_secret,
    indicator,
    upload_fails,
    upload_to_one_route,
    uploads,
)

# ---- success --------------------------------------------------------------------------------


@pytest.mark.parametrize("api", list(SentinelApi))
async def test_upload_stores_every_object_through_either_api(
    sentinel: World, api: SentinelApi
) -> None:
    objects = [indicator(n) for n in range(3)]
    async with sentinel(api=api) as w:
        result = await w.client.upload(objects)

        assert result == UploadResult(accepted=(0, 1, 2), rejected=())
        assert set(w.sentinel.store) == {o["id"] for o in objects}
        (request,) = uploads(w.sentinel, api)
        body = request.json()
        assert body["sourcesystem"] == "Mandiant Threat Intelligence"
        assert body["stixobjects" if api is SentinelApi.STIX_OBJECTS else "value"] == objects
        # The real azure-identity async client: one token request, the management audience.
        (token,) = w.entra.tokens_issued
        assert request.headers["Authorization"] == f"Bearer {token.access_token}"
        assert request.headers["Content-Type"] == "application/json"
        assert token.audience == "https://management.azure.com"
        assert token.client_id == CLIENT_ID


async def test_the_token_is_cached_across_uploads(sentinel: World) -> None:
    async with sentinel() as w:
        for n in range(3):
            await w.client.upload([indicator(n)])
        assert len(w.entra.tokens_issued) == 1
        assert len(uploads(w.sentinel)) == 3


async def test_workload_identity_credential_uploads(sentinel: World, tmp_path: Path) -> None:
    token_file = tmp_path / "azure-identity-token"
    async with sentinel(federated_token_file=token_file) as w:
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


class _NoTokens:
    async def token(self, scope: str) -> str:
        raise AssertionError("unused")

    async def refresh(self, scope: str) -> str:
        raise AssertionError("unused")


# ---- per-record and whole-batch refusals ----------------------------------------------------


@pytest.mark.parametrize("error_key", ["errorMessages", "validationErrorMessages"])
@pytest.mark.parametrize("api", list(SentinelApi))
async def test_partial_record_errors_are_reported_per_record(
    sentinel: World, error_key: str, api: SentinelApi
) -> None:
    objects = [indicator(0), indicator(1, pattern=None), indicator(2), indicator(3)]
    async with sentinel(api=api, error_key=error_key) as w:
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


async def test_a_batch_sentinel_refuses_is_batch_rejected(sentinel: World) -> None:
    async with sentinel() as w:
        refused = [indicator(0, pattern=None), indicator(1, created=None)]
        error = await upload_fails(w, BatchRejected, refused)
        assert error.status == 400
        assert "None of the 2 objects" in str(error)
        assert w.sentinel.store == {}
        assert_keeps_secrets(w, error)


@pytest.mark.parametrize("error_key", ["errorMessages", "validationErrorMessages"])
@pytest.mark.parametrize("api", list(SentinelApi))
async def test_a_400_that_names_records_carries_each_with_its_messages(
    sentinel: World, error_key: str, api: SentinelApi
) -> None:
    """Every record fails: the simulator answers 400 with ``errors[]`` in either envelope."""
    async with sentinel(api=api, error_key=error_key) as w:
        refused = [indicator(0, pattern=None), indicator(1, pattern=None)]
        error = await upload_fails(w, BatchRejected, refused)
        assert error.records == (
            RecordError(index=0, messages=(MISSING_PATTERN,)),
            RecordError(index=1, messages=(MISSING_PATTERN,)),
        )
        overall = "None of the 2 objects in the request passed validation."
        legacy = api is SentinelApi.UPLOAD_INDICATORS
        assert error.detail == (overall if legacy else f"InvalidStixObjects: {overall}")


@pytest.mark.parametrize("api", list(SentinelApi))
async def test_a_400_naming_no_record_has_no_records(sentinel: World, api: SentinelApi) -> None:
    async with sentinel(api=api) as w:
        w.sentinel.faults.inject(FaultKind.REJECT_ALL, route=ROUTES[api])
        error = await upload_fails(w, BatchRejected, [indicator(0), indicator(1)])
        assert error.records == ()
        assert error.detail.endswith(SCHEMA_CHANGED)
        assert SCHEMA_CHANGED in str(error)
        assert w.sentinel.store == {}


async def test_a_400_naming_some_records_names_exactly_those(sentinel: World) -> None:
    objects = [indicator(n) for n in range(4)]
    async with sentinel() as w:
        w.sentinel.faults.inject(FaultKind.REJECT_RECORDS, record_indexes=(2,))
        error = await upload_fails(w, BatchRejected, objects)
        [record] = error.records
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


async def test_a_wrong_workspace_is_destination_not_found(sentinel: World) -> None:
    other = "00000000-0000-4000-8000-0000000000ff"
    async with sentinel(workspace_id=other) as w:
        error = await upload_fails(w, DestinationNotFound)
        assert other in str(error)
        assert [r.status for r in uploads(w.sentinel)] == [404]
        assert_keeps_secrets(w, error)
