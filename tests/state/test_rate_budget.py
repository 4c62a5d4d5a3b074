"""The uploaders' shared budget against a real redis-server: never more grants than its limit in
any window across replicas, and a 429 pause every replica obeys and none shortens."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from shared.adapters.rate_budget import RateBudget


async def test_budget_never_grants_more_than_limit_in_any_window(
    redis_client: Redis, other_client: Redis
) -> None:
    """20 tasks on two clients (two "replicas") want 25 requests under 10 per second.

    Grant times are taken by the client when ``acquire`` returns, which is after the server
    granted it: that is when the request would leave, so it is what Sentinel's window would
    count. The margin (0.25 s) covers the delay between the server's grant and our reading of
    it; no 1-second window of client-side grant times may hold more than 10.
    """
    limit, window_s, margin_s, wanted = 10, 1.0, 0.25, 25
    budgets = [
        RateBudget(client, "acme", limit=limit, window_s=window_s, margin_s=margin_s)
        for client in (redis_client, other_client)
    ]
    granted: list[float] = []

    async def replica(budget: RateBudget) -> None:
        while len(granted) < wanted:
            wait = await budget.acquire()
            if wait == 0.0:
                granted.append(time.monotonic())
            else:
                assert 0.0 < wait <= window_s + margin_s
                await asyncio.sleep(wait)

    await asyncio.gather(*(replica(budgets[n % 2]) for n in range(20)))

    granted.sort()
    assert len(granted) >= wanted
    for i, start in enumerate(granted):
        in_window = sum(1 for t in granted[i:] if t - start < window_s)
        assert in_window <= limit, f"{in_window} grants within {window_s}s from grant {i}"


async def test_budget_wait_is_until_the_oldest_leaves(redis_client: Redis) -> None:
    budget = RateBudget(redis_client, "acme", limit=2, window_s=0.3, margin_s=0.0)

    started = time.monotonic()
    assert await budget.acquire() == 0.0
    await asyncio.sleep(0.1)
    assert await budget.acquire() == 0.0
    wait = await budget.acquire()
    elapsed = time.monotonic() - started

    # The first grant happened after ``started`` and at least 0.1 s before the refusal.
    assert 0.3 - elapsed - 0.01 <= wait <= 0.2
    assert await budget.in_window() == 2, "a refused request is not recorded"

    await asyncio.sleep(wait)
    assert await budget.acquire() == 0.0, "the oldest grant has left the window"
    assert await budget.in_window() == 2
    assert await budget.acquire() > 0.0


async def test_pause_is_shared_and_never_shortened(
    redis_client: Redis, other_client: Redis
) -> None:
    first = RateBudget(redis_client, "acme")
    second = RateBudget(other_client, "acme")
    assert await first.paused_for() == 0.0

    assert await first.pause(5.0) == 5.0
    assert 4.5 < await second.paused_for() <= 5.0
    assert 4.5 < await second.acquire() <= 5.0, "every replica waits out the 429"

    assert 4.5 < await second.pause(1.0) <= 5.0
    assert 4.5 < await first.paused_for() <= 5.0

    assert await second.pause(10.0) == 10.0
    assert 9.5 < await first.paused_for() <= 10.0
    assert await first.in_window() == 0, "nothing was granted during the pause"


async def test_budget_grants_again_after_the_pause(redis_client: Redis) -> None:
    budget = RateBudget(redis_client, "acme")
    await budget.pause(0.05)
    assert await budget.acquire() > 0.0

    await asyncio.sleep(0.07)

    assert await budget.acquire() == 0.0
    assert await budget.paused_for() == 0.0


def test_budget_refuses_bad_arguments(redis_client: Redis) -> None:
    with pytest.raises(ValueError, match="limit"):
        RateBudget(redis_client, "acme", limit=0)
    with pytest.raises(ValueError, match="window_s"):
        RateBudget(redis_client, "acme", window_s=0)
    with pytest.raises(ValueError, match="margin_s"):
        RateBudget(redis_client, "acme", margin_s=-1)


@pytest.mark.parametrize(
    ("window_s", "span_s"), [(1.0, 1.1), (3.0, 3.3), (30.0, 31.0), (60.0, 61.0)]
)
def test_the_default_margin_is_a_tenth_of_the_window_at_most_a_second(
    redis_client: Redis, window_s: float, span_s: float
) -> None:
    budget = RateBudget(redis_client, "acme", limit=100, window_s=window_s)
    assert budget.span_us == round(span_s * 1_000_000)
