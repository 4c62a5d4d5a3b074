"""The Sentinel upload simulator: both APIs over real TLS, as strict as spec §1, §2 and §6.

Each test pins one behaviour the uploader depends on (or must survive), so a change that makes
the fake more lenient than Sentinel fails here first.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid
from typing import Any

import aiohttp
import orjson
import pytest
from azure.core import AsyncPipelineClient
from azure.core.pipeline.policies import AsyncBearerTokenCredentialPolicy
from azure.core.pipeline.transport import AioHttpTransport
from azure.core.rest import HttpRequest
from azure.identity.aio import ClientSecretCredential

from shared.core.context import (
    CONTEXT_CREATED,
    Actor,
    actor_content,
    identity_object,
    relationship_content,
    stamped,
)
from simulators.entra import EntraSimulator
from simulators.faults import SCHEMA_CHANGED, FaultKind
from simulators.sentinel import DANGLING, UNREVOKING, ObjectStore, SentinelSimulator
from simulators.sentinel_rows import split_observable
from simulators.tokens import TokenMinter
from tests.simulators.sentinel_uploads import (
    CLIENT,
    LEGACY_401,
    OTHER_CLIENT,
    SOURCE,
    TENANT,
    indicator,
    mint,
    stix_path,
    upload,
)

# -- accepted uploads --------------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True], ids=["stix", "legacy"])
async def test_valid_batch_is_stored_and_answered_with_an_empty_200(
    session: aiohttp.ClientSession, sentinel: SentinelSimulator, legacy: bool
) -> None:
    batch = [indicator(f"198.51.100.{i}") for i in range(100)]
    status, _, body = await upload(session, sentinel, batch, legacy=legacy)
    assert (status, body) == (200, None)
    assert set(sentinel.store) == {obj["id"] for obj in batch}
    assert len(sentinel.rows) == 100
    row = sentinel.rows[0]
    assert row["Data"] == batch[0]
    assert (row["ObservableKey"], row["ObservableValue"]) == ("ipv4-addr:value", "198.51.100.0")
    assert row["SourceSystem"] == SOURCE
    assert row["Tags"] == ["malware:emotet"]
    assert (row["IsActive"], row["Revoked"], row["IsDeleted"], row["Confidence"]) == (
        True,
        False,
        False,
        80,
    )
    assert row["ValidUntil"] == "2099-01-01T00:00:00.000000Z"
    assert ":" in sentinel.recorder.requests[0].path  # the ':' in the path routes fine


async def test_legacy_keys_are_case_insensitive(
    session: aiohttp.ClientSession, sentinel: SentinelSimulator
) -> None:
    body = {"SourceSystem": SOURCE, "Value": [indicator()]}
    status, _, _ = await upload(session, sentinel, legacy=True, body=body)
    assert status == 200
    assert len(sentinel.store) == 1
    status, _, reply = await upload(session, sentinel, body=body)  # the new API is exact
    assert status == 400
    assert reply["error"]["code"] == "InvalidSourceSystem"


async def test_reupload_updates_the_store_and_appends_a_row(
    session: aiohttp.ClientSession, sentinel: SentinelSimulator
) -> None:
    first = indicator()
    second = dict(first, modified="2024-06-01T00:00:00Z", revoked=True)
    assert (await upload(session, sentinel, [first]))[0] == 200
    assert (await upload(session, sentinel, [second]))[0] == 200
    assert sentinel.store == {first["id"]: second}
    assert sentinel.uploads_for(first["id"]) == 2
    assert [r["Revoked"] for r in sentinel.rows] == [False, True]
    assert sentinel.rows[0]["TimeGenerated"] < sentinel.rows[1]["TimeGenerated"]
    assert sentinel.rows[0]["Id"] == sentinel.rows[1]["Id"] != first["id"]
    sentinel.republish()
    assert sentinel.rows[-1]["LastUpdateMethod"] == "LogARepublisher"
    async with session.get(f"{sentinel.url}/_sim/workspace") as resp:
        summary = await resp.json()
    assert (summary["objects"], summary["indicator_rows"]) == (1, 3)


@pytest.mark.parametrize("legacy", [False, True], ids=["stix", "legacy"])
async def test_a_revoked_indicator_stays_revoked(
    session: aiohttp.ClientSession, sentinel: SentinelSimulator, legacy: bool
) -> None:
    """STIX 2.1 revocation is final: a record that would make the id live again fails alone."""
    live, other = indicator(), indicator("198.51.100.9")
    revoked = dict(live, modified="2024-06-01T00:00:00Z", revoked=True)
    assert (await upload(session, sentinel, [live, other], legacy=legacy))[0] == 200
    assert (await upload(session, sentinel, [revoked], legacy=legacy))[0] == 200
    assert sentinel.revoked == {live["id"]}

    again = dict(live, modified="2024-07-01T00:00:00Z")
    status, _, body = await upload(session, sentinel, [again, other], legacy=legacy)
    assert status == 200
    assert body["errors"] == [{"recordIndex": 0, sentinel.error_key: [UNREVOKING]}]
    assert sentinel.store[live["id"]]["revoked"] is True
    assert sentinel.uploads_for(other["id"]) == 2
    # Revoking again (a newer ``modified``) is an update like any other.
    newer = dict(revoked, modified="2024-08-01T00:00:00Z")
    assert (await upload(session, sentinel, [newer], legacy=legacy))[0] == 200
    # Within one request too, and a request of nothing else is refused whole.
    fresh = indicator("192.0.2.44")
    gone = dict(fresh, modified="2024-06-01T00:00:00Z", revoked=True)
    status, _, body = await upload(session, sentinel, [gone, fresh], legacy=legacy)
    assert (status, body["errors"][0]["recordIndex"]) == (200, 1)
    assert (await upload(session, sentinel, [fresh], legacy=legacy))[0] == 400
    assert sentinel.store[fresh["id"]]["revoked"] is True


async def test_other_stix_types_go_to_threat_intel_objects_on_the_new_api_only(
    session: aiohttp.ClientSession, sentinel: SentinelSimulator
) -> None:
    attack_pattern = {
        "type": "attack-pattern",
        "spec_version": "2.1",
        "id": f"attack-pattern--{uuid.uuid4()}",
        "created": "2024-05-01T10:00:00Z",
        "modified": "2024-05-01T10:00:00Z",
        "name": "Spearphishing",
    }
    assert (await upload(session, sentinel, [attack_pattern]))[0] == 200
    assert sentinel.object_rows[0]["StixType"] == "attack-pattern"
    assert sentinel.rows == []
    status, _, body = await upload(session, sentinel, [attack_pattern, indicator()], legacy=True)
    assert status == 200
    assert body["errors"][0]["recordIndex"] == 0
    assert "Only objects of type 'indicator'" in body["errors"][0]["errorMessages"][0]


UPLOADED = "2026-12-08T03:30:00.000Z"


async def test_a_relationship_is_held_only_beside_both_its_ends(
    session: aiohttp.ClientSession, sentinel: SentinelSimulator
) -> None:
    """As a strict workspace: an ``indicates`` relationship whose indicator or actor the
    workspace does not hold is refused alone, naming the missing end; sent after both (in an
    earlier request or earlier in the same one), it is held. The product's context objects
    (``shared.core.context``) are what it is fed."""
    apt = Actor("threat-actor--1", "APT29")
    actor = stamped(actor_content(apt), CONTEXT_CREATED, UPLOADED)
    live = indicator()
    link = stamped(relationship_content(live["id"], apt), CONTEXT_CREATED, UPLOADED)
    status, _, body = await upload(session, sentinel, [link, identity_object()])
    assert status == 200
    [refused] = body["errors"]
    assert refused["recordIndex"] == 0
    assert refused[sentinel.error_key] == [
        f"Error for Property=source_ref: {DANGLING}. Actual value: {live['id']}.",
        f"Error for Property=target_ref: {DANGLING}. Actual value: {actor['id']}.",
    ]
    assert link["id"] not in sentinel.store
    # The ends first, then the relationship, in one request: all held.
    assert (await upload(session, sentinel, [actor, live, link]))[0] == 200
    assert sentinel.store[link["id"]]["target_ref"] == actor["id"]
    assert {row["StixType"] for row in sentinel.object_rows} == {
        "identity",
        "threat-actor",
        "relationship",
    }


def test_observables_are_split_from_single_comparisons_only() -> None:
    assert split_observable("[file:hashes.'SHA-256' = 'ab12']") == ("file:hashes.'SHA-256'", "ab12")
    assert split_observable(r"[file:name = 'C:\\a\'b']") == ("file:name", "C:\\a'b")
    compound = "[file:name = 'x' AND file:hashes.'MD5' = 'ab']"
    assert split_observable(compound) == ("", "")


def test_the_store_reads_like_a_dict_of_what_was_uploaded() -> None:
    store = ObjectStore()
    first, second = indicator(), indicator(value="198.51.100.9")
    store[first["id"]] = first
    store[second["id"]] = second
    store[first["id"]] = dict(first, revoked=True)
    assert store == {first["id"]: dict(first, revoked=True), second["id"]: second}
    assert len(store) == 2
    assert first["id"] in store
    assert "indicator--x" not in store
    assert store.keys() - {second["id"]} == {first["id"]}
    copy = store[second["id"]]
    copy["confidence"] = 1
    assert store[second["id"]] == second  # a read is a copy
    del store[second["id"]]
    assert list(store) == [first["id"]]
    store.clear()
    assert store == {}
    assert not store


# -- authentication ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("missing", "AuthenticationFailed"),
        ("audience", "InvalidAuthenticationTokenAudience"),
        ("expired", "ExpiredAuthenticationToken"),
        ("signature", "InvalidAuthenticationToken"),
        ("garbage", "InvalidAuthenticationToken"),
    ],
)
async def test_bad_tokens_are_401_with_the_hosts_error_shape(
    session: aiohttp.ClientSession, sentinel: SentinelSimulator, case: str, code: str
) -> None:
    tokens = {
        "missing": "",
        "audience": mint(sentinel.minter, audience="https://api.loganalytics.io"),
        "expired": mint(sentinel.minter, now=time.time() - 7200),
        "signature": mint(TokenMinter()),
        "garbage": "not-a-jwt",
    }
    token = tokens[case]
    status, headers, body = await upload(session, sentinel, token=token)
    assert status == 401
    assert body["error"]["code"] == headers["x-ms-error-code"] == code
    assert headers["WWW-Authenticate"].startswith("Bearer ")
    status, _, body = await upload(session, sentinel, token=token, legacy=True)
    assert (status, body) == (401, LEGACY_401)
    assert sentinel.store == {}


@pytest.mark.parametrize(
    "audience",
    [
        "https://management.azure.com",
        "https://management.azure.com/",
        "https://management.core.windows.net",
        "https://management.core.windows.net/",
    ],
)
async def test_all_four_management_audiences_are_accepted(
    session: aiohttp.ClientSession, sentinel: SentinelSimulator, audience: str
) -> None:
    token = mint(sentinel.minter, audience=audience)
    assert (await upload(session, sentinel, token=token))[0] == 200


async def test_real_azure_core_pipeline_with_an_entra_token(
    server_ssl: ssl.SSLContext,
    session: aiohttp.ClientSession,
    sentinel: SentinelSimulator,
) -> None:
    """The stack OpenCTI's connector uses: BearerTokenCredentialPolicy over azure-identity."""
    async with EntraSimulator(server_ssl, minter=sentinel.minter, tenant_id=TENANT) as entra:
        entra.add_client(CLIENT, "secret")
        transport = AioHttpTransport(session=session, session_owner=False)
        credential = ClientSecretCredential(
            TENANT, CLIENT, "secret", authority=entra.url, transport=transport
        )
        policy = AsyncBearerTokenCredentialPolicy(
            credential, "https://management.azure.com/.default"
        )
        client: AsyncPipelineClient[Any, Any] = AsyncPipelineClient(
            base_url=sentinel.url,
            policies=[policy],
            transport=AioHttpTransport(session=session, session_owner=False),
        )
        request = HttpRequest(
            "POST",
            f"{sentinel.url}{stix_path(sentinel)}",
            params={"api-version": "2024-02-01-preview"},
            json={"sourcesystem": SOURCE, "stixobjects": [indicator()]},
        )
        async with credential, client:
            response = await client.send_request(request)
    assert response.status_code == 200
    assert len(sentinel.store) == 1
    assert sentinel.request_log[0].identity == CLIENT


