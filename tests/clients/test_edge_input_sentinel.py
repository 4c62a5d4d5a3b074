"""Hostile answers at the Azure edge: Sentinel's upload answer, and Entra ID's token answer as
azure-identity reads it through its own transport over our session. Answers too large (declared,
inflating, endless), trickling, nested too deep, holding a token that is not one, or redirecting
to plain HTTP are refused with their reason, read no further than the limit, and send nothing
to where a redirect pointed; the uploader keeps its batch through them and delivers it once
Sentinel answers sensibly, dead-lettering nothing. The MATI side is in test_edge_input.py."""

from __future__ import annotations

import ssl
from typing import Any

import pytest
from aiohttp import web
from redis.asyncio import Redis

from services.cli.redis_server import LocalRedis
from shared.adapters.credentials import credential_factory
from shared.adapters.http import open_session
from shared.adapters.http_limits import SENTINEL_MAX_BODY
from shared.adapters.sentinel_client import DEFAULT_SCOPE, DEFAULT_SOURCE_SYSTEM
from shared.adapters.workspace_reader import WorkspaceReader
from shared.core.errors import BatchRejected, MalformedResponse, UpstreamUnavailable
from shared.core.secrets import Secret
from simulators.entra import EntraSimulator
from simulators.faults import FaultKind
from simulators.loganalytics import QUERY_ROUTE, LogAnalyticsSimulator
from simulators.sentinel import STIX_ROUTE, SentinelSimulator
from simulators.tokens import TokenMinter
from tests.clients.edge_rig import (
    MIB,
    PAST_THE_LIMIT,
    READ_OVERHEAD,
    SOCKET_SLACK,
    peak_memory,
    plain_http_catcher,
)
from tests.clients.peers import World, one_route
from tests.clients.sentinel_world import (
    CLIENT_ID,
    CLIENT_SECRET,
    TENANT,
    WORKSPACE,
    assert_keeps_secrets,
    indicator,
    issued,
    upload_fails,
)
from tests.helpers import wait_for
from tests.services.uploader_rig import QUEUE, assert_committed, assert_stored_once, run_until
from tests.services.uploader_rig import world as uploader_world

pytestmark = pytest.mark.timeout(30)

# ---- Sentinel's answer ------------------------------------------------------------------------


@PAST_THE_LIMIT
async def test_an_upload_answer_past_the_limit_is_malformed_and_read_no_further(
    sentinel: World, kind: FaultKind, options: dict[str, Any], seen: str
) -> None:
    async with sentinel() as w:
        fault = w.sentinel.faults.inject(kind, route=STIX_ROUTE, **options)
        with peak_memory() as peak:
            error = await upload_fails(w, MalformedResponse)
        await wait_for(lambda: fault.ended, what="the simulator to see the client hang up")
    assert str(error).startswith(
        "Sentinel's upload answer was refused: answer larger than the 1 MiB allowed ("
    )
    assert seen in str(error)
    assert fault.sent_bytes < SENTINEL_MAX_BODY + SOCKET_SLACK
    assert peak.bytes < SENTINEL_MAX_BODY + READ_OVERHEAD
    assert_keeps_secrets(w, error)


async def test_an_upload_answer_holding_a_message_of_megabytes_is_malformed(
    sentinel: World,
) -> None:
    async with sentinel() as w:
        w.sentinel.faults.inject(FaultKind.HUGE_VALUE, route=STIX_ROUTE)
        error = await upload_fails(w, MalformedResponse)
    assert "answer larger than the 1 MiB allowed (it declared 4194" in str(error)


async def test_an_upload_answer_nested_thousands_deep_is_malformed(sentinel: World) -> None:
    async with sentinel() as w:
        w.sentinel.faults.inject(FaultKind.DEEP_JSON, route=STIX_ROUTE)
        error = await upload_fails(w, MalformedResponse)
    assert "undecodable body" in str(error)
    assert "depth limit exceeded" in str(error)


async def test_a_refusal_nested_deeper_than_can_be_shown_is_read_without_a_crash(
    sentinel: World,
) -> None:
    """A 400 nested a thousand deep: valid JSON to orjson, but deeper than orjson writes and
    than Python's ``repr`` recurses, both of which reading its messages used to reach."""
    async with sentinel() as w:
        w.sentinel.faults.inject(
            FaultKind.DEEP_JSON, route=STIX_ROUTE, depth=1000, answer_status=400
        )
        error = await upload_fails(w, BatchRejected, [indicator(0), indicator(1)])
    assert str(error) == (
        "Sentinel rejected the batch (HTTP 400): a JSON object nested too deep to show"
    )
    assert [(r.index, r.messages) for r in error.records] == [
        (0, ("a JSON array nested too deep to show",))
    ]


async def test_a_redirect_of_the_upload_is_refused_and_the_token_goes_nowhere(
    sentinel: World,
) -> None:
    async with plain_http_catcher() as catcher, sentinel() as w:
        w.sentinel.faults.inject(
            FaultKind.REDIRECT_PLAIN, route=STIX_ROUTE, redirect_status=307, location=catcher.url
        )
        error = await upload_fails(w, UpstreamUnavailable)
    port = catcher.url.rsplit(":", 1)[1]
    assert str(error) == (
        "Sentinel upload failed: refused to follow a redirect (HTTP 307) "
        f"to http://127.0.0.1:{port} (plain http)"
    )
    assert catcher.received == []
    assert_keeps_secrets(w, error)


# ---- Entra ID's token answer, through azure-identity's transport -------------------------------


