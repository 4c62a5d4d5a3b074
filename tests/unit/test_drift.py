"""Reconciliation's comparison rules: every state of the seen cache's entry against every
state of the workspace's latest object, with and without the in-flight grace, and the report
that counts the verdicts."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.core.drift import (
    DEFAULT_SAMPLE_SIZE,
    VALID_UNTIL_TOLERANCE,
    Drift,
    DriftReport,
    classify,
)
from shared.core.fingerprint import SeenEntry
from shared.core.workspace_objects import WorkspaceObject
from tests.unit.strategies import PROPERTY

NOW = datetime(2025, 3, 9, 8, 0, tzinfo=UTC)
UNTIL = NOW + timedelta(days=7)
PAST = NOW - timedelta(days=1)
FP = "0123456789abcdef0123456789abcdef"
OTHER_FP = "fedcba9876543210fedcba9876543210"
LINEAGE = "indicator--11111111-1111-5111-8111-111111111111"


def entry(
    *, until: datetime = UNTIL, revoked: bool = False, generation: int = 1, fp: str = FP
) -> SeenEntry:
    return SeenEntry(fp, until, b"", revoked, generation)


def found(
    *,
    until: datetime | None = UNTIL,
    revoked: bool = False,
    deleted: bool = False,
    generation: int | None = 1,
    fp: str | None = FP,
) -> WorkspaceObject:
    return WorkspaceObject(
        stix_id="indicator--22222222-2222-5222-8222-222222222222",
        lineage=LINEAGE,
        mati_id="ipv4--1",
        generation=generation,
        fingerprint=fp,
        valid_until=until,
        revoked=revoked,
        deleted=deleted,
        time_generated=NOW - timedelta(hours=1),
    )


#: Every cache state the rules tell apart.
CACHE: dict[str, SeenEntry | None] = {
    "absent": None,
    "live": entry(),
    "expired": entry(until=PAST),
    "revoked": entry(revoked=True),
    "revoked+expired": entry(revoked=True, until=PAST),
}
#: Every workspace state the rules tell apart (relative to CACHE["live"]).
WORKSPACE: dict[str, WorkspaceObject | None] = {
    "absent": None,
    "equal": found(),
    "within 1 s": found(until=UNTIL + VALID_UNTIL_TOLERANCE),
    "valid_until moved": found(until=UNTIL + VALID_UNTIL_TOLERANCE + timedelta(milliseconds=1)),
    "valid_until earlier": found(until=UNTIL - timedelta(hours=1)),
    "no valid_until": found(until=None),
    "other fingerprint": found(fp=OTHER_FP),
    "no fingerprint": found(fp=None),
    "newer generation": found(generation=2),
    "older generation": found(generation=0),
    "no lineage": found(generation=None),
    "expired": found(until=PAST),
    "deleted": found(deleted=True),
    "revoked": found(revoked=True),
    "revoked, older generation": found(revoked=True, generation=0),
    "revoked, newer generation": found(revoked=True, generation=2),
    "revoked and deleted": found(revoked=True, deleted=True),
    "revoked and expired": found(revoked=True, until=PAST),
}
_LIVE_WORKSPACE = {
    "equal",
    "within 1 s",
    "valid_until moved",
    "valid_until earlier",
    "no valid_until",
    "other fingerprint",
    "no fingerprint",
    "newer generation",
    "older generation",
    "no lineage",
}
_STALE = _LIVE_WORKSPACE - {"equal", "within 1 s"}


def expected(cache: str, workspace: str) -> Drift | None:
    """The rules written out per state name, independently of ``classify``'s code."""
    live = workspace in _LIVE_WORKSPACE
    if cache in ("revoked", "revoked+expired"):
        return Drift.REVOKED_MISMATCH if live else None
    if cache in ("absent", "expired"):
        return Drift.UNKNOWN if live else None
    # cache live
    if workspace in ("absent", "deleted", "expired", "revoked and deleted"):
        return Drift.MISSING
    if workspace == "revoked, older generation":
        return Drift.MISSING
    if workspace.startswith("revoked"):
        return Drift.REVOKED_MISMATCH
    return Drift.STALE if workspace in _STALE else Drift.AGREEING


@pytest.mark.parametrize(
    ("cache", "workspace"), list(itertools.product(CACHE, WORKSPACE)), ids="|".join
)
def test_every_cache_state_against_every_workspace_state(cache: str, workspace: str) -> None:
    verdict = classify(CACHE[cache], WORKSPACE[workspace], recent=False, now=NOW)
    assert verdict == expected(cache, workspace)


