"""Hostile answers at MATI's edge, through the real client against the MATI simulator: a page
larger than the limit (declared, compressed to inflate past it, or never ending), a body that
trickles, JSON nested past what can be decoded, a redirect. Each is refused with its reason,
the read stops near the limit in bounded memory, and nothing is retried that would only bring
the same answer again. A record nested past what can be re-encoded is handed on with its page
(the fetcher publishes a stand-in for it). The fetcher's side (checkpoint, what was published)
and the filter's (a record of megabytes) are in test_edge_input_pipeline.py; the
Sentinel and Entra ID side in test_edge_input_sentinel.py. Time is fake (``mati_world``)."""

from __future__ import annotations

import pytest

from shared.core.errors import MalformedResponse, UpstreamUnavailable
from simulators.faults import FaultKind
from tests.clients.edge_rig import (
    LIMIT,
    MIB,
    READ_OVERHEAD,
    SOCKET_SLACK,
    peak_memory,
    plain_http_catcher,
)
from tests.clients.mati_world import KEY, SECRET, assert_no_secret, collect, gives_up, statuses
from tests.clients.peers import World
from tests.helpers import wait_for

pytestmark = pytest.mark.timeout(30)


async def test_a_page_declaring_more_than_the_limit_is_refused_unread_and_not_retried(
    mati: World,
) -> None:
    async with mati(client={"max_body_bytes": LIMIT}) as w:
        fault = w.sim.faults.inject(FaultKind.OVERSIZED_BODY, route="indicator")
        error = await gives_up(w, MalformedResponse)
        await wait_for(lambda: fault.ended, what="the simulator to see the client hang up")
    assert str(error).startswith("MATI GET /v4/indicator: answer larger than the 256 KiB")
    assert "it declared" in str(error)
    assert statuses(w.sim) == [200]  # the same request would bring the same page: asked once
    assert fault.sent_bytes < SOCKET_SLACK  # of 256 MiB declared


async def test_a_page_that_never_ends_is_cut_at_the_limit_in_bounded_memory(mati: World) -> None:
    async with mati(client={"max_body_bytes": LIMIT}) as w:
        fault = w.sim.faults.inject(FaultKind.ENDLESS_BODY, route="indicator")
        with peak_memory() as peak:
            error = await gives_up(w, MalformedResponse)
        await wait_for(lambda: fault.ended, what="the simulator to see the client hang up")
    assert "answer larger than the 256 KiB allowed (refused at the limit)" in str(error)
    assert LIMIT < fault.sent_bytes < LIMIT + SOCKET_SLACK
    assert peak.bytes < LIMIT + READ_OVERHEAD


async def test_a_compressed_page_is_counted_as_it_inflates(mati: World) -> None:
    """A few KB on the wire inflating to 64 MiB: refused once the *inflated* bytes pass the
    limit, and memory never holds more than about the limit."""
    async with mati(client={"max_body_bytes": LIMIT}) as w:
        fault = w.sim.faults.inject(
            FaultKind.INFLATING_BODY, route="indicator", size_bytes=64 * MIB
        )
        with peak_memory() as peak:
            error = await gives_up(w, MalformedResponse)
        await wait_for(lambda: fault.ended, what="the simulator to see the client hang up")
    assert "answer larger than the 256 KiB allowed (refused at the limit)" in str(error)
    assert fault.sent_bytes < LIMIT  # the wire carried less than the limit: inflating passed it
    assert peak.bytes < LIMIT + READ_OVERHEAD


async def test_a_compressed_page_within_the_limit_is_read_whole(mati: World) -> None:
    async with mati(client={"max_body_bytes": LIMIT}) as w:
        w.sim.faults.inject(FaultKind.INFLATING_BODY, route="indicator", size_bytes=LIMIT // 2)
        (page,) = await collect(w.client)
    assert len(page.indicators) > 100
    assert {record["type"] for record in page.indicators} == {"url"}
    assert page.size_bytes >= LIMIT // 2  # the size read is the inflated one


async def test_a_page_that_trickles_ends_at_the_session_timeout(mati: World) -> None:
    """A few bytes every 50 ms never reach the limit: the session's total timeout cuts it."""
    async with mati(timeout_s=1.0, client={"max_attempts": 1}) as w:
        w.sim.faults.inject(
            FaultKind.ENDLESS_BODY, route="indicator", chunk_bytes=64, interval_s=0.05
        )
        error = await gives_up(w, UpstreamUnavailable)
    assert str(error) == "MATI GET /v4/indicator (page 0): timed out after 1 attempt(s)"


async def test_a_page_nested_thousands_deep_is_undecodable_and_retried_like_any(
    mati: World,
) -> None:
    async with mati() as w:
        w.sim.faults.inject(FaultKind.DEEP_JSON, route="indicator", times=6)
        error = await gives_up(w, MalformedResponse)
    assert "undecodable JSON body" in str(error)
    assert "depth limit exceeded" in str(error)
    assert statuses(w.sim) == [200] * 6


async def test_a_record_too_deep_to_publish_is_handed_on_with_its_page(mati: World) -> None:
    """Nested 300 deep: decodable (orjson reads 1,024 levels) but not encodable again (it writes
    254). Not the client's to refuse, and never its whole page: the fetcher publishes a
    stand-in for it (tests/services/test_fetcher_bad_records.py)."""
    async with mati() as w:
        w.sim.faults.inject(FaultKind.DEEP_JSON, route="indicator", depth=300)
        (page,) = await collect(w.client)
    assert [record["id"] for record in page.indicators] == [
        "url--00000000-0000-5000-8000-000000000000",
        "url--00000000-0000-5000-8000-999999999999",
        "url--00000000-0000-5000-8000-000000000001",
    ]
    assert statuses(w.sim) == [200]


async def test_a_looked_up_record_too_deep_to_show_is_refused_naming_it(mati: World) -> None:
    """An operator's look-up shows the record and derives its message from it: refused."""
    async with mati() as w:
        w.sim.faults.inject(FaultKind.DEEP_JSON, route="indicator_by_id", depth=300)
        with pytest.raises(MalformedResponse) as caught:
            await w.client.lookup(indicator_id="url--00000000-0000-5000-8000-000000000001")
    assert str(caught.value) == "MATI GET /v4/indicator/{…}: the record is nested too deep to show"
    assert statuses(w.sim, "indicator_by_id") == [200]


@pytest.mark.parametrize("route", ["token", "indicator"])
async def test_a_redirect_to_plain_http_is_refused_and_carries_nothing_there(
    mati: World, route: str
) -> None:
    async with plain_http_catcher() as catcher, mati() as w:
        w.sim.faults.inject(
            FaultKind.REDIRECT_PLAIN, route=route, redirect_status=307, location=catcher.url
        )
        error = await gives_up(w, UpstreamUnavailable)
    port = catcher.url.rsplit(":", 1)[1]
    assert f"refused to follow a redirect (HTTP 307) to http://127.0.0.1:{port} (plain http)" in (
        str(error)
    )
    assert statuses(w.sim, route) == [307]
    assert catcher.received == []
    assert_no_secret(error, KEY, SECRET, w.sim.current_token)


async def test_a_redirect_to_https_elsewhere_is_refused_too(mati: World) -> None:
    async with mati() as w:
        w.sim.faults.inject(
            FaultKind.REDIRECT_PLAIN,
            route="indicator",
            location="https://elsewhere.example/v4/indicator?next=abc",
        )
        error = await gives_up(w, UpstreamUnavailable)
    assert "refused to follow a redirect (HTTP 302) to https://elsewhere.example" in str(error)
    assert "next=abc" not in str(error)