@pytest.mark.parametrize(
    ("kind", "options", "reason"),
    [
        pytest.param(
            FaultKind.OVERSIZED_BODY, {}, "answer larger than the 256 KiB allowed (it declared"
        ),
        pytest.param(
            FaultKind.INFLATING_BODY,
            {"size_bytes": 64 * MIB},
            "answer larger than the 256 KiB allowed (refused at the limit)",
        ),
        pytest.param(
            FaultKind.ENDLESS_BODY, {}, "answer larger than the 256 KiB allowed (refused at the"
        ),
        pytest.param(
            FaultKind.HUGE_VALUE, {}, "answer larger than the 256 KiB allowed (it declared"
        ),
        pytest.param(FaultKind.DEEP_JSON, {}, "the answer is nested too deep to decode"),
        pytest.param(
            FaultKind.DEEP_JSON, {"depth": 500}, "the answer's access token is a JSON array"
        ),
        pytest.param(
            FaultKind.ENDLESS_BODY,
            {"chunk_bytes": 16, "interval_s": 0.05},
            "the token request did not end within 1 s",
            id="trickle",
        ),
    ],
)
async def test_a_hostile_token_answer_is_upstream_unavailable_with_its_reason(
    sentinel: World, kind: FaultKind, options: dict[str, Any], reason: str
) -> None:
    """azure-core's transport reads through the session's response class (the limit holds),
    and its per-read timeouts alone would let a trickle run on: the whole request is bounded."""
    async with sentinel(timeout_s=1.0) as w:
        w.entra.faults.inject(kind, route="token", **options)
        with pytest.raises(UpstreamUnavailable) as caught:
            await w.tokens.token(DEFAULT_SCOPE)
    assert str(caught.value).startswith("Entra ID token request failed: ")
    assert reason in str(caught.value)
    assert issued(w.entra) == []
    assert_keeps_secrets(w, caught.value)


async def test_a_redirect_of_the_token_request_sends_the_secret_nowhere(sentinel: World) -> None:
    """azure-core asks aiohttp not to follow and would follow in its own policy; the session's
    middleware refuses the redirect before either can."""
    async with plain_http_catcher() as catcher, sentinel() as w:
        w.entra.faults.inject(FaultKind.REDIRECT_PLAIN, route="token", location=catcher.url)
        with pytest.raises(UpstreamUnavailable) as caught:
            await w.tokens.token(DEFAULT_SCOPE)
    assert "refused to follow a redirect (HTTP 302) to http://127.0.0.1:" in str(caught.value)
    assert catcher.received == []
    assert_keeps_secrets(w, caught.value)


async def test_azure_cores_redirect_policy_never_gets_a_redirect_to_follow(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    """Log Analytics' pipeline (azure-monitor-query) has azure-core's RedirectPolicy, which
    follows a 307 to another https host; the session refuses the redirect before it can."""
    followed: list[str] = []

    async def elsewhere(request: web.Request) -> web.Response:
        followed.append(request.headers.get("Authorization", "no credentials"))
        return web.json_response({"tables": []})

    minter = TokenMinter()
    async with (
        one_route(server_ssl, "/elsewhere", elsewhere) as other_host,
        EntraSimulator(server_ssl, minter=minter, tenant_id=TENANT) as entra,
        SentinelSimulator(server_ssl, minter=minter, workspace_id=WORKSPACE) as sentinel,
        LogAnalyticsSimulator(server_ssl, minter=minter, sentinel=sentinel) as logs,
        open_session(client_ssl) as session,
    ):
        entra.add_client(CLIENT_ID, CLIENT_SECRET)
        logs.faults.inject(
            FaultKind.REDIRECT_PLAIN,
            route=QUERY_ROUTE,
            redirect_status=307,
            location=f"{other_host}/elsewhere",
        )
        factory = credential_factory(
            session=session,
            tenant_id=TENANT,
            client_id=CLIENT_ID,
            authority_host=entra.url,
            client_secret=Secret(CLIENT_SECRET),
        )
        reader = WorkspaceReader(
            factory(),
            endpoint=logs.url,
            workspace_id=WORKSPACE,
            source_system=DEFAULT_SOURCE_SYSTEM,
            session=session,
            retry_total=0,
        )
        async with reader:
            with pytest.raises(UpstreamUnavailable) as caught:
                _ = [obj async for obj in reader.read()]
    port = other_host.rsplit(":", 1)[1]
    assert str(caught.value) == (
        "Log Analytics query for the count failed: refused to follow a redirect (HTTP 307) "
        f"to https://127.0.0.1:{port}"
    )
    assert followed == []


# ---- the uploader -------------------------------------------------------------------------------


async def test_the_uploader_keeps_its_batch_through_oversized_answers_and_delivers_it_once(
    server_ssl: ssl.SSLContext,
    client_ssl: ssl.SSLContext,
    redis_client: Redis,
    redis_server: LocalRedis,
) -> None:
    """An answer too large says nothing about the records, even when (as here) it names every
    one of them as refused: retried with back-off, held, never dead-lettered; once Sentinel
    answers sensibly the batch is stored and committed once."""
    async with uploader_world(server_ssl, client_ssl, redis_client, redis_server) as w:
        items = await w.forward(range(10))
        w.sentinel.faults.inject(
            FaultKind.OVERSIZED_BODY, route=STIX_ROUTE, size_bytes=2 * MIB, times=1000
        )

        async def refused_three_times() -> bool:
            return len(w.statuses()) >= 3

        await run_until([w.uploader()], refused_three_times)
        counts = await w.bus.counts(QUEUE)
        assert counts.depth + counts.in_flight == 10
        assert counts.dead_letter == 0
        assert w.sentinel.store == {}

        w.sentinel.faults.clear()
        await run_until([w.uploader()], w.drained)
        assert_stored_once(w, items)
        await assert_committed(w, items)
        assert (await w.bus.counts(QUEUE)).dead_letter == 0
        assert (await w.state.counters())["retried"] >= 3
