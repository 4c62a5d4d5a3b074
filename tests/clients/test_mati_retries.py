"""The MATI client's retries against the MATI simulator: 429s wait what the server asks or back
off with jitter, 5xx, timeouts, resets and undecodable bodies are retried within the attempts
and the time budget, on the token endpoint too; what is left when they run out is the tree's
RateLimited, UpstreamUnavailable or MalformedResponse. Time is fake (``mati_world``)."""

from __future__ import annotations

import random
import ssl

import pytest

from shared.adapters.mati_paging import RawPage
from shared.core.backoff import Backoff
from shared.core.errors import (
    MalformedResponse,
    RateLimited,
    UpstreamUnavailable,
)
from simulators.faults import FaultKind
from tests.clients.mati_world import (
    COUNT,
    KEY,
    SECRET,
    SEED,
    assert_no_secret,
    collect,
    first_jitter,
    ids,
    statuses,
    window,
    world,
)

# ---- rate limits and transient failures -----------------------------------------------------


async def test_429_with_retry_after_waits_what_the_header_says(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    async with world(server_ssl, client_ssl) as w:
        w.sim.faults.inject(FaultKind.RATE_LIMIT, route="indicator", retry_after_s=7)
        pages = await collect(w.client)
        assert len(ids(pages)) == COUNT
        assert w.fake.sleeps == [7.0]
        assert statuses(w.sim)[:2] == [429, 200]


async def test_429_without_retry_after_backs_off_with_jitter(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    async with world(server_ssl, client_ssl) as w:
        w.sim.faults.inject(FaultKind.RATE_LIMIT, route="indicator", times=2)
        pages = await collect(w.client)
        assert len(ids(pages)) == COUNT
        rng = random.Random(SEED)
        policy = Backoff()
        assert w.fake.sleeps == [policy.jittered(1, rng), policy.jittered(2, rng)]
        assert 0 <= w.fake.sleeps[0] <= 1.0
        assert 0 <= w.fake.sleeps[1] <= 2.0
        assert statuses(w.sim)[:3] == [429, 429, 200]


async def test_persistent_429_is_rate_limited_after_max_attempts(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    async with world(server_ssl, client_ssl, client={"max_attempts": 3}) as w:
        w.sim.faults.inject(FaultKind.RATE_LIMIT, route="indicator", times=10, retry_after_s=2)
        with pytest.raises(RateLimited) as caught:
            await collect(w.client)
        assert caught.value.retry_after_s == 2.0
        assert w.fake.sleeps == [2.0, 2.0]
        assert statuses(w.sim) == [429, 429, 429]


async def test_a_retry_after_beyond_the_budget_is_not_waited(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    async with world(server_ssl, client_ssl, client={"max_wait_s": 120.0}) as w:
        w.sim.faults.inject(FaultKind.RATE_LIMIT, route="indicator", retry_after_s=500)
        with pytest.raises(RateLimited) as caught:
            await collect(w.client)
        assert caught.value.retry_after_s == 500.0
        assert w.fake.sleeps == []
        assert statuses(w.sim) == [429]


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_5xx_backs_off_and_retries_the_same_request(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext, status: int
) -> None:
    async with world(server_ssl, client_ssl) as w:
        pages: list[RawPage] = []
        async for page in w.client.pages(window()):
            pages.append(page)
            if page.index == 0:
                w.sim.faults.inject(FaultKind.SERVER_ERROR, route="indicator", status=status)
        assert len(ids(pages)) == COUNT
        assert w.fake.sleeps == [first_jitter()]
        failed, retried = w.sim.recorder.of("indicator")[1:3]
        assert (failed.status, retried.status) == (status, 200)
        assert failed.query == retried.query  # the same cursor, not a new query


async def test_empty_500_backs_off_and_retries(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    async with world(server_ssl, client_ssl) as w:
        w.sim.faults.inject(FaultKind.EMPTY_500, route="indicator")
        pages = await collect(w.client)
        assert len(ids(pages)) == COUNT
        assert w.fake.sleeps == [first_jitter()]
        assert statuses(w.sim)[:2] == [500, 200]


async def test_timeout_backs_off_and_retries(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    async with world(server_ssl, client_ssl, timeout_s=0.5) as w:
        w.sim.faults.inject(FaultKind.TIMEOUT, route="indicator", delay_s=1.0)
        pages = await collect(w.client)
        assert len(ids(pages)) == COUNT
        assert w.fake.sleeps == [first_jitter()]
        assert w.sim.recorder.of("indicator")[1].status == 200


async def test_connection_reset_backs_off_and_retries(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    async with world(server_ssl, client_ssl) as w:
        # Two resets: aiohttp itself silently retries an idempotent request once when a pooled
        # keep-alive connection drops; the second reset reaches the client's own retry.
        w.sim.faults.inject(FaultKind.RESET, route="indicator", times=2)
        pages = await collect(w.client)
        assert len(ids(pages)) == COUNT
        assert w.fake.sleeps == [first_jitter()]
        faults = [r.fault for r in w.sim.recorder.of("indicator")]
        assert faults[:3] == [FaultKind.RESET, FaultKind.RESET, None]


async def test_malformed_json_backs_off_and_retries(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    async with world(server_ssl, client_ssl) as w:
        w.sim.faults.inject(FaultKind.MALFORMED_JSON, route="indicator")
        pages = await collect(w.client)
        assert len(ids(pages)) == COUNT
        assert w.fake.sleeps == [first_jitter()]
        assert len(w.sim.recorder.of("indicator")) == 5


async def test_persistent_malformed_json_is_malformed_response(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    async with world(server_ssl, client_ssl, client={"max_attempts": 3}) as w:
        w.sim.faults.inject(FaultKind.MALFORMED_JSON, route="indicator", times=10)
        with pytest.raises(MalformedResponse):
            await collect(w.client)
        assert len(w.sim.recorder.of("indicator")) == 3


async def test_persistent_5xx_is_upstream_unavailable_after_max_attempts(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    async with world(server_ssl, client_ssl, client={"max_attempts": 4}) as w:
        w.sim.faults.inject(FaultKind.SERVER_ERROR, route="indicator", status=503, times=10)
        with pytest.raises(UpstreamUnavailable) as caught:
            await collect(w.client)
        assert caught.value.status == 503
        assert statuses(w.sim) == [503] * 4
        rng = random.Random(SEED)
        assert w.fake.sleeps == [Backoff().jittered(n, rng) for n in (1, 2, 3)]
        assert_no_secret(caught.value, KEY, SECRET, w.sim.current_token)


async def test_backoff_stops_at_the_time_budget_before_max_attempts(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    options = {"max_attempts": 50, "max_wait_s": 10.0, "backoff_base_s": 4.0}
    async with world(server_ssl, client_ssl, client=options) as w:
        w.sim.faults.inject(FaultKind.EMPTY_500, route="indicator", times=50)
        with pytest.raises(UpstreamUnavailable):
            await collect(w.client)
        assert sum(w.fake.sleeps) <= 10.0
        assert len(w.sim.recorder.of("indicator")) < 50


async def test_token_endpoint_5xx_is_retried_too(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    async with world(server_ssl, client_ssl) as w:
        w.sim.faults.inject(FaultKind.SERVER_ERROR, route="token", status=502)
        pages = await collect(w.client)
        assert len(ids(pages)) == COUNT
        assert statuses(w.sim, "token") == [502, 200]
        assert w.fake.sleeps == [first_jitter()]


async def test_token_endpoint_429_waits_what_the_header_says(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    async with world(server_ssl, client_ssl) as w:
        w.sim.faults.inject(FaultKind.RATE_LIMIT, route="token", retry_after_s=9)
        pages = await collect(w.client)
        assert len(ids(pages)) == COUNT
        assert w.fake.sleeps == [9.0]
        assert statuses(w.sim, "token") == [429, 200]


async def test_token_endpoint_persistent_429_is_rate_limited(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    async with world(server_ssl, client_ssl, client={"max_attempts": 3}) as w:
        w.sim.faults.inject(FaultKind.RATE_LIMIT, route="token", retry_after_s=4, times=10)
        with pytest.raises(RateLimited) as caught:
            await collect(w.client)
        assert caught.value.retry_after_s == 4.0
        assert "POST /token" in str(caught.value)
        assert w.fake.sleeps == [4.0, 4.0]
        assert statuses(w.sim, "token") == [429, 429, 429]
        assert w.sim.recorder.of("indicator") == []
        assert_no_secret(caught.value, KEY, SECRET)


async def test_token_endpoint_timeout_backs_off_and_retries(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    async with world(server_ssl, client_ssl, timeout_s=0.5) as w:
        w.sim.faults.inject(FaultKind.TIMEOUT, route="token", delay_s=1.0)
        pages = await collect(w.client)
        assert len(ids(pages)) == COUNT
        assert w.fake.sleeps == [first_jitter()]
        assert w.sim.token_requests == 1  # only the retry reached the token handler
    # The held request is recorded once the simulator has shut down.
    assert sorted(str(r.fault) for r in w.sim.recorder.of("token")) == ["None", "timeout"]


# One reset is enough: aiohttp never silently re-sends a POST.
@pytest.mark.parametrize("kind", [FaultKind.RESET, FaultKind.MALFORMED_JSON])
async def test_token_endpoint_reset_or_malformed_json_backs_off_and_retries(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext, kind: FaultKind
) -> None:
    async with world(server_ssl, client_ssl) as w:
        w.sim.faults.inject(kind, route="token")
        pages = await collect(w.client)
        assert len(ids(pages)) == COUNT
        assert w.fake.sleeps == [first_jitter()]
        assert [r.fault for r in w.sim.recorder.of("token")] == [kind, None]


async def test_token_endpoint_persistent_malformed_json_is_malformed_response(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    async with world(server_ssl, client_ssl, client={"max_attempts": 3}) as w:
        w.sim.faults.inject(FaultKind.MALFORMED_JSON, route="token", times=10)
        with pytest.raises(MalformedResponse):
            await collect(w.client)
        assert len(w.sim.recorder.of("token")) == 3
        assert len(w.fake.sleeps) == 2
        assert w.sim.recorder.of("indicator") == []
