"""The MATI client against the MATI simulator over real TLS: one test per behaviour or fault.

Time is fake and shared: the client's clock and sleep and the simulator's clock all read one
``FakeTime``, which moves only when the client sleeps (or a test says so). So every test asserts
the waits the client *chose* and the requests the simulator *received*, never wall time.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
from datetime import timedelta

import aiohttp
import pytest

from shared.adapters.http import open_session
from shared.adapters.mati_paging import RawPage
from shared.adapters.tls import client_context
from shared.core.context import parse_actor
from shared.core.errors import (
    AuthenticationFailed,
    PagingInterrupted,
    QueryRejected,
    TlsVerificationFailed,
    UpstreamUnavailable,
)
from shared.core.secrets import Secret
from simulators.faults import FaultKind
from simulators.feed import Feed
from simulators.mati import MatiSimulator
from simulators.mati_actors import PROFILES
from tests.clients.mati_world import (
    COUNT,
    INCLUDE_FLAGS,
    KEY,
    LIMIT,
    NOW,
    NOW_EPOCH,
    SECRET,
    FakeTime,
    assert_no_secret,
    collect,
    fake_client,
    first_jitter,
    gives_up,
    ids,
    statuses,
    window,
)
from tests.clients.peers import Log, World, hang_up_server

# ---- paging ---------------------------------------------------------------------------------


@pytest.mark.parametrize("end_of_paging", ["empty", "short", "204"])
async def test_pages_through_a_window_for_each_end_of_paging(
    mati: World, end_of_paging: str
) -> None:
    async with mati(end_of_paging=end_of_paging) as w:
        pages = await collect(w.client)

        expected = {w.feed.id(i) for i in range(COUNT)}
        assert len(ids(pages)) == COUNT
        assert set(ids(pages)) == expected
        assert [len(p.indicators) for p in pages] == [100, 100, 50]
        assert [p.index for p in pages] == [0, 1, 2]
        assert all(p.size_bytes > 0 for p in pages)
        # The empty and 204 forms cost one more request than the short form.
        requests = len(w.sim.recorder.of("indicator"))
        assert requests == (3 if end_of_paging == "short" else 4)
        if end_of_paging == "204":
            assert statuses(w.sim)[-1] == 204


async def test_a_window_smaller_than_a_page_is_one_request(mati: World) -> None:
    async with mati(end_of_paging="short") as w:
        pages = await collect(w.client, window(limit=1000))
        assert len(ids(pages)) == COUNT
        assert len(w.sim.recorder.of("indicator")) == 1


async def test_an_empty_window_yields_nothing(mati: World) -> None:
    async with mati(end_of_paging="204") as w:
        start = NOW_EPOCH + 60
        pages = await collect(w.client, window(start_epoch=start, end_epoch=start + 60))
        assert pages == []


async def test_first_request_carries_the_query_and_follow_ups_only_next_and_flags(
    mati: World,
) -> None:
    async with mati() as w:
        await collect(w.client, window(gte_mscore=0, exclude_osint=False))
        first, *follow_ups = w.sim.recorder.of("indicator")
        assert first.query["sort_by"] == "last_updated:asc"
        assert first.query["limit"] == str(LIMIT)
        assert first.query["gte_mscore"] == "0"
        assert first.query["exclude_osint"] == "false"
        assert first.query["include_misp"] == "false"
        assert first.query["include_threat_rating"] == "true"
        assert follow_ups
        for request in follow_ups:
            assert set(request.query) == {"next"} | INCLUDE_FLAGS


async def test_headers_bearer_accept_and_app_name(mati: World) -> None:
    async with mati(client={"app_name": "unit-test-app"}) as w:
        await collect(w.client)
        (token_request,) = w.sim.recorder.of("token")
        assert token_request.headers["Authorization"].startswith("Basic ")
        assert token_request.headers["Accept"] == "application/json"
        assert "X-App-Name" not in token_request.headers  # the official library omits it
        assert b"grant_type=client_credentials" in token_request.body
        for request in w.sim.recorder.of("indicator"):
            assert request.headers["Authorization"] == f"Bearer {w.sim.current_token}"
            assert request.headers["Accept"] == "application/json"
            assert request.headers["X-App-Name"] == "unit-test-app"


async def test_records_are_handed_on_raw_even_when_broken(mati: World) -> None:
    async with mati(inject_bad_records=3) as w:
        pages = await collect(w.client)
        assert sum(len(p.indicators) for p in pages) == COUNT
        assert any("id" not in record for page in pages for record in page.indicators)


# ---- token ----------------------------------------------------------------------------------


async def test_token_is_fetched_once_and_reused(mati: World) -> None:
    async with mati() as w:
        await collect(w.client)
        await collect(w.client)
        assert w.sim.token_requests == 1
        assert len(w.sim.recorder.of("indicator")) == 8


async def test_token_is_refreshed_before_it_expires(mati: World) -> None:
    # A 100 s token and one request a second: 900 records 10 a page is 92 requests, so the
    # run reaches the token's last tenth (t+90 s) but not its end. The client must ask again
    # *before* expiry: the server then hands back the same, still-valid token (spec §2.3).
    async with mati(count=900, token_ttl_s=100, client={"requests_per_second": 1.0}) as w:
        pages = await collect(w.client, window(limit=10))
        assert len(ids(pages)) == 900
        assert 90 < w.fake.now - 5000.0 < 100
        assert w.sim.token_requests == 2
        assert w.sim.tokens_issued == 1
        assert set(statuses(w.sim)) == {200}  # never refused: renewed early, not after a 401


async def test_a_token_past_its_life_is_replaced(mati: World) -> None:
    async with mati(count=1000, token_ttl_s=30, client={"requests_per_second": 1.0}) as w:
        pages = await collect(w.client, window(limit=10))
        assert len(ids(pages)) == 1000
        assert w.sim.tokens_issued >= 3  # a 30 s token over a ~100 s run
        # The server keeps handing back its cached token until its last second, so a request
        # may still meet its expiry; that one is re-authenticated, never lost.
        assert set(statuses(w.sim)) <= {200, 401}
        assert statuses(w.sim).count(401) < w.sim.tokens_issued


@pytest.mark.parametrize("status", [401, 403])
async def test_revoked_token_reauthenticates_once_then_succeeds(mati: World, status: int) -> None:
    async with mati(expired_auth_status=status) as w:
        collected: list[RawPage] = []
        async for page in w.client.pages(window()):
            collected.append(page)
            if page.index == 0:
                w.sim.expire_tokens()  # revoked server-side while the client still trusts it
        assert len(ids(collected)) == COUNT
        assert w.sim.token_requests == 2
        assert statuses(w.sim).count(status) == 1
        assert w.fake.sleeps == []  # re-auth is immediate, not a back-off


async def test_expired_token_fault_reauthenticates_once(mati: World) -> None:
    async with mati() as w:
        w.sim.faults.inject(FaultKind.EXPIRED_TOKEN, route="indicator")
        pages = await collect(w.client)
        assert len(ids(pages)) == COUNT
        assert statuses(w.sim)[:2] == [401, 200]
        assert w.sim.token_requests == 2


async def test_persistent_401_is_authentication_failed(mati: World, log: Log) -> None:
    async with mati() as w:
        w.sim.faults.inject(FaultKind.EXPIRED_TOKEN, route="indicator", times=5)
        error = await gives_up(w, AuthenticationFailed)
        assert error.status == 401
        assert statuses(w.sim) == [401, 401]  # re-auth once, never a loop
        assert w.sim.token_requests == 2
        tokens = [r.headers["Authorization"].split()[1] for r in w.sim.recorder.of("indicator")]
        assert_no_secret(error, KEY, SECRET, *tokens)
        for secret in (KEY, SECRET, *tokens):
            assert secret not in log.text


async def test_wrong_api_key_is_authentication_failed_without_retries(mati: World) -> None:
    wrong = "not-the-secret-0123456789"
    async with mati(client={"api_secret": Secret(wrong)}) as w:
        with pytest.raises(AuthenticationFailed) as caught:
            await collect(w.client)
        assert caught.value.status == 401
        assert w.sim.token_requests == 1
        assert w.sim.recorder.of("indicator") == []
        assert_no_secret(caught.value, KEY, wrong)


async def test_500_then_401_then_200_reauthenticates_once(mati: World) -> None:
    async with mati() as w:
        w.sim.faults.inject(FaultKind.SERVER_ERROR, route="indicator", status=500)
        w.sim.faults.inject(FaultKind.EXPIRED_TOKEN, route="indicator")
        pages = await collect(w.client)
        assert len(ids(pages)) == COUNT
        assert statuses(w.sim)[:3] == [500, 401, 200]
        assert w.sim.token_requests == 2
        assert w.fake.sleeps == [first_jitter()]  # the 500's back-off; re-auth does not wait


async def test_a_401_after_a_retried_5xx_reauthenticates_again(mati: World) -> None:
    # 401 (re-auth), 500 (back off), 401 again: the second refusal is a new token problem, not
    # the fresh token being refused in the very next answer, so it re-authenticates too.
    async with mati() as w:
        w.sim.faults.inject(FaultKind.EXPIRED_TOKEN, route="indicator", times=2)
        w.sim.faults.inject(FaultKind.SERVER_ERROR, route="indicator", status=500, after=1)
        pages = await collect(w.client)
        assert len(ids(pages)) == COUNT
        assert statuses(w.sim)[:4] == [401, 500, 401, 200]
        assert w.sim.token_requests == 3
        assert w.fake.sleeps == [first_jitter()]


# ---- cursors and bad requests ---------------------------------------------------------------


async def test_expired_cursor_is_paging_interrupted(mati: World) -> None:
    async with mati(cursor_ttl_s=600) as w:

        async def dawdle() -> None:
            async for _page in w.client.pages(window()):
                w.fake.now += 601  # the consumer dawdled past the cursor's life

        with pytest.raises(PagingInterrupted) as caught:
            await dawdle()
        assert statuses(w.sim) == [200, 400]  # not retried: the cursor will not come back
        assert "expired" in str(caught.value)
        assert_no_secret(caught.value, KEY, SECRET, w.sim.current_token)


async def test_a_bad_query_is_rejected_with_the_server_message(mati: World) -> None:
    async with mati() as w:
        too_old = int((NOW - timedelta(days=120)).timestamp())
        with pytest.raises(QueryRejected) as caught:
            await collect(w.client, window(start_epoch=too_old))
        assert caught.value.status == 400
        assert "90 days" in str(caught.value)
        assert statuses(w.sim) == [400]
        assert_no_secret(caught.value, KEY, SECRET, w.sim.current_token)


def test_query_validation() -> None:
    with pytest.raises(ValueError, match="limit"):
        window(limit=1001)
    with pytest.raises(ValueError, match="limit"):
        window(limit=0)
    with pytest.raises(ValueError, match="start_epoch"):
        window(start_epoch=NOW_EPOCH + 10)
    with pytest.raises(ValueError, match="gte_mscore"):
        window(gte_mscore=101)


# ---- pace and TLS ---------------------------------------------------------------------------


async def test_requests_per_second_ceiling_holds_for_every_request_including_retries(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    fake = FakeTime()
    starts: list[float] = []

    async def on_start(*_: object) -> None:
        starts.append(fake.now)

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    feed = Feed(seed=7, count=COUNT, days=30, now=NOW)
    async with (
        MatiSimulator(server_ssl, feed=feed, clock=fake.epoch) as mati,
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_ssl), trace_configs=[trace]
        ) as session,
    ):
        mati.faults.inject(FaultKind.SERVER_ERROR, route="indicator", times=2)
        mati.faults.inject(FaultKind.RATE_LIMIT, route="indicator", retry_after_s=0.1)
        client = fake_client(session, mati.url, fake, requests_per_second=2.0)
        pages = await collect(client)
        assert len(ids(pages)) == COUNT
        total_requests = len(mati.recorder.requests)
        assert total_requests == 1 + 3 + 4  # token, 3 failures, 4 pages
        assert len(starts) == total_requests
        gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
        assert min(gaps) >= 0.5 - 1e-9


async def test_tls_verification_is_on_and_a_refused_certificate_is_fatal(
    server_ssl: ssl.SSLContext,
) -> None:
    fake = FakeTime()
    untrusting = client_context(None)  # the system store only: the simulator CA is unknown
    feed = Feed(seed=7, count=10, days=30, now=NOW)
    async with (
        MatiSimulator(server_ssl, feed=feed, clock=fake.epoch) as mati,
        open_session(untrusting) as session,
    ):
        client = fake_client(session, mati.url, fake, max_attempts=5)
        with pytest.raises(TlsVerificationFailed) as caught:
            await collect(client)
        assert isinstance(caught.value.__cause__, aiohttp.ClientConnectorCertificateError)
        assert "SSLCertVerificationError" in str(caught.value)
        assert fake.sleeps == []  # not retried: a certificate does not fix itself
        assert mati.recorder.requests == []
        assert_no_secret(caught.value, KEY, SECRET)


async def test_a_handshake_dropped_by_the_network_is_retried(client_ssl: ssl.SSLContext) -> None:
    fake = FakeTime()
    async with hang_up_server() as url, open_session(client_ssl) as session:
        client = fake_client(session, url, fake, max_attempts=2)
        with pytest.raises(UpstreamUnavailable):
            await collect(client)
        assert fake.sleeps == [first_jitter()]


def test_client_repr_shows_no_credentials() -> None:
    async def build() -> str:
        async with open_session(client_context(None)) as session:
            client = fake_client(session, "https://mati.example", FakeTime())
            return repr(client) + str(client)

    text = asyncio.run(build())
    assert KEY not in text
    assert SECRET not in text


def test_plain_http_base_url_is_refused() -> None:
    async def build() -> None:
        async with open_session(client_context(None)) as session:
            fake_client(session, "http://mati.example", FakeTime())

    with pytest.raises(ValueError, match="https"):
        asyncio.run(build())


# ---- one threat actor -----------------------------------------------------------------------


async def test_an_actors_profile_by_id_and_none_for_one_mati_does_not_know(mati: World) -> None:
    """``GET /v4/actor/{id}`` under the same token and pacing as the pages; its answer is what
    the context core turns into a threat-actor object."""
    known = next(iter(PROFILES.values()))
    async with mati() as w:
        profile = await w.client.actor(known["id"])
        assert profile == known
        actor = parse_actor(profile)
        assert actor is not None
        assert actor.name == known["name"]
        assert actor.name not in actor.aliases
        assert await w.client.actor("threat-actor--00000000-0000-5000-8000-000000000000") is None
        assert statuses(w.sim, "actor") == [200, 404]
        assert w.sim.actor_requests == 2


async def test_an_actor_request_is_retried_like_a_page(mati: World) -> None:
    known = next(iter(PROFILES.values()))
    async with mati() as w:
        w.sim.faults.inject(FaultKind.SERVER_ERROR, route="actor", status=503)
        assert await w.client.actor(known["id"]) == known
        assert statuses(w.sim, "actor") == [503, 200]
