"""The chaos plan (``harness.chaos.scheduler``): the same seed gives the same plan, another
seed another; the kills reach every service and every phase of each, both replicas of a
scaled service, spread over the window one per slot; Redis dies as often as asked, inside
its span; each action falls in its own span."""

from __future__ import annotations

from collections import Counter

import pytest

from harness.chaos.scheduler import (
    ACTION_SPANS,
    LEAD,
    PHASES,
    REDIS_SPAN,
    SHARES,
    ActionKind,
    Kill,
    Size,
    kill_counts,
    make_plan,
)

FULL = Size(indicators=50_000, service_kills=100, redis_kills=3, window_s=400.0)


def test_the_same_seed_gives_the_same_plan_and_another_seed_another() -> None:
    assert make_plan(7, FULL) == make_plan(7, FULL)
    assert make_plan(7, FULL).kills != make_plan(8, FULL).kills


@pytest.mark.parametrize("seed", range(5))
def test_kills_reach_every_service_phase_and_replica(seed: int) -> None:
    plan = make_plan(seed, FULL)
    assert len(plan.kills) == 100
    by_phase = plan.kills_by()
    for service, phases in PHASES.items():
        counts = [by_phase[(service, phase)] for phase in phases]
        assert min(counts) >= 1, (service, counts)
        assert max(counts) - min(counts) <= 1, f"{service}'s phases unevenly hit: {counts}"
    by_service = Counter(k.service for k in plan.kills)
    assert by_service == {s: round(100 * share) for s, share in SHARES.items()}
    for service in ("filter", "uploader"):
        replicas = Counter(k.replica for k in plan.kills if k.service == service)
        assert set(replicas) == {0, 1}
        assert abs(replicas[0] - replicas[1]) <= 1


@pytest.mark.parametrize("seed", range(5))
def test_kills_fall_one_per_slot_over_the_window(seed: int) -> None:
    plan = make_plan(seed, FULL)
    start, width = FULL.window_s * LEAD, FULL.window_s * (1 - LEAD) / 100
    times = [k.at_s for k in plan.kills]
    assert times == sorted(times)
    slots = [int((at - start) // width) for at in times]
    assert slots == list(range(100)), "exactly one kill in each slot"
    assert all(0 <= k.restart_after_s <= 2.0 for k in plan.kills)


def test_redis_dies_as_often_as_asked_within_its_span_and_the_actions_within_theirs() -> None:
    plan = make_plan(3, FULL)
    low, high = (FULL.window_s * share for share in REDIS_SPAN)
    assert len(plan.redis_kills) == 3
    assert all(low <= r.at_s < high and 0.5 <= r.down_s <= 3.0 for r in plan.redis_kills)
    assert {a.kind for a in plan.actions} == set(ActionKind)
    for action in plan.actions:
        a, b = ACTION_SPANS[action.kind]
        assert a * FULL.window_s <= action.at_s <= b * FULL.window_s, action
    events = plan.events()
    assert len(events) == 100 + 3 + len(ActionKind)
    assert [e.at_s for e in events] == sorted(e.at_s for e in events)
    assert sum(isinstance(e, Kill) for e in events) == 100


@pytest.mark.parametrize(
    ("total", "expected"),
    [
        (0, {"fetcher": 0, "filter": 0, "uploader": 0}),
        (7, {"fetcher": 2, "filter": 2, "uploader": 3}),  # every phase once
        (10, {"fetcher": 2, "filter": 3, "uploader": 5}),
        (24, {"fetcher": 2, "filter": 10, "uploader": 12}),
        (101, {"fetcher": 8, "filter": 42, "uploader": 51}),
    ],
)
def test_kill_counts_follow_the_shares_and_cover_every_phase(
    total: int, expected: dict[str, int]
) -> None:
    assert kill_counts(total) == expected


def test_a_size_names_every_service() -> None:
    with pytest.raises(ValueError, match="replicas"):
        Size(indicators=1, service_kills=1, redis_kills=0, window_s=1.0, replicas={"filter": 2})
