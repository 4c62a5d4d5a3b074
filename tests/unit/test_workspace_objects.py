"""Objects read back from the workspace: one result row into a ``WorkspaceObject``, its
lineage (the seen cache's key) found from the MATI id, the pattern and the generation, its
liveness, and the seen entry a rebuilt cache holds for it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.core.fingerprint import SeenEntry
from shared.core.indicator import HashType
from shared.core.stix import stix_id
from shared.core.workspace_objects import (
    COLUMNS,
    HEX_DIGITS,
    MAX_GENERATION_SEARCHED,
    MAX_PREFIX_DIGITS,
    UnreadableRow,
    WorkspaceObject,
    count_query,
    hash_type_of,
    kql_string,
    latest,
    lineage_of,
    newer,
    objects_query,
    parse_row,
    prefix_digits,
    prefixes,
)
from tests.unit.strategies import PROPERTY, json_values, utc_datetimes

NOW = datetime(2025, 3, 9, 8, 0, tzinfo=UTC)
FP = "0123456789abcdef0123456789abcdef"
MATI_ID = "md5--1a2b3c4d-0000-5000-8000-000000000001"
#: The left sides we emit, by hash type (None: one of the three non-hash paths).
PATTERNS: dict[HashType | None, str] = {
    None: "[ipv4-addr:value = '203.0.113.77']",
    HashType.MD5: "[file:hashes.'MD5' = 'd41d8cd98f00b204e9800998ecf8427e']",
    HashType.SHA1: "[file:hashes.'SHA-1' = 'da39a3ee5e6b4b0d3255bfef95601890afd80709']",
    HashType.SHA256: "[file:hashes.'SHA-256' = '"
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855']",
}


def row(**overrides: Any) -> dict[str, Any]:
    """A row as the reader hands it over: an md5 lineage's generation-0 object, live."""
    values: dict[str, Any] = {
        "StixId": stix_id(MATI_ID, HashType.MD5),
        "TimeGenerated": NOW - timedelta(hours=1),
        "ValidUntil": NOW + timedelta(days=30),
        "Revoked": False,
        "IsDeleted": False,
        "IsActive": True,
        "Pattern": PATTERNS[HashType.MD5],
        "MatiId": MATI_ID,
        "Fingerprint": FP,
        "Suppressed": "",
    }
    values.update(overrides)
    return values


def parsed(**overrides: Any) -> WorkspaceObject:
    obj = parse_row(row(**overrides))
    assert isinstance(obj, WorkspaceObject), obj
    return obj


def unreadable(**overrides: Any) -> UnreadableRow:
    obj = parse_row(row(**overrides))
    assert isinstance(obj, UnreadableRow), obj
    return obj


# --- parsing ----------------------------------------------------------------------------------


def test_a_row_becomes_an_object_with_every_field() -> None:
    assert set(row()) == set(COLUMNS)
    obj = parsed()
    assert obj == WorkspaceObject(
        stix_id=stix_id(MATI_ID, HashType.MD5),
        lineage=stix_id(MATI_ID, HashType.MD5),
        mati_id=MATI_ID,
        generation=0,
        fingerprint=FP,
        valid_until=NOW + timedelta(days=30),
        revoked=False,
        deleted=False,
        time_generated=NOW - timedelta(hours=1),
        active=True,
    )
    note = '{"value":"x","type":"md5","reason":"ours","added_at":"2026-12-01T00:00:00+00:00"}'
    assert parsed(Revoked=True, Suppressed=note).suppressed == note
    assert unreadable(Suppressed=7).reason.startswith("Suppressed is not a string")


@PROPERTY
@given(
    mati_id=st.text(min_size=1, max_size=40).filter(lambda s: s.strip() == s),
    hash_type=st.sampled_from(list(PATTERNS)),
    generation=st.integers(0, MAX_GENERATION_SEARCHED),
)
def test_the_lineage_is_the_generation_zero_id(
    mati_id: str, hash_type: HashType | None, generation: int
) -> None:
    own = stix_id(mati_id, hash_type, generation)
    obj = parsed(StixId=own, MatiId=mati_id, Pattern=PATTERNS[hash_type])
    assert obj.stix_id == own
    assert obj.lineage == stix_id(mati_id, hash_type, 0)
    assert obj.generation == generation
    assert obj.mati_id == mati_id


