"""``harness.oracle`` agrees with the product's parse and filters on the generated feed under
every kind of policy, and tells them apart when they differ: an oracle that could not
disagree would prove nothing in the e2e tests that rely on it."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from harness.oracle import Accepted, accepted
from shared.core.filters import FilterPolicy, HashSelection, evaluate
from shared.core.indicator import Indicator
from shared.core.parsing import parse_indicator
from simulators.feed import Feed

FEED = Feed(seed=5, count=3000, days=29)
RECORDS = list(FEED.records(range(len(FEED))))

POLICIES = [
    FilterPolicy(),
    FilterPolicy(minimum_confidence=0, minimum_threat_score=0, exclude_osint=False),
    FilterPolicy(minimum_confidence=50, minimum_threat_score=0, hash_selection=HashSelection.ALL),
    FilterPolicy(minimum_threat_score=60, hash_selection=HashSelection.SHA256),
    FilterPolicy(include_uncategorized=False, include_url=False, hash_selection=HashSelection.SHA1),
]


def product(policy: FilterPolicy) -> set[Accepted]:
    out: set[Accepted] = set()
    for record in RECORDS:
        indicator = parse_indicator(record)
        assert isinstance(indicator, Indicator), indicator
        verdict = evaluate(indicator, policy)
        if isinstance(verdict, tuple):
            out.update((indicator.id, o.hash_type.value if o.hash_type else None) for o in verdict)
    return out


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: repr(p)[:60])
def test_the_oracle_and_the_product_accept_the_same_observables(policy: FilterPolicy) -> None:
    truth, judged = accepted(FEED, RECORDS, policy, current=True)
    assert len(judged) == len(FEED)
    assert truth, "every policy here accepts something"
    assert product(policy) == truth


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("minimum_confidence", 79),
        ("minimum_threat_score", 0),
        ("exclude_osint", False),
        ("hash_selection", HashSelection.ALL),
        ("include_uncategorized", False),
    ],
)
def test_a_product_that_filters_differently_is_caught(field: str, value: object) -> None:
    """The product run with one setting off by a little: the oracle, run with the real one,
    no longer agrees (each of these changes what this feed yields)."""
    policy = FilterPolicy()
    truth, _ = accepted(FEED, RECORDS, policy, current=True)
    assert product(replace(policy, **{field: value})) != truth


def test_records_that_are_not_the_feeds_current_version_are_not_judged() -> None:
    broken = {**RECORDS[0], "mscore": "not a number"}
    foreign = {**RECORDS[1], "id": "ipv4--00000000-0000-4000-8000-000000000000"}
    _, judged = accepted(FEED, [broken, foreign, *itertools.islice(RECORDS, 2, 5)], FilterPolicy())
    assert judged == {FEED.id(i) for i in range(2, 5)}
