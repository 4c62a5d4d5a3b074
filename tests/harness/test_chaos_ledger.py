"""The duplicate bound of the chaos run (``harness.chaos.ledger``) on hand-made ledgers: a
version uploaded once more than the disruptions that caught it in flight is over its bound;
a disruption catches an upload only between it and the next upload of the same version, and
only in its scope (the killed uploader's ports, the stalled request, the killed filter's
indicators; Redis and a revoked token catch every upload)."""

from __future__ import annotations

import pytest

from harness.chaos.ledger import Disruption, DisruptionKind, Ledger, Upload

V = ("indicator--a", "fp1")
W = ("indicator--b", "fp2")


def ledger(
    *uploads: tuple[tuple[str, str], Upload], disruptions: tuple[Disruption, ...] = ()
) -> Ledger:
    book = Ledger()
    for version, upload in uploads:
        book.upload(version, upload)
    for disruption in disruptions:
        book.disrupt(disruption)
    return book


def test_each_version_once_holds_and_counts_no_duplicates() -> None:
    verdict = ledger((V, Upload(1.0, 1, 5000)), (W, Upload(1.0, 1, 5000))).verdict()
    assert verdict.holds
    assert (verdict.versions, verdict.uploads, verdict.duplicates) == (2, 2, 0)
    assert verdict.worst is not None
    assert verdict.worst[1:] == (1, 1)


def test_a_second_upload_with_nothing_in_between_is_over_the_bound() -> None:
    verdict = ledger((V, Upload(1.0, 1, 5000)), (V, Upload(9.0, 2, 5001))).verdict()
    assert not verdict.holds
    assert verdict.over_bound == 1
    assert [(e.version, e.uploads, e.hits) for e in verdict.excess] == [(V, 2, 0)]
    assert verdict.duplicates == 1


def test_a_killed_uploader_explains_a_second_upload_of_what_it_had_in_flight() -> None:
    kill = Disruption(DisruptionKind.UPLOADER_KILL, 3.0, 3.0, ports=frozenset({5000}))
    held = ledger((V, Upload(1.0, 1, 5000)), (V, Upload(9.0, 2, 5001)), disruptions=(kill,))
    assert held.verdict().holds
    assert held.verdict().explained_by == {"uploader_kill": 1}
    # Another uploader's death explains nothing about this upload.
    other = Disruption(DisruptionKind.UPLOADER_KILL, 3.0, 3.0, ports=frozenset({6000}))
    assert not ledger((V, Upload(1.0, 1, 5000)), (V, Upload(9.0, 2, 5001)),
                      disruptions=(other,)).verdict().holds  # fmt: skip


def test_a_disruption_outside_the_gap_explains_nothing() -> None:
    before = Disruption(DisruptionKind.REDIS_KILL, 0.1, 0.5)
    after = Disruption(DisruptionKind.REDIS_KILL, 9.5, 10.0)
    book = ledger((V, Upload(1.0, 1, 5000)), (V, Upload(9.0, 2, 5001)),
                  disruptions=(before, after))  # fmt: skip
    assert not book.verdict().holds
    during = Disruption(DisruptionKind.REDIS_KILL, 0.5, 1.5)  # Redis came back after it
    assert ledger((V, Upload(1.0, 1, 5000)), (V, Upload(9.0, 2, 5001)),
                  disruptions=(during,)).verdict().holds  # fmt: skip


def test_one_disruption_explains_one_extra_upload_not_two() -> None:
    kill = Disruption(DisruptionKind.UPLOADER_KILL, 3.0, 3.0, ports=frozenset({5000}))
    thrice = ledger(
        (V, Upload(1.0, 1, 5000)), (V, Upload(9.0, 2, 5000)), (V, Upload(20.0, 3, 5001)),
        disruptions=(kill,),
    )  # fmt: skip
    verdict = thrice.verdict()
    assert [(e.uploads, e.hits) for e in verdict.excess] == [(3, 1)]
    stalled = Disruption(DisruptionKind.ANSWER_LOST, 9.0, 9.0, serial=2)
    assert ledger(
        (V, Upload(1.0, 1, 5000)), (V, Upload(9.0, 2, 5000)), (V, Upload(20.0, 3, 5001)),
        disruptions=(kill, stalled),
    ).verdict().holds  # fmt: skip


@pytest.mark.parametrize(
    ("disruption", "reaches"),
    [
        (Disruption(DisruptionKind.ANSWER_LOST, 2.0, 2.0, serial=1), True),
        (Disruption(DisruptionKind.ANSWER_LOST, 2.0, 2.0, serial=7), False),
        (Disruption(DisruptionKind.FILTER_KILL, 0.0, 60.0, indicators=frozenset({"m1"})), True),
        (Disruption(DisruptionKind.FILTER_KILL, 0.0, 60.0, indicators=frozenset({"m2"})), False),
        (Disruption(DisruptionKind.ACCESS_REVOKED, 2.0, 2.0), True),
    ],
)
def test_a_disruption_reaches_only_its_scope(disruption: Disruption, reaches: bool) -> None:
    book = ledger((V, Upload(1.0, 1, 5000, "m1")), (V, Upload(9.0, 2, 5001, "m1")),
                  disruptions=(disruption,))  # fmt: skip
    assert book.verdict().holds is reaches


def test_the_worst_version_and_its_bound_are_reported() -> None:
    redis = Disruption(DisruptionKind.REDIS_KILL, 2.0, 3.0)
    book = ledger(
        (V, Upload(1.0, 1, 5000)), (V, Upload(9.0, 2, 5001)), (W, Upload(1.0, 1, 5000)),
        disruptions=(redis,),
    )  # fmt: skip
    verdict = book.verdict()
    assert verdict.worst == (V, 2, 2)
    assert verdict.duplicates == 1
    assert "redis_kill 2.00-3.00s" in book.story(V, since=0.0)