@pytest.mark.parametrize(
    "path",
    ["ipv4-addr:value", "domain-name:value", "url:value"],
)
def test_every_non_hash_path_names_a_lineage_without_hash(path: str) -> None:
    assert hash_type_of(f"[{path} = 'x']") == (True, None)
    assert hash_type_of(f"  [ {path}='x' ]") == (True, None)


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"StixId": stix_id(MATI_ID, HashType.MD5, MAX_GENERATION_SEARCHED + 1)}, "too late"),
        ({"StixId": "indicator--00000000-0000-4000-8000-000000000000"}, "foreign id"),
        ({"StixId": stix_id(MATI_ID, HashType.SHA256)}, "id of another hash type"),
        ({"MatiId": ""}, "no MATI id"),
        ({"MatiId": None}, "null MATI id"),
        ({"MatiId": "md5--someone-else"}, "another MATI id"),
        ({"Pattern": ""}, "no pattern"),
        ({"Pattern": "[file:hashes.'SHA-512' = 'ab']"}, "a left side we never emit"),
        ({"Pattern": "[ipv4-addr:value = '1.2.3.4']"}, "the non-hash lineage of an md5 id"),
    ],
)
def test_an_id_no_generation_reproduces_has_no_lineage(overrides: dict[str, Any], why: str) -> None:
    obj = parsed(**overrides)
    assert obj.lineage is None, why
    assert obj.generation is None
    assert obj.seen_entry() is None


def test_an_upper_case_id_is_still_ours() -> None:
    own = stix_id(MATI_ID, HashType.MD5, 3)
    obj = parsed(StixId=own.upper().replace("INDICATOR", "indicator"))
    assert (obj.lineage, obj.generation) == (stix_id(MATI_ID, HashType.MD5), 3)


def test_lineage_of_searches_a_bounded_number_of_generations() -> None:
    assert lineage_of(stix_id("x", None, 7), "x", None) == (stix_id("x", None), 7)
    assert lineage_of(stix_id("x", None, MAX_GENERATION_SEARCHED + 1), "x", None) is None


@pytest.mark.parametrize("value", ["", "ABCDEF0123456789ABCDEF0123456789", "abc", None, " "])
def test_a_missing_or_malformed_fingerprint_reads_as_none(value: str | None) -> None:
    obj = parsed(Fingerprint=value)
    assert obj.fingerprint is None
    assert obj.seen_entry() is None


def test_timestamps_naive_or_text_are_read_as_utc() -> None:
    naive = datetime(2025, 4, 1, 12, 0)
    obj = parsed(TimeGenerated=naive, ValidUntil="2025-05-01T00:00:00.123000Z")
    assert obj.time_generated == naive.replace(tzinfo=UTC)
    assert obj.valid_until == datetime(2025, 5, 1, 0, 0, 0, 123000, tzinfo=UTC)


@pytest.mark.parametrize("empty", [None, ""])
def test_no_valid_until_is_none(empty: str | None) -> None:
    assert parsed(ValidUntil=empty).valid_until is None


def test_null_booleans_take_kql_defaults() -> None:
    obj = parsed(Revoked=None, IsDeleted=None, IsActive=None)
    assert (obj.revoked, obj.deleted, obj.active) == (False, False, True)
    obj = parsed(Revoked="true", IsDeleted="False", IsActive="false")
    assert (obj.revoked, obj.deleted, obj.active) == (True, False, False)


@pytest.mark.parametrize(
    ("overrides", "column"),
    [
        ({"StixId": None}, "StixId"),
        ({"StixId": ""}, "StixId"),
        ({"StixId": "not-a-stix-id"}, "StixId"),
        ({"StixId": 42}, "StixId"),
        ({"TimeGenerated": None}, "TimeGenerated"),
        ({"TimeGenerated": "yesterday"}, "TimeGenerated"),
        ({"TimeGenerated": 1700000000}, "TimeGenerated"),
        ({"ValidUntil": "soon"}, "ValidUntil"),
        ({"ValidUntil": 3.5}, "ValidUntil"),
        ({"Revoked": 1}, "Revoked"),
        ({"IsDeleted": "maybe"}, "IsDeleted"),
        ({"IsActive": []}, "IsActive"),
        ({"Pattern": 7}, "Pattern"),
        ({"MatiId": {"id": 1}}, "MatiId"),
        ({"Fingerprint": b"00"}, "Fingerprint"),
    ],
)
def test_garbage_is_refused_with_the_column_named(overrides: dict[str, Any], column: str) -> None:
    refused = unreadable(**overrides)
    assert refused.reason.startswith(column), refused
    if column != "StixId":
        assert refused.stix_id == row()["StixId"]


def test_a_reason_never_carries_a_whole_value() -> None:
    refused = unreadable(StixId="x" * 10_000)
    assert len(refused.reason) < 200


@PROPERTY
@given(st.dictionaries(st.sampled_from(COLUMNS), json_values | utc_datetimes, max_size=9))
def test_any_row_parses_or_is_refused_never_raises(values: dict[str, Any]) -> None:
    result = parse_row(row(**values))
    assert isinstance(result, WorkspaceObject | UnreadableRow)


