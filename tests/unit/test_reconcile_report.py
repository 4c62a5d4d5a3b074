"""``reconcile``'s pure parts: the seen entry a repair writes for each state the workspace shows
a lineage in, and the report an operator reads (text and JSON)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import orjson

from services.cli.reconcile import Outcome, Repair, _workspace_view, render
from shared.core.drift import Drift, DriftReport
from shared.core.fingerprint import SeenEntry
from shared.core.stix import stix_id
from shared.core.workspace_objects import WorkspaceObject

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
MATI = "ipv4--00000001-0000-5000-8000-000000000000"


def found(generation: int = 0, **fields: object) -> WorkspaceObject:
    obj = WorkspaceObject(
        stix_id=stix_id(MATI, None, generation),
        lineage=stix_id(MATI, None),
        mati_id=MATI,
        generation=generation,
        fingerprint="a" * 32,
        valid_until=NOW + timedelta(days=3),
        revoked=False,
        deleted=False,
        time_generated=NOW - timedelta(hours=1),
    )
    return replace(obj, **fields)  # type: ignore[arg-type]


def test_a_live_or_revoked_object_is_taken_as_it_is() -> None:
    assert _workspace_view(found(), None, NOW) == SeenEntry("a" * 32, NOW + timedelta(days=3))
    revoked = _workspace_view(found(revoked=True), None, NOW)
    assert revoked == SeenEntry("a" * 32, NOW + timedelta(days=3), revoked=True)


def test_a_deleted_or_expired_generation_0_leaves_nothing_in_the_cache() -> None:
    assert _workspace_view(found(deleted=True), None, NOW) is None
    assert _workspace_view(found(valid_until=NOW - timedelta(days=1)), None, NOW) is None


def test_a_deleted_later_generation_is_kept_not_live_at_its_generation() -> None:
    """So the filter publishes the lineage again under that id, never a revoked earlier one."""
    cached = SeenEntry("b" * 32, NOW + timedelta(days=5), generation=2)
    entry = _workspace_view(found(2, deleted=True, fingerprint=None), cached, NOW)
    assert entry is not None
    assert (entry.fingerprint, entry.generation, entry.revoked) == ("b" * 32, 2, False)
    assert not entry.live(NOW)
    assert entry.next_generation() == 2


def _outcome(repair: Repair | None = None) -> Outcome:
    report = DriftReport()
    for kind, ids in (
        (Drift.AGREEING, ["indicator--a"]),
        (Drift.MISSING, ["indicator--m1", "indicator--m2"]),
        (Drift.IN_FLIGHT, ["indicator--f"]),
    ):
        for stix in ids:
            report.add(kind, stix)
    return Outcome("soc", NOW, 15.0, report, seconds=1.25, partitions=16, streak=2, repair=repair)


def test_the_report_names_each_kind_with_examples_and_what_to_do() -> None:
    text = render(_outcome())
    assert text.splitlines()[0] == (
        "reconcile of destination soc: 4 lineage(s) compared (16 partition(s), 1.2 s; grace 15 min)"
    )
    assert "  missing                   2  the cache says live;" in text
    assert "e.g. indicator--m1, indicator--m2" in text
    assert "indicator--a" not in text, "agreeing lineages are not listed"
    assert text.splitlines()[-1] == (
        "drift: 2 lineage(s) (reconciles in a row with drift: 2); "
        "`mati2sentinel reconcile --repair` fixes it"
    )
    body = orjson.loads(_outcome().to_json())
    assert body["counts"] == {
        "agreeing": 1,
        "missing": 2,
        "stale": 0,
        "unknown": 0,
        "revoked_mismatch": 0,
        "in_flight": 1,
    }
    assert (body["drifted"], body["streak"], body["repair"]) == (2, 2, None)


def test_a_repair_says_what_it_did_and_what_it_could_not() -> None:
    done = Repair(requeued=2, rebuilt=1, forgotten=1, unresolved=1, not_rejudged=3)
    text = render(_outcome(done))
    assert "repaired: seen entries set to the workspace's view 1, forgotten 1; records" in text
    assert "1 lineage(s) could not be re-judged" in text
    assert "run `mati2sentinel sync --once --full` to re-judge them" in text
    assert orjson.loads(_outcome(done).to_json())["repair"]["requeued"] == 2