# -- rate limit --------------------------------------------------------------------------------


@pytest.mark.parametrize("sentinel", [{"requests_per_minute": 5, "window_s": 1.0}], indirect=True)
async def test_rate_limit_is_a_sliding_window_per_identity(
    session: aiohttp.ClientSession, sentinel: SentinelSimulator, minter: TokenMinter
) -> None:
    for _ in range(5):
        assert (await upload(session, sentinel))[0] == 200
    status, headers, body = await upload(session, sentinel)
    assert status == 429
    assert headers["Retry-After"] == "1"
    assert body == {
        "statusCode": 429,
        "message": "Rate limit is exceeded. Try again in 1 seconds.",
    }
    other = mint(minter, client=OTHER_CLIENT)
    assert (await upload(session, sentinel, token=other))[0] == 200  # per identity
    await asyncio.sleep(float(headers["Retry-After"]))
    assert (await upload(session, sentinel))[0] == 200  # the window slid
    assert sentinel.max_requests_in_any_window(CLIENT) == 6  # the 429 counts as sent
    assert sentinel.max_requests_in_any_window(CLIENT, admitted_only=True) == 5
    assert sentinel.max_requests_in_any_window(OTHER_CLIENT) == 1
    assert sentinel.max_requests_in_any_window() == 6
    assert sentinel.max_requests_in_any_window(CLIENT, window_s=10.0) == 7