# --- liveness and the seen entry --------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "live"),
    [
        ({}, True),
        ({"ValidUntil": None}, True),
        ({"ValidUntil": NOW + timedelta(microseconds=1)}, True),
        ({"ValidUntil": NOW}, False),
        ({"ValidUntil": NOW - timedelta(days=1)}, False),
        ({"Revoked": True}, False),
        ({"IsDeleted": True}, False),
        ({"IsActive": False}, True),  # a snapshot at TimeGenerated; the facts decide
    ],
)
def test_live_means_not_revoked_not_deleted_not_expired(
    overrides: dict[str, Any], live: bool
) -> None:
    assert parsed(**overrides).live(NOW) is live


@pytest.mark.parametrize("generation", [0, 1, MAX_GENERATION_SEARCHED])
@pytest.mark.parametrize("revoked", [False, True])
def test_the_seen_entry_is_what_the_filter_wrote(generation: int, revoked: bool) -> None:
    until = datetime(2025, 4, 1, 0, 0, 0, 123000, tzinfo=UTC)
    obj = parsed(
        StixId=stix_id(MATI_ID, HashType.MD5, generation), ValidUntil=until, Revoked=revoked
    )
    entry = obj.seen_entry()
    assert entry == SeenEntry(FP, until, b"", revoked, generation)
    assert entry is not None
    assert SeenEntry.decode(entry.encode()) == entry


@pytest.mark.parametrize(
    "overrides",
    [
        {"ValidUntil": None},
        {"Fingerprint": ""},
        {"IsDeleted": True},
        {"MatiId": ""},
        # SeenEntry refuses a revoked entry before 1970: nothing to rebuild, no crash.
        {"Revoked": True, "ValidUntil": datetime(1960, 1, 1, tzinfo=UTC)},
    ],
)
def test_no_seen_entry_when_it_cannot_be_rebuilt(overrides: dict[str, Any]) -> None:
    assert parsed(**overrides).seen_entry() is None


# --- one lineage, several objects -------------------------------------------------------------


def generation_object(generation: int, hours_ago: int, **overrides: Any) -> WorkspaceObject:
    return parsed(
        StixId=stix_id(MATI_ID, HashType.MD5, generation),
        TimeGenerated=NOW - timedelta(hours=hours_ago),
        **overrides,
    )


def test_the_highest_generation_wins_then_the_latest_row() -> None:
    revoked_zero = generation_object(0, 1, Revoked=True)
    live_one = generation_object(1, 5)
    assert latest([revoked_zero, live_one]) is live_one
    assert latest([live_one, revoked_zero]) is live_one
    earlier, later = generation_object(1, 5), generation_object(1, 2)
    assert latest([earlier, later]) is later
    assert latest([later, earlier]) is later
    assert latest([]) is None
    assert newer(None, earlier) is earlier


def test_a_foreign_object_ranks_below_any_generation() -> None:
    foreign = parsed(MatiId="", TimeGenerated=NOW)
    ours = generation_object(0, 10)
    assert latest([foreign, ours]) is ours


# --- the query --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "literal"),
    [
        ("Mandiant Threat Intelligence", '"Mandiant Threat Intelligence"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ('\\"', '"\\\\\\""'),
    ],
)
def test_kql_strings_escape_backslash_then_quote(text: str, literal: str) -> None:
    assert kql_string(text) == literal


@pytest.mark.parametrize(
    ("count", "target", "digits"),
    [
        (0, 100_000, 0),
        (100_000, 100_000, 0),
        (100_001, 100_000, 1),
        (1_600_000, 100_000, 1),
        (1_600_001, 100_000, 2),
        (1000, 50, 2),
        (10**12, 1, MAX_PREFIX_DIGITS),
    ],
)
def test_partitions_are_the_fewest_that_meet_the_target(
    count: int, target: int, digits: int
) -> None:
    assert prefix_digits(count, target) == digits


def test_prefixes_cover_every_id_once_in_order() -> None:
    assert prefixes(0) == [""]
    assert prefixes(1) == list(HEX_DIGITS)
    two = prefixes(2)
    assert len(two) == len(set(two)) == 256
    assert two == sorted(two)


def test_a_prefix_adds_one_startswith_clause() -> None:
    whole, part = objects_query("S", None), objects_query("S", "0a")
    assert "startswith" not in whole
    assert '| where StixId startswith "indicator--0a"\n' in part
    assert part.replace('| where StixId startswith "indicator--0a"\n', "") == whole
    assert whole.endswith("| project " + ", ".join(COLUMNS))
    assert count_query("S").endswith("by Id\n| count")
