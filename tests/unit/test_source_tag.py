"""Source tags (``shared.core.source_tag``): what the key covers, what a prediction names, when the
shortcut may skip a record, and the pin that keeps ``MAPPING_VERSION`` honest."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from shared.contract.messages import raw_message
from shared.core.filters import DropReason, FilterPolicy, HashSelection, evaluate
from shared.core.fingerprint import SeenEntry, decide, fingerprint, refresh_after_for
from shared.core.indicator import HashType
from shared.core.source_tag import (
    MAPPING_VERSION,
    Prediction,
    Shortcut,
    policy_key,
    predicted_ids,
    source_tag,
)
from shared.core.stix import StixPolicy, content, stix_id
from tests.unit.strategies import PROPERTY, example_record, mati_records, must_parse

NOW = datetime(2025, 3, 9, 8, 0, tzinfo=UTC)
KINDS = ("ipv4", "fqdn", "url", "md5")

# --- the key ----------------------------------------------------------------------------------

_CHANGED: dict[str, Any] = {
    "minimum_confidence": 81,
    "minimum_threat_score": 79,
    "exclude_osint": False,
    "include_uncategorized": False,
    "hash_selection": HashSelection.ALL,
    "include_ipv4": False,
    "include_fqdn": False,
    "include_url": False,
    "include_hash": False,
    "exclude_warninglists": frozenset({"rfc1918"}),
    "ipv4_expiration": timedelta(days=8),
    "fqdn_expiration": timedelta(days=7, microseconds=1),
    "url_expiration": timedelta(days=6),
    "hash_expiration": timedelta(days=30),
    "default_action": "block",
    "passive_only": True,
}


def test_every_setting_that_shapes_a_forward_changes_the_key() -> None:
    names = [f.name for f in dataclasses.fields(FilterPolicy) + dataclasses.fields(StixPolicy)]
    assert sorted(names) == sorted(_CHANGED), "a new setting: add it to _CHANGED"
    base = policy_key(FilterPolicy(), StixPolicy())
    for name, value in _CHANGED.items():
        target = FilterPolicy if name in FilterPolicy.__dataclass_fields__ else StixPolicy
        changed = (
            (FilterPolicy(**{name: value}), StixPolicy())
            if target is FilterPolicy
            else (FilterPolicy(), StixPolicy(**{name: value}))
        )
        assert policy_key(*changed) != base, name


def test_the_key_is_the_same_in_every_process() -> None:
    # No hash-seeded ordering may leak in: replicas must agree on their tags.
    assert policy_key(FilterPolicy(), StixPolicy()).hex()[:16] == "2fc400c379438a92"


def test_a_tag_is_eight_bytes_and_depends_on_bytes_and_key() -> None:
    key, other = policy_key(FilterPolicy(), StixPolicy()), b"k" * 32
    assert len(source_tag(b"{}", key)) == 8
    assert source_tag(b"{}", key) == source_tag(b"{}", key)
    assert source_tag(b"{}", key) != source_tag(b"{ }", key)
    assert source_tag(b"{}", key) != source_tag(b"{}", other)


def test_the_mapping_version_is_pinned_to_what_records_become() -> None:
    """Parsing, mapping or fingerprinting changed what a record becomes: bump
    ``MAPPING_VERSION`` (so every record is judged afresh once) and update this pin."""
    policy = FilterPolicy(minimum_confidence=0, minimum_threat_score=0, exclude_osint=False)
    outputs = []
    for kind in KINDS:
        accepted = evaluate(must_parse(example_record(kind)), dataclasses.replace(policy))
        assert not isinstance(accepted, DropReason)
        outputs += [fingerprint(content(o, StixPolicy())) for o in accepted]
    digest = hashlib.blake2b(orjson.dumps(outputs), digest_size=8).hexdigest()
    assert (MAPPING_VERSION, digest) == (2, "ce712be37a25aa99")


# --- predictions ------------------------------------------------------------------------------


def _shortcut(selection: HashSelection = HashSelection.MD5) -> Shortcut:
    return Shortcut(FilterPolicy(hash_selection=selection), StixPolicy(), 0.5)


@pytest.mark.parametrize("kind", ["ipv4", "fqdn", "url"])
def test_a_value_indicator_predicts_its_one_id(kind: str) -> None:
    prediction = _shortcut().predict({"indicator_id": f"{kind}--1", "indicator_type": kind})
    assert prediction == Prediction(
        (stix_id(f"{kind}--1", None),), timedelta(days=7), timedelta(days=3.5)
    )


@pytest.mark.parametrize("selection", list(HashSelection))
def test_an_md5_predicts_every_hash_the_selection_can_yield(selection: HashSelection) -> None:
    prediction = _shortcut(selection).predict({"indicator_id": "md5--1", "indicator_type": "md5"})
    assert prediction is not None
    hashes = list(HashType) if selection is HashSelection.ALL else [HashType(selection.value)]
    assert prediction.stix_ids == tuple(stix_id("md5--1", h) for h in hashes)
    assert prediction.expiration == StixPolicy().hash_expiration
    # The hashes not selected are looked up too (a workspace may hold them, to be revoked),
    # in the same MGET, but they never take part in the "unchanged" verdict.
    others = tuple(stix_id("md5--1", h) for h in HashType if h not in hashes)
    assert prediction.others == others
    assert predicted_ids([prediction]) == [*prediction.stix_ids, *others]


def test_a_revoked_entry_with_the_records_own_tag_is_never_unchanged() -> None:
    shortcut = _shortcut()
    prediction = shortcut.predict({"indicator_id": "fqdn--1", "indicator_type": "fqdn"})
    assert prediction is not None
    now = datetime(2025, 3, 9, tzinfo=UTC)
    tag = shortcut.tag(b"{}")
    (sid,) = prediction.stix_ids
    live = SeenEntry("0" * 32, now + timedelta(days=6), tag)
    assert shortcut.unchanged(prediction, tag, {sid: live}, now)
    revoked = dataclasses.replace(live, revoked=True)
    assert not shortcut.unchanged(prediction, tag, {sid: revoked}, now)


@pytest.mark.parametrize(
    "properties",
    [
        {},
        {"indicator_id": "x"},
        {"indicator_type": "ipv4"},
        {"indicator_id": "x", "indicator_type": "ip"},
    ],
)
def test_properties_that_say_nothing_usable_predict_nothing(properties: dict[str, str]) -> None:
    assert _shortcut().predict(properties) is None


def test_one_lookup_names_each_id_once() -> None:
    a = Prediction(("a", "b"), timedelta(1), timedelta(1))
    b = Prediction(("b", "c"), timedelta(1), timedelta(1))
    assert predicted_ids([a, None, b]) == ["a", "b", "c"]


# --- soundness --------------------------------------------------------------------------------


def _full_path(record: dict[str, Any], shortcut: Shortcut, policy: FilterPolicy) -> Any:
    """What the full path forwards of ``record``: (stix id, fingerprint) per observable."""
    accepted = evaluate(must_parse(record), policy)
    if isinstance(accepted, DropReason):
        return accepted
    return [
        (stix_id(record["id"], o.hash_type), fingerprint(content(o, StixPolicy())))
        for o in accepted
    ]


@PROPERTY
@given(
    record=mati_records(),
    claimed=mati_records(),
    same=st.booleans(),
    selection=st.sampled_from(list(HashSelection)),
    age=st.sampled_from([timedelta(hours=1), timedelta(days=5), timedelta(days=60)]),
)
def test_the_shortcut_never_skips_what_the_full_path_would_forward(
    record: dict[str, Any],
    claimed: dict[str, Any],
    same: bool,
    selection: HashSelection,
    age: timedelta,
) -> None:
    """Upload ``claimed`` (entries tagged with its bytes), then offer ``record``'s bytes under
    ``claimed``'s properties or its own: whenever the shortcut skips, the full path would
    have dropped every observable as unchanged."""
    policy = FilterPolicy(minimum_confidence=0, minimum_threat_score=0, hash_selection=selection)
    shortcut = Shortcut(policy, StixPolicy(), 0.5)
    uploaded = raw_message(claimed, run_id="r")
    entries: dict[str, SeenEntry | None] = {}
    forwarded = _full_path(claimed, shortcut, policy)
    if not isinstance(forwarded, DropReason):
        kind_days = StixPolicy().hash_expiration if claimed["type"] == "md5" else timedelta(days=7)
        for sid, fp in forwarded:
            entries[sid] = SeenEntry(fp, NOW - age + kind_days, shortcut.tag(uploaded.body))
    if same:  # the very bytes uploaded: where the shortcut should fire
        record = claimed
    offered = raw_message(record, run_id="r")
    for properties in (uploaded.properties, offered.properties):
        prediction = shortcut.predict(properties)
        if prediction is None or not shortcut.unchanged(
            prediction, shortcut.tag(offered.body), entries, NOW
        ):
            continue
        event("skipped")
        full = _full_path(record, shortcut, policy)
        assert not isinstance(full, DropReason)
        expiration = prediction.expiration
        for sid, fp in full:
            verdict = decide(
                entries.get(sid), fp, NOW, NOW + expiration, refresh_after_for(expiration, 0.5)
            )
            assert verdict is None, (sid, verdict)
