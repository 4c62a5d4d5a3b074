"""The MATI client's retries against the MATI simulator: 429s wait what the server asks or back
off with jitter, 5xx, timeouts, resets and undecodable bodies are retried within the attempts
and the time budget, on the token endpoint too; what is left when they run out is the tree's
RateLimited, UpstreamUnavailable or MalformedResponse. Time is fake (``mati_world``)."""

from __future__ import annotations

import random

import pytest

from shared.adapters.mati_paging import RawPage
from shared.core.backoff import Backoff
from shared.core.errors import MalformedResponse, RateLimited, UpstreamUnavailable
from simulators.faults import FaultKind
from tests.clients.mati_world import (
    COUNT,
    KEY,
    SECRET,
    SEED,
    assert_no_secret,
    first_jitter,
    gives_up,
    ids,
    recovers,
    statuses,
    window,
)
from tests.clients.peers import World

# ---- one failure, waited out ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "kind", "fault", "sleeps", "answered"),
    [
        pytest.param(
            "indicator",
            FaultKind.RATE_LIMIT,
            {"retry_after_s": 7},
            [7.0],
            [429, 200, 200, 200, 200],
            id="429-waits-what-the-header-says",
        ),
        pytest.param(
            "indicator",
            FaultKind.EMPTY_500,
            {},
            [first_jitter()],
            [500, 200, 200, 200, 200],
            id="empty-500-backs-off",
        ),
        pytest.param(
            "token",
            FaultKind.SERVER_ERROR,
            {"status": 502},
            [first_jitter()],
            [502, 200],
            id="token-5xx-backs-off",
        ),
        pytest.param(
            "token",
            FaultKind.RATE_LIMIT,
            {"retry_after_s": 9},
            [9.0],
            [429, 200],
            id="token-429-waits-what-the-header-says",
        ),
    ],
)
async def test_one_refusal_is_waited_out_and_the_request_retried(
    mati: World,
    route: str,
    kind: FaultKind,
    fault: dict[str, float],
    sleeps: list[float],
    answered: list[int],
) -> None:
    async with mati() as w:
        w.sim.faults.inject(kind, route=route, **fault)
        await recovers(w, sleeps=sleeps)
        assert statuses(w.sim, route) == answered


async def test_429_without_retry_after_backs_off_with_jitter(mati: World) -> None:
    async with mati() as w:
        w.sim.faults.inject(FaultKind.RATE_LIMIT, route="indicator", times=2)
        rng = random.Random(SEED)
        policy = Backoff()
        await recovers(w, sleeps=[policy.jittered(1, rng), policy.jittered(2, rng)])
        assert 0 <= w.fake.sleeps[0] <= 1.0
        assert 0 <= w.fake.sleeps[1] <= 2.0
        assert statuses(w.sim)[:3] == [429, 429, 200]


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_5xx_backs_off_and_retries_the_same_request(mati: World, status: int) -> None:
    async with mati() as w:
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


async def test_timeout_backs_off_and_retries(mati: World) -> None:
    async with mati(timeout_s=0.5) as w:
        w.sim.faults.inject(FaultKind.TIMEOUT, route="indicator", delay_s=1.0)
        await recovers(w, sleeps=[first_jitter()])
        assert w.sim.recorder.of("indicator")[1].status == 200


async def test_token_endpoint_timeout_backs_off_and_retries(mati: World) -> None:
    async with mati(timeout_s=0.5) as w:
        w.sim.faults.inject(FaultKind.TIMEOUT, route="token", delay_s=1.0)
        await recovers(w, sleeps=[first_jitter()])
        assert w.sim.token_requests == 1  # only the retry reached the token handler
    # The held request is recorded once the simulator has shut down.
    assert sorted(str(r.fault) for r in w.sim.recorder.of("token")) == ["None", "timeout"]


