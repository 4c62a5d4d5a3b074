"""Argument checks: each bad value is refused with its name and value, NaN included (a NaN
lock duration would otherwise pass every ``<`` test and lock nothing)."""

from __future__ import annotations

import math
import re

import pytest

from shared.core import checks


@pytest.mark.parametrize(
    ("value", "ok"), [(1, True), (5.5, True), (0.999, False), (math.nan, False)]
)
def test_at_least(value: float, ok: bool) -> None:
    if ok:
        checks.at_least("lanes", value, 1)
    else:
        with pytest.raises(ValueError, match=re.escape(f"lanes must be ≥ 1, got {value}")):
            checks.at_least("lanes", value, 1)


@pytest.mark.parametrize(
    ("value", "ok"), [(0.001, True), (0, False), (-1, False), (math.nan, False)]
)
def test_above(value: float, ok: bool) -> None:
    if ok:
        checks.above("lock_duration_s", value, 0)
    else:
        with pytest.raises(
            ValueError, match=re.escape(f"lock_duration_s must be > 0, got {value}")
        ):
            checks.above("lock_duration_s", value, 0)


def test_named() -> None:
    checks.named("consumer", "filter-1")
    with pytest.raises(ValueError, match="consumer must not be empty"):
        checks.named("consumer", "")
