"""Suppressions on plain data: the stored form round-trips, ``explain`` says an indicator is
suppressed (reason and time; whatever the filters say) and what is left of it in the
workspace, and ``suppress`` prints and lists what it did in a stable shape."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import orjson

from services.cli.explain import render
from services.cli.explain_core import Verdict
from services.cli.suppress import Added, Removed, render_added, render_list, render_removed, to_json
from shared.adapters.suppressions import Suppression, SuppressionSet, describe, read_version
from shared.core.fingerprint import SeenEntry
from tests.unit.explain_rig import DEST, IPV4, IPV4_ID, NOW, SUPPRESSION, current, explain


def test_a_suppression_round_trips_and_a_foreign_one_still_suppresses() -> None:
    assert Suppression.decode(SUPPRESSION.mati_id, SUPPRESSION.encode()) == SUPPRESSION
    foreign = Suppression.decode("url--1", b'{"value": "x"}')
    assert (foreign.mati_id, foreign.reason) == ("url--1", "(unreadable)")
    assert foreign.added_at.utcoffset() is not None


def test_the_version_reads_missing_or_foreign_as_zero() -> None:
    assert [read_version(v) for v in (None, b"7", "8", b"x")] == [0, 7, 8, 0]


def test_newest_first() -> None:
    older = replace(SUPPRESSION, mati_id="ipv4--0", added_at=NOW - timedelta(days=2))
    listed = SuppressionSet(3, {s.mati_id: s for s in (older, SUPPRESSION)})
    assert listed.newest_first() == [SUPPRESSION, older]
    assert SUPPRESSION.mati_id in listed


def test_explain_says_suppressed_with_the_reason_and_time_whatever_the_filters_say() -> None:
    for record in (IPV4, {**IPV4, "mscore": 10}):
        answer = explain(record, suppression=SUPPRESSION)
        assert answer.verdict is Verdict.SUPPRESSED
        assert answer.headline.startswith(
            "suppressed since 2025-03-10T11:00:00.000Z: our own proxy"
        )
        assert answer.suppression == SUPPRESSION.to_dict()
        assert render(answer).startswith("SUPPRESSED: suppressed since ")
        assert orjson.loads(answer.to_json())["suppression"]["reason"] == "our own proxy"


def test_explain_shows_what_a_suppression_has_not_revoked_yet() -> None:
    live = {IPV4_ID: SeenEntry(current(IPV4), NOW + timedelta(days=3))}
    answer = explain(IPV4, suppression=SUPPRESSION, seen=live)
    assert answer.verdict is Verdict.SUPPRESSED
    (story,) = answer.stories
    assert story.summary.startswith("still in Sentinel from an earlier upload")
    revoked = {IPV4_ID: SeenEntry(current(IPV4), NOW + timedelta(days=3), revoked=True)}
    (story,) = explain(IPV4, suppression=SUPPRESSION, seen=revoked).stories
    assert story.verdict is Verdict.REVOKED
    assert story.summary.startswith(f"revoked in Sentinel as {IPV4_ID}")
    assert "passes again" not in story.summary, "suppressed: it does not come back"


def test_what_suppress_prints() -> None:
    named = f"ipv4 {IPV4['value']} ({IPV4['id']}) in destination {DEST}"
    assert render_added(Added(SUPPRESSION, True, 2), DEST) == (
        f"suppressed: {named}; 2 object(s) queued for revocation in revoke.{DEST}"
    )
    assert render_added(Added(SUPPRESSION, False, 0), DEST) == (
        f"suppression updated: {named}; not live in the workspace; kept out from now on"
    )
    assert render_removed(Removed(SUPPRESSION, True), DEST).startswith(
        f"suppression removed: {named}; MATI's record handed to the filter again"
    )
    assert "nothing was handed" in render_removed(Removed(SUPPRESSION, False), DEST)


def test_the_list_json_is_stable() -> None:
    listed = orjson.loads(to_json(DEST, [SUPPRESSION]))
    assert listed == {
        "destination": DEST,
        "suppressions": [
            {
                "mati_id": IPV4["id"],
                "value": IPV4["value"],
                "type": "ipv4",
                "reason": "our own proxy",
                "added_at": "2025-03-10T11:00:00+00:00",
            }
        ],
    }
    text = render_list(DEST, [SUPPRESSION])
    assert text.splitlines()[1] == f"  {describe(SUPPRESSION.to_dict())}"
    assert render_list(DEST, []) == f"no suppressions in destination {DEST}"
