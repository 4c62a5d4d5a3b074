"""``shared.core.retrying`` and ``shared.core.timing``: the one retry loop and the one
stop-aware wait, driven with a fake sleep and clock (no real waiting, no server)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import pytest

from shared.core.backoff import Backoff
from shared.core.errors import TransientError, UpstreamUnavailable
from shared.core.retrying import Retrier, Stopped, retry
from shared.core.timing import sleep_unless_stopped
from tests.helpers import FakeTime

POLICY = Backoff(base_s=1.0, cap_s=8.0, max_attempts=4, budget_s=100.0)


def failing(times: int, error: BaseException) -> tuple[list[int], Callable[[], Awaitable[str]]]:
    calls: list[int] = []

    async def attempt() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise error
        return "done"

    return calls, attempt


async def test_a_bounded_retry_waits_the_policys_jittered_waits_then_succeeds() -> None:
    time = FakeTime()
    calls, attempt = failing(2, TransientError("down"))
    retrier = Retrier(POLICY, random.Random(3), clock=time.clock)
    result = await retry(attempt, on=TransientError, retrier=retrier, sleep=time.sleep)
    assert result == "done"
    assert len(calls) == 3
    expected = random.Random(3)
    assert time.sleeps == [POLICY.jittered(1, expected), POLICY.jittered(2, expected)]
    assert retrier.failures == 0, "a success resets the count"


async def test_a_bounded_retry_gives_up_with_the_last_error_after_max_attempts() -> None:
    time = FakeTime()
    calls, attempt = failing(10, UpstreamUnavailable("still down"))
    retrier = Retrier(POLICY, random.Random(1), clock=time.clock)
    with pytest.raises(UpstreamUnavailable, match="still down"):
        await retry(attempt, on=TransientError, retrier=retrier, sleep=time.sleep)
    assert len(calls) == POLICY.max_attempts
    assert len(time.sleeps) == POLICY.max_attempts - 1


async def test_a_bounded_retry_gives_up_when_the_budget_would_be_spent() -> None:
    time = FakeTime()
    policy = Backoff(base_s=1.0, cap_s=8.0, max_attempts=100, budget_s=10.0)
    calls, attempt = failing(100, TransientError("down"))
    retrier = Retrier(policy, random.Random(1), clock=time.clock)
    with pytest.raises(TransientError):
        await retry(
            attempt,
            on=TransientError,
            retrier=retrier,
            sleep=time.sleep,
            server_wait=lambda exc: 4.0,
        )
    assert time.sleeps == [4.0, 4.0], "a third wait would pass the 10 s budget"
    assert len(calls) == 3


async def test_other_exceptions_are_not_retried() -> None:
    time = FakeTime()
    calls, attempt = failing(1, KeyError("bug"))
    with pytest.raises(KeyError):
        await retry(
            attempt,
            on=TransientError,
            retrier=Retrier(POLICY, clock=time.clock),
            sleep=time.sleep,
        )
    assert (len(calls), time.sleeps) == (1, [])


async def test_an_unbounded_retry_never_gives_up_and_tells_each_wait() -> None:
    time = FakeTime()
    calls, attempt = failing(20, TransientError("down"))
    told: list[tuple[str, float]] = []
    retrier = Retrier(POLICY, random.Random(5), clock=time.clock, bounded=False)
    result = await retry(
        attempt,
        on=TransientError,
        retrier=retrier,
        sleep=time.sleep,
        on_retry=lambda exc, wait: told.append((str(exc), wait)),
    )
    assert result == "done"
    assert (len(calls), len(time.sleeps)) == (21, 20)
    assert all(0 <= wait <= POLICY.cap_s for wait in time.sleeps)
    assert [wait for _, wait in told] == time.sleeps
    assert {text for text, _ in told} == {"down"}


async def test_a_stop_during_a_wait_raises_stopped_from_the_last_failure() -> None:
    stop = asyncio.Event()
    error = TransientError("down")

    async def attempt() -> None:
        raise error

    async def sleep(seconds: float) -> None:
        stop.set()
        await asyncio.Event().wait()  # would sleep forever: only the stop ends it

    retrier = Retrier(POLICY, bounded=False)
    with pytest.raises(Stopped) as raised:
        await retry(attempt, on=TransientError, retrier=retrier, stop=stop, sleep=sleep)
    assert raised.value.__cause__ is error


async def test_sleep_unless_stopped() -> None:
    time = FakeTime()
    stop = asyncio.Event()
    assert await sleep_unless_stopped(stop, 2.5, sleep=time.sleep) is True
    assert await sleep_unless_stopped(stop, 0, sleep=time.sleep) is True
    assert time.sleeps == [2.5], "no sleep at all for zero seconds"
    stop.set()
    assert await sleep_unless_stopped(stop, 2.5, sleep=time.sleep) is False
    assert time.sleeps == [2.5], "already stopped: no sleep"


async def test_sleep_unless_stopped_returns_when_stop_comes_and_cancels_the_sleep() -> None:
    stop = asyncio.Event()
    cancelled = asyncio.Event()

    async def sleep(seconds: float) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    waiting = asyncio.create_task(sleep_unless_stopped(stop, 60, sleep=sleep))
    await asyncio.sleep(0)
    stop.set()
    assert await asyncio.wait_for(waiting, 1) is False
    assert cancelled.is_set()


async def test_cancelling_the_waiter_cancels_both_waits() -> None:
    stop = asyncio.Event()
    waiting = asyncio.create_task(sleep_unless_stopped(stop, 60))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not stop.is_set()