@pytest.mark.parametrize("sentinel", [{"requests_per_minute": 10, "window_s": 0.5}], indirect=True)
async def test_a_client_that_obeys_retry_after_never_exceeds_the_quota(
    session: aiohttp.ClientSession, sentinel: SentinelSimulator
) -> None:
    accepted = 0
    deadline = time.monotonic() + 1.6
    while time.monotonic() < deadline:
        status, headers, _ = await upload(session, sentinel)
        if status == 429:
            # Retry-After is whole seconds; the window here is shorter, so sleep the window.
            assert int(headers["Retry-After"]) >= 1
            await asyncio.sleep(0.5)
        else:
            accepted += 1
    assert accepted >= 20
    assert sentinel.max_requests_in_any_window(CLIENT, admitted_only=True) == 10


# -- faults ------------------------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True], ids=["stix", "legacy"])
async def test_partial_errors_fault_rejects_valid_records(
    session: aiohttp.ClientSession, sentinel: SentinelSimulator, legacy: bool
) -> None:
    route = "legacy_upload" if legacy else "stix_upload"
    sentinel.faults.inject(FaultKind.PARTIAL_ERRORS, route=route, record_indexes=(1, 3, 7))
    batch = [indicator() for _ in range(4)]
    status, _, body = await upload(session, sentinel, batch, legacy=legacy)
    assert status == 200
    assert [e["recordIndex"] for e in body["errors"]] == [1, 3]
    assert body["errors"][0]["errorMessages"][0].startswith("Error for Property=id: ")
    assert set(sentinel.store) == {batch[0]["id"], batch[2]["id"]}
    assert (await upload(session, sentinel, batch, legacy=legacy))[2] is None  # used up


