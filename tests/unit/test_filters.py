"""DESIGN §5 filters: every drop reason, the order of checks, hash selection, and the model
properties the filters read (OSINT, categories, hashes)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given

from shared.core.filters import (
    DropReason,
    FilterPolicy,
    HashSelection,
    Observable,
    ObservableKind,
    evaluate,
    every_observable,
)
from shared.core.indicator import Association, HashType, Indicator, IndicatorType, Source
from tests.unit.strategies import (
    PROPERTY,
    example_indicator,
    example_record,
    filter_policies,
    indicators,
    must_parse,
)

MD5 = "b3becab76a6d36861357bfa3fe966003"
SHA1 = "537f7341e42b72c88032e89aafa94ce5861f2e2a"
SHA256 = "268791330e6cf922e1c53392031cfcbe203630e416342e5503d39f402b6f0ca5"

MANDIANT = Source(name="Mandiant", osint=False, categories=("malware",))
OSINT_FEED = Source(name="urlhaus", osint=True)


def passing(kind: IndicatorType = IndicatorType.FQDN, /, **changes: object) -> Indicator:
    """An indicator every default check accepts; ``changes`` break exactly what a test needs."""
    values = {
        IndicatorType.IPV4: "203.0.113.77",
        IndicatorType.FQDN: "evil.example",
        IndicatorType.URL: "http://evil.example/a",
        IndicatorType.MD5: MD5,
    }
    base = Indicator(
        id=f"{kind}--1",
        type=kind,
        value=values[kind],
        mscore=90,
        threat_score=90,
        sources=(MANDIANT,),
        hashes=((HashType.MD5, MD5),) if kind is IndicatorType.MD5 else (),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def accepted(indicator: Indicator, policy: FilterPolicy) -> tuple[Observable, ...]:
    result = evaluate(indicator, policy)
    assert not isinstance(result, DropReason), result
    return result


# --- policy -----------------------------------------------------------------------------------


def test_policy_defaults_are_the_seeds() -> None:
    assert FilterPolicy() == FilterPolicy(
        minimum_confidence=80,
        minimum_threat_score=80,
        exclude_osint=True,
        include_uncategorized=True,
        hash_selection=HashSelection.MD5,
        include_ipv4=True,
        include_fqdn=True,
        include_url=True,
        include_hash=True,
    )


@pytest.mark.parametrize("field", ["minimum_confidence", "minimum_threat_score"])
@pytest.mark.parametrize("value", [-1, 101])
def test_policy_minimums_must_be_scores(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=field):
        FilterPolicy(**{field: value})  # type: ignore[arg-type]


def test_hash_selection_values_are_the_settings_spelling() -> None:
    assert [str(s) for s in HashSelection] == ["md5", "sha1", "sha256", "all"]


# --- each check -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "switch"),
    [
        (IndicatorType.IPV4, "include_ipv4"),
        (IndicatorType.FQDN, "include_fqdn"),
        (IndicatorType.URL, "include_url"),
        (IndicatorType.MD5, "include_hash"),
    ],
)
def test_each_type_switch_excludes_only_its_type(kind: IndicatorType, switch: str) -> None:
    policy = FilterPolicy(**{switch: False})  # type: ignore[arg-type]
    for other in IndicatorType:
        result = evaluate(passing(other), policy)
        if other is kind:
            assert result is DropReason.TYPE_EXCLUDED
        else:
            assert not isinstance(result, DropReason)


@pytest.mark.parametrize(
    ("field", "minimum", "reason"),
    [
        ("mscore", "minimum_confidence", DropReason.LOW_CONFIDENCE),
        ("threat_score", "minimum_threat_score", DropReason.LOW_THREAT_SCORE),
    ],
)
@pytest.mark.parametrize(
    ("score", "threshold", "passes"),
    [
        (80, 80, True),
        (79, 80, False),
        (100, 100, True),
        (99, 100, False),
        (0, 0, True),
        (None, 0, True),
        (None, 1, False),
        (None, 80, False),
        (1, 1, True),
        (0, 1, False),
    ],
)
def test_a_score_must_meet_or_exceed_its_minimum(
    field: str,
    minimum: str,
    reason: DropReason,
    score: int | None,
    threshold: int,
    passes: bool,
) -> None:
    policy = FilterPolicy(**{minimum: threshold})  # type: ignore[arg-type]
    result = evaluate(passing(**{field: score}), policy)
    assert (result is reason) is not passes
    if passes:
        assert not isinstance(result, DropReason)


def test_an_osint_only_indicator_is_dropped_when_osint_is_excluded() -> None:
    indicator = passing(sources=(OSINT_FEED, replace(OSINT_FEED, name="phishtank")))
    assert evaluate(indicator, FilterPolicy()) is DropReason.OSINT
    assert accepted(indicator, FilterPolicy(exclude_osint=False))


def test_one_non_osint_source_makes_an_indicator_not_osint() -> None:
    indicator = passing(sources=(OSINT_FEED, MANDIANT, OSINT_FEED))
    assert not indicator.is_osint
    assert accepted(indicator, FilterPolicy())


def test_an_indicator_without_sources_is_not_osint() -> None:
    indicator = passing(sources=())
    assert not indicator.is_osint
    assert accepted(indicator, FilterPolicy())


def test_an_uncategorized_indicator_is_dropped_only_when_asked() -> None:
    indicator = passing(sources=(Source(name="Mandiant", osint=False),))
    assert indicator.categories == ()
    assert evaluate(indicator, FilterPolicy(include_uncategorized=False)) is (
        DropReason.UNCATEGORIZED
    )
    assert accepted(indicator, FilterPolicy(include_uncategorized=True))


@pytest.mark.parametrize(
    "indicator",
    [
        passing(sources=(), category=("malware",)),
        passing(sources=(Source(name="x", osint=False, categories=("botnet",)),)),
    ],
    ids=["top-level", "per-source"],
)
def test_a_category_from_either_place_counts(indicator: Indicator) -> None:
    assert accepted(indicator, FilterPolicy(include_uncategorized=False))


# --- order of checks --------------------------------------------------------------------------

_ORDER = [
    DropReason.TYPE_EXCLUDED,
    DropReason.LOW_CONFIDENCE,
    DropReason.LOW_THREAT_SCORE,
    DropReason.OSINT,
    DropReason.UNCATEGORIZED,
    DropReason.WARNINGLIST,
    DropReason.HASH_TYPE_MISSING,
]
_LISTED = frozenset({"rfc1918"})
_STRICT = FilterPolicy(
    include_hash=False,
    include_uncategorized=False,
    hash_selection=HashSelection.SHA256,
    exclude_warninglists=_LISTED,
)
_BREAKS: dict[DropReason, dict[str, object]] = {
    DropReason.LOW_CONFIDENCE: {"mscore": 10},
    DropReason.LOW_THREAT_SCORE: {"threat_score": 10},
    DropReason.OSINT: {"sources": (OSINT_FEED,)},
    DropReason.UNCATEGORIZED: {"sources": (Source(name="Mandiant", osint=False),)},
}


def failing(reasons: set[DropReason]) -> tuple[Indicator, FilterPolicy]:
    """An md5 indicator and a policy that fail exactly the checks in ``reasons``."""
    changes: dict[str, object] = {}
    for reason in reasons & set(_BREAKS):
        changes.update(_BREAKS[reason])
    if DropReason.OSINT in reasons and DropReason.UNCATEGORIZED in reasons:
        changes["sources"] = (OSINT_FEED,)
    changes["warning_lists"] = tuple(_LISTED) if DropReason.WARNINGLIST in reasons else ()
    indicator = passing(IndicatorType.MD5, **changes)
    policy = FilterPolicy(
        include_hash=DropReason.TYPE_EXCLUDED not in reasons,
        include_uncategorized=DropReason.UNCATEGORIZED not in reasons,
        hash_selection=(
            HashSelection.SHA256 if DropReason.HASH_TYPE_MISSING in reasons else HashSelection.MD5
        ),
        exclude_warninglists=_LISTED,
    )
    return indicator, policy


@pytest.mark.parametrize("first", _ORDER)
def test_the_first_failing_check_in_order_is_the_reason(first: DropReason) -> None:
    later = set(_ORDER[_ORDER.index(first) :])
    indicator, policy = failing(later)
    assert evaluate(indicator, policy) is first


def test_an_indicator_failing_every_check_is_type_excluded() -> None:
    indicator, policy = failing(set(_ORDER))
    assert policy == _STRICT
    assert evaluate(indicator, policy) is DropReason.TYPE_EXCLUDED


# --- observables and hash selection -----------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "observable_kind"),
    [
        (IndicatorType.IPV4, ObservableKind.IPV4),
        (IndicatorType.FQDN, ObservableKind.FQDN),
        (IndicatorType.URL, ObservableKind.URL),
    ],
)
def test_a_network_indicator_is_one_observable_of_its_value(
    kind: IndicatorType, observable_kind: ObservableKind
) -> None:
    indicator = passing(kind)
    assert accepted(indicator, FilterPolicy()) == (
        Observable(indicator, observable_kind, indicator.value),
    )


@pytest.mark.parametrize(
    ("selection", "hash_type", "value"),
    [
        (HashSelection.MD5, HashType.MD5, MD5),
        (HashSelection.SHA1, HashType.SHA1, SHA1),
        (HashSelection.SHA256, HashType.SHA256, SHA256),
    ],
)
def test_hash_type_picks_one_hash(
    selection: HashSelection, hash_type: HashType, value: str
) -> None:
    indicator = example_indicator("md5")
    policy = FilterPolicy(hash_selection=selection)
    assert accepted(indicator, policy) == (
        Observable(indicator, ObservableKind.HASH, value, hash_type),
    )


@pytest.mark.parametrize("selection", [HashSelection.SHA1, HashSelection.SHA256])
def test_a_missing_selected_hash_drops_the_indicator(selection: HashSelection) -> None:
    indicator = example_indicator("md5", associated_hashes=[])
    policy = FilterPolicy(hash_selection=selection)
    assert evaluate(indicator, policy) is DropReason.HASH_TYPE_MISSING


def test_all_uploads_one_observable_per_hash() -> None:
    indicator = example_indicator("md5")
    observables = accepted(indicator, FilterPolicy(hash_selection=HashSelection.ALL))
    assert [(o.kind, o.hash_type, o.value) for o in observables] == [
        (ObservableKind.HASH, HashType.MD5, MD5),
        (ObservableKind.HASH, HashType.SHA1, SHA1),
        (ObservableKind.HASH, HashType.SHA256, SHA256),
    ]


def test_all_with_only_the_md5_uploads_the_md5() -> None:
    indicator = example_indicator("md5", associated_hashes=None)
    observables = accepted(indicator, FilterPolicy(hash_selection=HashSelection.ALL))
    assert [(o.hash_type, o.value) for o in observables] == [(HashType.MD5, MD5)]


def test_all_without_any_hash_is_hash_type_missing() -> None:
    indicator = passing(IndicatorType.MD5, hashes=())
    assert evaluate(indicator, FilterPolicy(hash_selection=HashSelection.ALL)) is (
        DropReason.HASH_TYPE_MISSING
    )


@pytest.mark.parametrize(
    ("kind", "hash_type"),
    [
        (ObservableKind.HASH, None),
        (ObservableKind.IPV4, HashType.MD5),
        (ObservableKind.URL, HashType.SHA256),
    ],
)
def test_an_observable_has_a_hash_type_exactly_when_it_is_a_hash(
    kind: ObservableKind, hash_type: HashType | None
) -> None:
    with pytest.raises(ValueError, match="hash_type"):
        Observable(passing(), kind, "x", hash_type)


# --- model properties the filters read --------------------------------------------------------


def test_categories_are_the_sorted_lower_cased_union() -> None:
    indicator = passing(
        category=("Malware", "phishing"),
        sources=(
            Source(name="a", osint=False, categories=("botnet", "MALWARE ")),
            Source(name="b", osint=True, categories=("", "exploit")),
        ),
    )
    assert indicator.categories == ("botnet", "exploit", "malware", "phishing")


def test_actors_and_malware_are_names_by_kind_de_duplicated_in_order() -> None:
    indicator = passing(
        associations=(
            Association("1", "UNC9999", "threat-actor"),
            Association("2", "FAKEGATE", "malware"),
            Association("3", "APT29", "threat-actor"),
            Association("4", "UNC9999", "threat-actor"),
            Association("5", "OTHER", "intrusion-set"),
        )
    )
    assert indicator.actors == ("UNC9999", "APT29")
    assert indicator.malware == ("FAKEGATE",)


def test_hash_value_finds_each_hash_or_none() -> None:
    indicator = example_indicator("md5", associated_hashes=[{"type": "sha1", "value": SHA1}])
    assert indicator.hash_value(HashType.MD5) == MD5
    assert indicator.hash_value(HashType.SHA1) == SHA1
    assert indicator.hash_value(HashType.SHA256) is None


# --- properties -------------------------------------------------------------------------------


def expected_reason(indicator: Indicator, policy: FilterPolicy) -> DropReason | None:
    """The reference definition of DESIGN §5, written independently of ``evaluate``."""
    switches = {
        IndicatorType.IPV4: policy.include_ipv4,
        IndicatorType.FQDN: policy.include_fqdn,
        IndicatorType.URL: policy.include_url,
        IndicatorType.MD5: policy.include_hash,
    }
    checks = [
        (not switches[indicator.type], DropReason.TYPE_EXCLUDED),
        ((indicator.mscore or 0) < policy.minimum_confidence, DropReason.LOW_CONFIDENCE),
        ((indicator.threat_score or 0) < policy.minimum_threat_score, DropReason.LOW_THREAT_SCORE),
        (
            policy.exclude_osint
            and bool(indicator.sources)
            and all(s.osint for s in indicator.sources),
            DropReason.OSINT,
        ),
        (not policy.include_uncategorized and not indicator.categories, DropReason.UNCATEGORIZED),
        (
            bool(policy.exclude_warninglists) and indicator.warning_lists is None,
            DropReason.WARNINGLIST_UNKNOWN,
        ),
        (
            bool(indicator.warning_lists)
            and (
                "all" in policy.exclude_warninglists
                or not policy.exclude_warninglists.isdisjoint(indicator.warning_lists or ())
            ),
            DropReason.WARNINGLIST,
        ),
        (
            indicator.type is IndicatorType.MD5
            and policy.hash_selection is not HashSelection.ALL
            and indicator.hash_value(HashType(policy.hash_selection.value)) is None,
            DropReason.HASH_TYPE_MISSING,
        ),
    ]
    return next((reason for failed, reason in checks if failed), None)


@PROPERTY
@given(indicators, filter_policies)
def test_evaluate_agrees_with_the_reference_definition(
    indicator: Indicator, policy: FilterPolicy
) -> None:
    result = evaluate(indicator, policy)
    reason = expected_reason(indicator, policy)
    if isinstance(result, DropReason):
        assert result is reason
        return
    assert reason is None
    assert result, "an accepted indicator yields at least one observable"
    for observable in result:
        assert observable.indicator is indicator
        assert (indicator.mscore or 0) >= policy.minimum_confidence
        assert (indicator.threat_score or 0) >= policy.minimum_threat_score
        assert policy.includes(observable.kind)
        if observable.kind is ObservableKind.HASH:
            assert observable.hash_type is not None
            assert indicator.hash_value(observable.hash_type) == observable.value
            assert policy.hash_selection in (HashSelection.ALL, observable.hash_type)
        else:
            assert observable.value == indicator.value
    stix_keys = [(o.kind, o.hash_type) for o in result]
    assert len(stix_keys) == len(set(stix_keys)), "one STIX id per observable"


def test_every_observable_names_each_hash_an_md5_carries_whatever_the_settings() -> None:
    """What a workspace may hold of an indicator, to be revoked once it fails."""
    md5 = must_parse(example_record("md5"))
    observables = every_observable(md5)
    assert [o.hash_type for o in observables] == [h for h, _ in md5.hashes]
    assert [o.value for o in observables] == [v for _, v in md5.hashes]
    fqdn = must_parse(example_record("fqdn"))
    assert [(o.kind, o.value, o.hash_type) for o in every_observable(fqdn)] == [
        (ObservableKind.FQDN, fqdn.value, None)
    ]
