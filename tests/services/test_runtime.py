"""What every service process does before its loop starts (``services.runtime``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from services.runtime import GC_YOUNG_THRESHOLD, tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_gc")
def test_start_up_objects_leave_collections_and_young_ones_wait_longer() -> None:
    gc.unfreeze()
    tune_gc()
    assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD > 700  # CPython's default
    assert gc.get_freeze_count() > 1000  # this process's modules, at least
