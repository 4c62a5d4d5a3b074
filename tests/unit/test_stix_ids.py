"""STIX ids and our extension's id: pinned, because a changed id re-keys every indicator
already in a workspace (duplicates, not updates), and derived deterministically, so the same
MATI indicator always lands on the same Sentinel object."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
import stix2
from hypothesis import given
from hypothesis import strategies as st

from shared.core.fingerprint import EXTENSION_ID
from shared.core.indicator import HashType
from shared.core.stix import EXTENSION_NAME, NAMESPACE, StixPolicy, indicator_object, stix_id
from tests.unit.stix_rig import NOW, observable, ours
from tests.unit.strategies import PROPERTY

# --- ids --------------------------------------------------------------------------------------


def test_the_namespace_is_pinned() -> None:
    # Changing NAMESPACE re-keys every indicator in every workspace (duplicates, not updates).
    assert uuid.UUID("1d560667-65d4-4cea-95f3-a08aad09ffae") == NAMESPACE


def test_the_extension_id_is_pinned_and_derived_from_the_namespace() -> None:
    # Objects already in a workspace carry this id: changing it orphans their properties.
    assert EXTENSION_ID == "extension-definition--8b329901-f0cd-573b-8581-99c3f0668664"
    assert f"extension-definition--{uuid.uuid5(NAMESPACE, EXTENSION_NAME)}" == EXTENSION_ID
    assert EXTENSION_NAME == "mati2sentinel/mati-properties"


def test_a_top_level_custom_property_fails_the_strict_parse() -> None:
    # What assert_valid_stix guards against: product data back at the top level.
    obj = {**indicator_object(observable(), StixPolicy(), NOW), "x_mati_id": "ipv4--1"}
    with pytest.raises(stix2.exceptions.ExtraPropertiesError):
        stix2.parse(obj)


@pytest.mark.parametrize(
    "change",
    [{"threat_score": 101}, {"unknown": 1}, {"mati_id": None}],
    ids=["score out of range", "unknown property", "no mati id"],
)
def test_the_registered_extension_is_checked_by_the_parse(change: dict[str, object]) -> None:
    obj = indicator_object(observable(), StixPolicy(), NOW)
    extension = {k: v for k, v in {**ours(obj), **change}.items() if v is not None}
    with pytest.raises(stix2.exceptions.STIXError):
        stix2.parse({**obj, "extensions": {EXTENSION_ID: extension}})


def test_stix_ids_are_uuid5_of_the_mati_id_and_pinned() -> None:
    mati_id = "ipv4--451fa3ec-72a4-58b6-bf12-e81aa2ff95a6"
    assert stix_id(mati_id, None) == "indicator--cc9148fb-9bec-5ded-97a3-46181d4f3f20"
    assert stix_id(mati_id, None) == f"indicator--{uuid.uuid5(NAMESPACE, mati_id)}"
    assert uuid.UUID(stix_id(mati_id, None).removeprefix("indicator--")).version == 5


def test_each_hash_of_one_indicator_has_its_own_id() -> None:
    mati_id = "md5--05aa3630-6857-5301-9955-0bad95077e4b"
    ids = {stix_id(mati_id, None)} | {stix_id(mati_id, h) for h in HashType}
    assert len(ids) == 4
    assert (
        stix_id(mati_id, HashType.SHA1) == f"indicator--{uuid.uuid5(NAMESPACE, mati_id + ':sha1')}"
    )


@PROPERTY
@given(st.text(), st.sampled_from([None, *HashType]))
def test_stix_ids_are_exactly_uuid5_for_any_id(mati_id: str, hash_type: HashType | None) -> None:
    # stix_id builds the uuid5 text itself (no UUID object): it must never drift from uuid5.
    name = mati_id if hash_type is None else f"{mati_id}:{hash_type}"
    assert stix_id(mati_id, hash_type) == f"indicator--{uuid.uuid5(NAMESPACE, name)}"


@PROPERTY
@given(st.text(), st.sampled_from([None, *HashType]), st.integers(min_value=1, max_value=99))
def test_a_later_generation_has_an_id_of_its_own_derived_alike(
    mati_id: str, hash_type: HashType | None, generation: int
) -> None:
    """Generation 0 is today's id, byte for byte; every later one is another uuid5, so an
    indicator passing again after its revocation is published without un-revoking an id."""
    assert stix_id(mati_id, hash_type, 0) == stix_id(mati_id, hash_type)
    name = mati_id if hash_type is None else f"{mati_id}:{hash_type}"
    later = stix_id(mati_id, hash_type, generation)
    assert later == f"indicator--{uuid.uuid5(NAMESPACE, f'{name}#{generation}')}"
    assert later != stix_id(mati_id, hash_type)
    assert later != stix_id(mati_id, hash_type, generation + 1)


def test_ids_are_deterministic_across_calls_and_objects() -> None:
    first = indicator_object(observable(), StixPolicy(), NOW)
    second = indicator_object(observable(), StixPolicy(), NOW + timedelta(days=3))
    assert (
        first["id"] == second["id"] == stix_id("ipv4--451fa3ec-72a4-58b6-bf12-e81aa2ff95a6", None)
    )