@pytest.mark.parametrize(
    ("cache", "workspace"), list(itertools.product(CACHE, WORKSPACE)), ids="|".join
)
def test_within_the_grace_window_every_disagreement_is_in_flight(
    cache: str, workspace: str
) -> None:
    settled = expected(cache, workspace)
    verdict = classify(CACHE[cache], WORKSPACE[workspace], recent=True, now=NOW)
    if settled in (None, Drift.AGREEING):
        assert verdict == settled
    else:
        assert verdict is Drift.IN_FLIGHT


def test_the_named_examples_of_each_kind() -> None:
    """The brief's wording, one line each, as a reader of the rules would check them."""
    assert classify(entry(), found(), recent=False, now=NOW) is Drift.AGREEING
    assert classify(entry(), None, recent=False, now=NOW) is Drift.MISSING
    assert classify(entry(), found(fp=OTHER_FP), recent=False, now=NOW) is Drift.STALE
    assert classify(None, found(), recent=False, now=NOW) is Drift.UNKNOWN
    assert classify(entry(revoked=True), found(), recent=False, now=NOW) is Drift.REVOKED_MISMATCH
    assert classify(entry(), found(revoked=True), recent=False, now=NOW) is Drift.REVOKED_MISMATCH
    assert classify(entry(), None, recent=True, now=NOW) is Drift.IN_FLIGHT
    assert classify(None, None, recent=False, now=NOW) is None


def test_expiry_is_judged_at_now() -> None:
    """The same pair agrees before either side expires and says nothing after both have."""
    assert classify(entry(), found(), recent=False, now=NOW) is Drift.AGREEING
    assert classify(entry(), found(), recent=False, now=UNTIL) is None
    # The cache expires a little earlier than the workspace (still within tolerance):
    early = entry(until=UNTIL - timedelta(milliseconds=500))
    at = UNTIL - timedelta(milliseconds=250)
    assert classify(early, found(), recent=False, now=at) is Drift.UNKNOWN


@PROPERTY
@given(
    cached=st.sampled_from(list(CACHE.values())),
    obj=st.sampled_from(list(WORKSPACE.values())),
    recent=st.booleans(),
    shift=st.timedeltas(min_value=timedelta(days=-30), max_value=timedelta(days=30)),
)
def test_a_verdict_needs_one_live_side(
    cached: SeenEntry | None, obj: WorkspaceObject | None, recent: bool, shift: timedelta
) -> None:
    now = NOW + shift
    verdict = classify(cached, obj, recent=recent, now=now)
    cache_live = cached is not None and cached.live(now)
    workspace_live = obj is not None and obj.live(now)
    if not cache_live and not workspace_live:
        assert verdict is None
    else:
        assert verdict is not None
    if verdict is Drift.AGREEING:
        assert cache_live
        assert workspace_live


# --- the report -------------------------------------------------------------------------------


def test_the_report_counts_every_kind_and_samples_the_first_ids() -> None:
    report = DriftReport(sample_size=2)
    for n in range(5):
        report.add(Drift.MISSING, f"indicator--m{n}")
    report.add(Drift.AGREEING, "indicator--a")
    report.add(Drift.IN_FLIGHT, "indicator--f")
    report.add(None, "indicator--n")
    report.unreadable = 3
    report.foreign = 1
    assert report.count(Drift.MISSING) == 5
    assert report.count(Drift.STALE) == 0
    assert report.drifted == 5
    document = report.to_json()
    assert orjson.loads(orjson.dumps(document)) == document
    assert document == {
        "objects": 8,
        "unreadable": 3,
        "foreign": 1,
        "drifted": 5,
        "counts": {
            "agreeing": 1,
            "missing": 5,
            "stale": 0,
            "unknown": 0,
            "revoked_mismatch": 0,
            "in_flight": 1,
        },
        "samples": {
            "agreeing": ["indicator--a"],
            "missing": ["indicator--m0", "indicator--m1"],
            "stale": [],
            "unknown": [],
            "revoked_mismatch": [],
            "in_flight": ["indicator--f"],
        },
    }


@PROPERTY
@given(st.lists(st.sampled_from([None, *Drift]), max_size=200))
def test_counts_add_up_and_samples_stay_bounded(verdicts: list[Drift | None]) -> None:
    report = DriftReport()
    for n, verdict in enumerate(verdicts):
        report.add(verdict, f"indicator--{n}")
    assert report.objects == len(verdicts)
    assert sum(report.counts.values()) == sum(v is not None for v in verdicts)
    for kind in Drift:
        assert report.count(kind) == verdicts.count(kind)
        sample = report.samples.get(kind, [])
        assert len(sample) == min(DEFAULT_SAMPLE_SIZE, verdicts.count(kind))
        firsts = [f"indicator--{n}" for n, v in enumerate(verdicts) if v is kind]
        assert sample == firsts[:DEFAULT_SAMPLE_SIZE]
