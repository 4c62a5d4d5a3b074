"""``startswith`` / ``!startswith`` in the KQL simulator, at the language level: any literal the
product could write (escapes included) is read back as the text it means, matched the way KQL
matches (case-insensitively), and the two forms split a table exactly in two. Anything the
subset cannot read is refused, never guessed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulators.kql import KqlError, Table, load, run_query
from simulators.loganalytics import _INDICATOR_COLUMNS

_KQL_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def kql_string(text: str) -> str:
    """``text`` as a double-quoted KQL string literal."""
    return '"' + "".join(_KQL_ESCAPES.get(char, char) for char in text) + '"'


def table(ids: list[str]) -> dict[str, Table]:
    rows = [{"Data": {"id": stix_id}, "SourceSystem": "s", "Tags": ["x"]} for stix_id in ids]
    return {"ThreatIntelIndicators": load(_INDICATOR_COLUMNS, rows)}


def matching(ids: list[str], literal: str, *, negate: bool = False) -> list[str]:
    operator = "!startswith" if negate else "startswith"
    kql = (
        "ThreatIntelIndicators | extend StixId = tostring(Data.id) "
        f"| where StixId {operator} {literal} | project StixId"
    )
    return [row["StixId"] for row in run_query(kql, table(ids), None).rows]


ids_and_prefixes = st.lists(st.text(max_size=12), max_size=12).flatmap(
    lambda ids: st.tuples(
        st.just(ids),
        st.one_of(st.text(max_size=6), st.sampled_from(ids or [""]).map(lambda i: i[:3])),
    )
)


@given(ids_and_prefixes)
def test_startswith_matches_what_the_literal_means_ignoring_case(
    case: tuple[list[str], str],
) -> None:
    ids, prefix = case
    inside = matching(ids, kql_string(prefix))
    assert inside == [i for i in ids if i.lower().startswith(prefix.lower())]
    outside = matching(ids, kql_string(prefix), negate=True)
    assert sorted(inside + outside) == sorted(ids)  # disjoint, and nothing left over
    swapped = "".join(char.swapcase() if char.isascii() else char for char in prefix)
    assert matching(ids, kql_string(swapped)) == inside


@given(st.lists(st.uuids(version=4).map(lambda u: f"indicator--{u}"), max_size=40))
def test_hex_partitions_cover_every_stix_id_once(ids: list[str]) -> None:
    found: list[str] = []
    for digit in "0123456789abcdef":
        found += matching(ids, kql_string(f"indicator--{digit}"))
    assert sorted(found) == sorted(ids)


@pytest.mark.parametrize("stix_id", ["\u0130x", "\u212ax", "K\u212a", "\u03a3x"])
def test_characters_that_lower_to_more_or_to_ascii(stix_id: str) -> None:
    for prefix in ("i", "k", "kk", "kx", "ix", "x", "\u03c3"):
        expected = [stix_id] if stix_id.lower().startswith(prefix) else []
        assert matching([stix_id], kql_string(prefix)) == expected, prefix


def test_single_quotes_work_too() -> None:
    assert matching(["it's", "its"], "'it\\'s'") == ["it's"]


@pytest.mark.parametrize(
    ("where", "why"),
    [
        ('Revoked startswith "t"', "a bool column"),
        ("Data startswith '{'", "a dynamic column"),
        ("Pattern startswith 3", "a number, not a string"),
        ("Pattern startswith", "no literal"),
        ('Pattern startswith "\\q"', "an escape KQL does not have"),
        ('Pattern startswith @"raw"', "verbatim strings are outside the subset"),
        ('Pattern startswith_cs "x"', "the case-sensitive form is outside the subset"),
        ('Pattern ! startswith "x"', "a stray '!'"),
    ],
)
def test_what_the_subset_cannot_read_is_refused(where: str, why: str) -> None:
    with pytest.raises(KqlError):
        run_query(f"ThreatIntelIndicators | where {where}", table(["a"]), None)


def test_tags_reads_as_text() -> None:
    kql = 'ThreatIntelIndicators | where Tags startswith "[\\"x" | project Tags'
    assert run_query(kql, table(["a"]), None).rows == [{"Tags": '["x"]'}]
