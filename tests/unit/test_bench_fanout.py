"""Figure 6 (``bench.fanout``) from made-up runs: the ratio, the targets, and that a wrong
result is no figure. The runs themselves are ``python -m bench --only fanout``."""

from __future__ import annotations

from typing import Any

from bench import fanout
from bench.report import table


def _run(per_indicator: dict[str, float], *, seen_bytes: float = 140.0) -> dict[str, Any]:
    filters = {
        name: {
            "judged": 1000,
            "accepted_objects": 500,
            "uploaded_counter": 500,
            "filter_cpu_s": us / 1000,
            "filter_cpu_us_per_indicator": us,
        }
        for name, us in per_indicator.items()
    }
    return {
        "indicators": 1000,
        "seconds": 2.0,
        "cpu_seconds": {},
        "filters": filters,
        "remembered_indicators": 500 * len(filters),
        "problems": [],
        "seen_keys": 500 * len(filters),
        "seen_keys_by_destination": dict.fromkeys(filters, 500),
        "bytes_per_seen_key": seen_bytes + 1,
        "bytes_per_seen_key_net": seen_bytes,
        "freed_per_seen_key_by_part": {"dataset": seen_bytes},
        "memory_usage_sample_avg": 128.0,
        "key_chars_sample_avg": 29.0,
        "value_bytes_sample_avg": 44.0,
        "object_encodings": ["embstr"],
        "redis_version": "7.0.15",
    }


SOLO = [_run({"solo": 90.0}), _run({"solo": 110.0}), _run({"solo": 100.0})]


def test_the_ratio_is_the_worst_destination_over_the_lone_one_each_pooled_over_its_runs() -> None:
    figure = fanout.figure(
        SOLO,
        [
            _run({"alpha": 100.0, "bravo": 60.0, "golf": 120.0}),
            _run({"alpha": 110.0, "bravo": 60.0, "golf": 110.0}),
        ],
    )
    assert figure.absolute["solo_filter_cpu_us_per_indicator"] == 100.0
    assert figure.ratio == 1.15
    assert figure.absolute["worst_destination"] == "golf"
    assert figure.absolute["like_for_like_ratio"] == 1.05
    assert figure.passed
    assert "golf" in table([figure])


def test_either_target_missed_fails_and_the_worst_bytes_count() -> None:
    assert not fanout.figure(SOLO, [_run({"alpha": 125.0})]).passed
    heavy = fanout.figure(SOLO, [_run({"alpha": 100.0}), _run({"alpha": 100.0}, seen_bytes=187.5)])
    assert heavy.ratio == 1.0
    assert heavy.absolute["redis_bytes_per_remembered_indicator"] == 187.5
    assert not heavy.passed


def test_a_wrong_workspace_is_no_figure() -> None:
    wrong = _run({"alpha": 100.0})
    wrong["problems"] = ["alpha: 3 missing, 0 nobody expected"]
    figure = fanout.figure(SOLO, [_run({"alpha": 100.0}), wrong])
    assert figure.ratio is None
    assert not figure.passed
    assert figure.note.startswith("WRONG RESULT")
    assert "3 missing" in table([figure])


def test_five_destinations_with_different_filters_one_like_the_lone_one() -> None:
    assert len(fanout.FAN_OUT) == 5
    assert fanout.FAN_OUT["alpha"] == fanout.SOLO["solo"] == fanout.HEAVIEST
    filters = [tuple(sorted(s.items())) for s in fanout.FAN_OUT.values()]
    assert len(set(filters)) == 5
    # Short names: a seen key's name stays within Redis's 32-byte allocation.
    assert all(len(name) <= 5 for name in [*fanout.FAN_OUT, *fanout.SOLO])