@pytest.mark.parametrize("legacy", [False, True], ids=["stix", "legacy"])
@pytest.mark.parametrize("attributed", [False, True], ids=["unnamed", "named"])
async def test_reject_all_fault_refuses_whole_requests_in_the_apis_envelope(
    session: aiohttp.ClientSession, sentinel: SentinelSimulator, legacy: bool, attributed: bool
) -> None:
    route = "legacy_upload" if legacy else "stix_upload"
    sentinel.faults.inject(FaultKind.REJECT_ALL, route=route, times=2, attributed=attributed)
    batch = [indicator() for _ in range(3)]
    for _ in range(2):
        status, headers, body = await upload(session, sentinel, batch, legacy=legacy)
        assert status == 400
        if legacy:
            assert (body["statusCode"], body["message"]) == (400, SCHEMA_CHANGED)
        else:
            assert body["error"] == {"code": "InvalidStixObjects", "message": SCHEMA_CHANGED}
            assert headers["x-ms-error-code"] == "InvalidStixObjects"
        if attributed:
            expected = [{"recordIndex": i, "errorMessages": [SCHEMA_CHANGED]} for i in range(3)]
            assert body["errors"] == expected
        else:
            assert "errors" not in body
    assert sentinel.store == {}
    assert (await upload(session, sentinel, batch, legacy=legacy))[0] == 200  # used up


