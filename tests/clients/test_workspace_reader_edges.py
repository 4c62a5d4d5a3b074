"""Hostile answers at Log Analytics' edge, through the real azure-monitor-query client and
azure-identity credential over our session, against the Log Analytics and Entra ID simulators
with the generic faults of simulators/faults.py: an answer too large (declared, inflating, never
ending), nested too deep to decode, trickling in, or redirecting to plain HTTP. Each is an error
of the pipeline's tree saying "Log Analytics" (before: a ``RecursionError`` out of the reader,
which crashed ``reconcile``; the session's refusals without saying whose answer it was; a
trickle running on as long as it kept sending), read no further than the reader's limit; and
the same faults met by the token request instead name Entra ID, not Log Analytics."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shared.adapters.workspace_reader import LOGS_MAX_BODY, WorkspaceReader
from shared.core.errors import MalformedResponse, PipelineError, UpstreamUnavailable
from simulators.faults import FaultKind
from simulators.loganalytics import QUERY_ROUTE
from tests.clients.edge_rig import (
    LIMIT,
    MIB,
    PAST_THE_LIMIT,
    READ_OVERHEAD,
    SOCKET_SLACK,
    peak_memory,
    plain_http_catcher,
)
from tests.clients.sentinel_world import assert_no_secret
from tests.clients.test_workspace_reader import CLIENT_SECRET, World, issued, ours, world
from tests.helpers import wait_for

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def la(server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext) -> AsyncIterator[World]:
    async with world(server_ssl, client_ssl) as opened:
        opened.sentinel.seed([ours(1)])
        yield opened


async def read_fails(reader: WorkspaceReader, error: type[PipelineError]) -> PipelineError:
    async with reader:
        with pytest.raises(error) as caught:
            _ = [obj async for obj in reader.read()]
    return caught.value


# ---- the query's answer ------------------------------------------------------------------------


async def test_an_answer_nested_thousands_deep_is_malformed_not_a_crash(la: World) -> None:
    la.logs.faults.inject(FaultKind.DEEP_JSON, route=QUERY_ROUTE)
    error = await read_fails(la.reader(retry_total=0), MalformedResponse)
    assert str(error) == "Log Analytics answered the count nested too deep to decode"


async def test_a_partition_nested_thousands_deep_is_named(la: World) -> None:
    la.logs.faults.inject(FaultKind.DEEP_JSON, route=QUERY_ROUTE, after=1)  # the count passes
    error = await read_fails(la.reader(retry_total=0), MalformedResponse)
    assert str(error) == "Log Analytics answered partition (all) nested too deep to decode"


@PAST_THE_LIMIT
async def test_an_answer_past_the_readers_limit_is_malformed_and_read_no_further(
    la: World, kind: FaultKind, options: dict[str, Any], seen: str
) -> None:
    fault = la.logs.faults.inject(kind, route=QUERY_ROUTE, **options)
    with peak_memory() as peak:
        error = await read_fails(la.reader(retry_total=0, max_body_bytes=LIMIT), MalformedResponse)
    await wait_for(lambda: fault.ended, what="the simulator to see the client hang up")
    assert str(error).startswith(
        "Log Analytics' answer to the count was refused: answer larger than the 256 KiB allowed ("
    )
    assert seen in str(error)
    assert fault.sent_bytes < LIMIT + SOCKET_SLACK
    assert peak.bytes < LIMIT + READ_OVERHEAD
    assert_no_secret(error, CLIENT_SECRET, *issued(la))


async def test_the_readers_own_limit_is_log_analytics_cap_and_a_half(la: World) -> None:
    """Not the session's default: the service cuts an answer at 64 MiB of rows."""
    la.logs.faults.inject(FaultKind.OVERSIZED_BODY, route=QUERY_ROUTE)  # 256 MiB declared
    error = await read_fails(la.reader(retry_total=0), MalformedResponse)
    assert LOGS_MAX_BODY == 96 * MIB
    assert "answer larger than the 96 MiB allowed (it declared 268435" in str(error)


async def test_an_answer_that_trickles_ends_at_the_query_timeout(la: World) -> None:
    """16 bytes every 50 ms: no read waits long (azure-core's per-read timeout is 30 s here),
    and the body limit is hours away; the query's own deadline ends it."""
    fault = la.logs.faults.inject(
        FaultKind.ENDLESS_BODY, route=QUERY_ROUTE, chunk_bytes=16, interval_s=0.05
    )
    reader = la.reader(retry_total=0, timeout_s=30.0, query_timeout_s=1.0)
    error = await read_fails(reader, UpstreamUnavailable)
    await wait_for(lambda: fault.ended, what="the simulator to see the client hang up")
    assert str(error) == "Log Analytics did not answer the count within 1 s"
    assert fault.sent_bytes < LIMIT


async def test_a_redirect_of_the_query_is_refused_naming_log_analytics(la: World) -> None:
    async with plain_http_catcher() as catcher:
        la.logs.faults.inject(FaultKind.REDIRECT_PLAIN, route=QUERY_ROUTE, location=catcher.url)
        error = await read_fails(la.reader(retry_total=0), UpstreamUnavailable)
    port = catcher.url.rsplit(":", 1)[1]
    assert str(error) == (
        "Log Analytics query for the count failed: refused to follow a redirect (HTTP 302) "
        f"to http://127.0.0.1:{port} (plain http)"
    )
    assert catcher.received == []
    assert_no_secret(error, CLIENT_SECRET, *issued(la))


# ---- the token request, made inside the query ----------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        pytest.param(
            FaultKind.OVERSIZED_BODY,
            "answer larger than the 256 KiB allowed (it declared",
            id="declared",
        ),
        pytest.param(FaultKind.DEEP_JSON, "the answer is nested too deep to decode", id="deep"),
        pytest.param(
            FaultKind.REDIRECT_PLAIN, "refused to follow a redirect (HTTP 302)", id="redirect"
        ),
    ],
)
async def test_the_same_faults_met_by_the_token_request_name_entra_id(
    la: World, kind: FaultKind, reason: str
) -> None:
    la.entra.faults.inject(kind, route="token")
    error = await read_fails(la.reader(retry_total=0), UpstreamUnavailable)
    assert str(error).startswith(f"Entra ID token request failed: {reason}")
    assert la.queries() == []  # the query never went out
    assert_no_secret(error, CLIENT_SECRET, *issued(la))
