"""The requests-per-second ceiling, checked on an injected clock: no wall time is involved."""

from __future__ import annotations

import asyncio
import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.core.pacing import Pacer
from tests.helpers import FakeTime


async def test_the_first_request_goes_at_once_then_starts_are_spaced() -> None:
    fake = FakeTime()
    starts: list[float] = []
    pacer = Pacer(2.0, clock=fake.clock, sleep=fake.sleep)
    for _ in range(5):
        await pacer.wait()
        starts.append(fake.now)
    assert starts == [1000.0, 1000.5, 1001.0, 1001.5, 1002.0]
    assert fake.sleeps == [0.5, 0.5, 0.5, 0.5]


async def test_time_spent_elsewhere_counts_towards_the_spacing() -> None:
    fake = FakeTime()
    pacer = Pacer(1.0, clock=fake.clock, sleep=fake.sleep)
    await pacer.wait()
    fake.now += 0.75  # the request itself took 0.75 s
    await pacer.wait()
    assert fake.sleeps == [pytest.approx(0.25)]


async def test_an_idle_spell_does_not_bank_a_burst() -> None:
    fake = FakeTime()
    pacer = Pacer(1.0, clock=fake.clock, sleep=fake.sleep)
    await pacer.wait()
    fake.now += 3600  # idle for an hour
    starts: list[float] = []
    for _ in range(3):
        await pacer.wait()
        starts.append(fake.now)
    assert starts == [4600.0, 4601.0, 4602.0]


def test_concurrent_callers_get_distinct_slots() -> None:
    fake = FakeTime()
    pacer = Pacer(4.0, clock=fake.clock, sleep=fake.sleep)
    reserved = [pacer.reserve() for _ in range(4)]
    assert reserved == [0.0, 0.25, 0.5, 0.75]

    # Slots are taken without awaiting, so tasks interleaving cannot share one.


async def test_infinite_rate_never_sleeps() -> None:
    fake = FakeTime()
    pacer = Pacer(math.inf, clock=fake.clock, sleep=fake.sleep)
    for _ in range(100):
        await pacer.wait()
    assert fake.sleeps == []
    assert pacer.interval_s == 0.0


@pytest.mark.parametrize("rate", [0.0, -1.0, math.nan])
def test_rejects_a_rate_that_is_not_positive(rate: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        Pacer(rate)


@given(
    rate=st.floats(min_value=0.01, max_value=1000),
    gaps=st.lists(st.floats(min_value=0, max_value=5), min_size=1, max_size=40),
)
def test_no_window_ever_holds_more_starts_than_the_ceiling(rate: float, gaps: list[float]) -> None:
    fake = FakeTime()
    pacer = Pacer(rate, clock=fake.clock, sleep=fake.sleep)
    starts: list[float] = []

    async def run() -> None:
        for gap in gaps:
            fake.now += gap
            await pacer.wait()
            starts.append(fake.now)

    asyncio.run(run())
    interval = 1.0 / rate
    for earlier, later in itertools.pairwise(starts):
        assert later - earlier >= interval * (1 - 1e-9)