@pytest.mark.parametrize(
    ("route", "kind", "times", "seen"),
    [
        # Two resets: aiohttp itself silently retries an idempotent request once when a pooled
        # keep-alive connection drops; the second reset reaches the client's own retry.
        ("indicator", FaultKind.RESET, 2, [FaultKind.RESET, FaultKind.RESET, None]),
        ("indicator", FaultKind.MALFORMED_JSON, 1, [FaultKind.MALFORMED_JSON, None]),
        # One reset is enough: aiohttp never silently re-sends a POST.
        ("token", FaultKind.RESET, 1, [FaultKind.RESET, None]),
        ("token", FaultKind.MALFORMED_JSON, 1, [FaultKind.MALFORMED_JSON, None]),
    ],
)
async def test_a_reset_or_malformed_json_backs_off_and_retries(
    mati: World, route: str, kind: FaultKind, times: int, seen: list[FaultKind | None]
) -> None:
    async with mati() as w:
        w.sim.faults.inject(kind, route=route, times=times)
        await recovers(w, sleeps=[first_jitter()])
        faults = [r.fault for r in w.sim.recorder.of(route)]
        # The pages after the retry: none on the token route, three more on the indicator one.
        assert faults == seen + ([None] * 3 if route == "indicator" else [])


# ---- attempts and budget run out ------------------------------------------------------------


@pytest.mark.parametrize(("route", "retry_after"), [("indicator", 2), ("token", 4)])
async def test_persistent_429_is_rate_limited_after_max_attempts(
    mati: World, route: str, retry_after: int
) -> None:
    async with mati(client={"max_attempts": 3}) as w:
        w.sim.faults.inject(FaultKind.RATE_LIMIT, route=route, times=10, retry_after_s=retry_after)
        error = await gives_up(w, RateLimited)
        assert error.retry_after_s == float(retry_after)
        assert w.fake.sleeps == [float(retry_after)] * 2
        assert statuses(w.sim, route) == [429, 429, 429]
        assert_no_secret(error, KEY, SECRET)


async def test_a_persistent_429_on_the_token_endpoint_names_it_and_asks_for_no_page(
    mati: World,
) -> None:
    async with mati(client={"max_attempts": 3}) as w:
        w.sim.faults.inject(FaultKind.RATE_LIMIT, route="token", retry_after_s=4, times=10)
        assert "POST /token" in str(await gives_up(w, RateLimited))
        assert w.sim.recorder.of("indicator") == []


async def test_a_retry_after_beyond_the_budget_is_not_waited(mati: World) -> None:
    async with mati(client={"max_wait_s": 120.0}) as w:
        w.sim.faults.inject(FaultKind.RATE_LIMIT, route="indicator", retry_after_s=500)
        assert (await gives_up(w, RateLimited)).retry_after_s == 500.0
        assert w.fake.sleeps == []
        assert statuses(w.sim) == [429]


@pytest.mark.parametrize("route", ["indicator", "token"])
async def test_persistent_malformed_json_is_malformed_response(mati: World, route: str) -> None:
    async with mati(client={"max_attempts": 3}) as w:
        w.sim.faults.inject(FaultKind.MALFORMED_JSON, route=route, times=10)
        await gives_up(w, MalformedResponse)
        assert len(w.sim.recorder.of(route)) == 3
        assert len(w.fake.sleeps) == 2
        if route == "token":
            assert w.sim.recorder.of("indicator") == []


async def test_persistent_5xx_is_upstream_unavailable_after_max_attempts(mati: World) -> None:
    async with mati(client={"max_attempts": 4}) as w:
        w.sim.faults.inject(FaultKind.SERVER_ERROR, route="indicator", status=503, times=10)
        error = await gives_up(w, UpstreamUnavailable)
        assert error.status == 503
        assert statuses(w.sim) == [503] * 4
        rng = random.Random(SEED)
        assert w.fake.sleeps == [Backoff().jittered(n, rng) for n in (1, 2, 3)]
        assert_no_secret(error, KEY, SECRET, w.sim.current_token)


async def test_backoff_stops_at_the_time_budget_before_max_attempts(mati: World) -> None:
    options = {"max_attempts": 50, "max_wait_s": 10.0, "backoff_base_s": 4.0}
    async with mati(client=options) as w:
        w.sim.faults.inject(FaultKind.EMPTY_500, route="indicator", times=50)
        await gives_up(w, UpstreamUnavailable)
        assert sum(w.fake.sleeps) <= 10.0
        assert len(w.sim.recorder.of("indicator")) < 50
