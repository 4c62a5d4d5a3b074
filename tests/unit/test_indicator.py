"""The indicator model's derived views: categories, actors and malware are computed once and
kept, which must never show: not in equality, hash or repr, not after ``replace``, not across
a copy, and never for an indicator built by hand with un-normalised fields."""

from __future__ import annotations

import copy
import pickle
from dataclasses import replace

from hypothesis import given

from shared.core.indicator import MALWARE, THREAT_ACTOR, Association, HashType, Indicator, Source
from tests.unit.strategies import PROPERTY, example_indicator, indicators


def fresh_views(indicator: Indicator) -> tuple[tuple[str, ...], ...]:
    """The views by their definition, from the fields alone."""
    found = {name.strip().lower() for name in indicator.category}
    for source in indicator.sources:
        found.update(name.strip().lower() for name in source.categories)
    found.discard("")

    def names(kind: str) -> tuple[str, ...]:
        return tuple(dict.fromkeys(a.name for a in indicator.associations if a.kind == kind))

    return tuple(sorted(found)), names(THREAT_ACTOR), names(MALWARE)


def views(indicator: Indicator) -> tuple[tuple[str, ...], ...]:
    return indicator.categories, indicator.actors, indicator.malware


def hand_built() -> Indicator:
    return Indicator(
        id="fqdn--1",
        type=example_indicator("fqdn").type,
        value="a.example",
        category=(" Malware ", "", "BOTNET"),
        sources=(
            Source("Mandiant", osint=False, categories=("botnet", " ", "Exploit")),
            Source("feed", osint=True),
        ),
        associations=(
            Association("1", "APT29", THREAT_ACTOR),
            Association("2", "FAKEGATE", MALWARE),
            Association("3", "APT29", THREAT_ACTOR),
            Association("4", "OTHER", "intrusion-set"),
        ),
    )


def test_views_of_a_hand_built_indicator_are_normalised() -> None:
    indicator = hand_built()
    assert views(indicator) == (("botnet", "exploit", "malware"), ("APT29",), ("FAKEGATE",))
    assert views(indicator) == views(indicator)


@PROPERTY
@given(indicators)
def test_views_match_their_definition_on_every_read(indicator: Indicator) -> None:
    expected = fresh_views(indicator)
    assert views(indicator) == expected
    assert views(indicator) == expected


@PROPERTY
@given(indicators)
def test_reading_views_changes_neither_equality_nor_hash_nor_repr(indicator: Indicator) -> None:
    untouched = copy.copy(indicator)
    before = repr(indicator)
    views(indicator)
    assert indicator == untouched
    assert hash(indicator) == hash(untouched)
    assert repr(indicator) == before
    assert "_views" not in before


def test_replace_derives_the_views_of_the_new_fields() -> None:
    indicator = hand_built()
    views(indicator)
    changed = replace(
        indicator, category=("phishing",), sources=(), associations=(Association("", "X", MALWARE),)
    )
    assert views(changed) == (("phishing",), (), ("X",))
    assert views(indicator) == (("botnet", "exploit", "malware"), ("APT29",), ("FAKEGATE",))


def test_a_copied_or_pickled_indicator_keeps_equal_views() -> None:
    indicator = hand_built()
    views(indicator)
    for clone in (
        copy.copy(indicator),
        copy.deepcopy(indicator),
        pickle.loads(pickle.dumps(indicator)),  # noqa: S301 - our own bytes
    ):
        assert clone == indicator
        assert views(clone) == views(indicator)


def test_is_osint_needs_sources_and_every_one_of_them_osint() -> None:
    osint = Source("feed", osint=True)
    mandiant = Source("Mandiant", osint=False)
    base = hand_built()
    assert not replace(base, sources=()).is_osint
    assert replace(base, sources=(osint, osint)).is_osint
    assert not replace(base, sources=(osint, mandiant)).is_osint


def test_hash_value_gives_the_hash_of_that_type_or_none() -> None:
    indicator = example_indicator("md5")
    assert indicator.hash_value(HashType.SHA1) == dict(indicator.hashes)[HashType.SHA1]
    assert replace(indicator, hashes=indicator.hashes[:1]).hash_value(HashType.SHA256) is None