async def test_reject_records_fault_refuses_the_request_naming_those_records(
    session: aiohttp.ClientSession, sentinel: SentinelSimulator
) -> None:
    sentinel.faults.inject(FaultKind.REJECT_RECORDS, record_indexes=(0, 2, 9))
    batch = [indicator(f"203.0.113.{n}") for n in range(3)]
    status, _, body = await upload(session, sentinel, batch)
    assert status == 400
    assert [e["recordIndex"] for e in body["errors"]] == [0, 2]
    assert body["errors"][1]["errorMessages"] == [
        "Error for Property=pattern: The pattern could not be parsed. "
        "Actual value: [ipv4-addr:value = '203.0.113.2']."
    ]
    assert sentinel.store == {}


@pytest.mark.parametrize("legacy", [False, True], ids=["stix", "legacy"])
async def test_expired_token_fault_kills_the_token_until_a_new_one_is_used(
    session: aiohttp.ClientSession, sentinel: SentinelSimulator, legacy: bool
) -> None:
    sentinel.faults.inject(FaultKind.EXPIRED_TOKEN)
    token = mint(sentinel.minter)
    status, _, body = await upload(session, sentinel, token=token, legacy=legacy)
    assert status == 401
    if legacy:
        assert body == LEGACY_401
    else:
        assert body["error"]["code"] == "ExpiredAuthenticationToken"
    assert (await upload(session, sentinel, token=token, legacy=legacy))[0] == 401
    assert (await upload(session, sentinel, legacy=legacy))[0] == 200  # a fresh token works


async def test_generic_faults_are_observable_and_counted(
    session: aiohttp.ClientSession, sentinel: SentinelSimulator
) -> None:
    faults = sentinel.faults
    faults.inject(FaultKind.RATE_LIMIT, route="stix_upload", retry_after_s=7, message_retry_s=7)
    faults.inject(FaultKind.SERVER_ERROR, route="stix_upload", status=500)
    faults.inject(FaultKind.EMPTY_500, route="stix_upload")
    faults.inject(FaultKind.TIMEOUT, route="stix_upload", delay_s=0.1)
    faults.inject(FaultKind.MALFORMED_JSON, route="stix_upload")

    status, headers, body = await upload(session, sentinel)
    assert (status, headers["Retry-After"]) == (429, "7")
    assert body["message"] == "Rate limit is exceeded. Try again in 7 seconds."
    status, _, body = await upload(session, sentinel)
    assert (status, body["statusCode"], body["message"]) == (500, 500, "Internal server error")
    assert (await upload(session, sentinel))[0:3:2] == (500, None)
    assert (await upload(session, sentinel))[0] == 504
    with pytest.raises(orjson.JSONDecodeError):
        await upload(session, sentinel)

    faults.inject(FaultKind.RESET, route="stix_upload")
    with pytest.raises(aiohttp.ClientError):
        await upload(session, sentinel)

    assert sentinel.store == {}
    assert (await upload(session, sentinel))[0] == 200
    log = sentinel.request_log
    assert [entry.identity for entry in log] == [CLIENT] * 7
    assert [entry.admitted for entry in log] == [False] * 6 + [True]
    assert sentinel.max_requests_in_any_window() == 7
