"""Source tags: recognising a raw record the filter has already judged, without parsing it.

Parsing, mapping and fingerprinting a record is most of the filter's work, and a backfill
replayed, an overlapping window or a lost checkpoint hands it the very same bytes again. A
source tag is a 64-bit keyed digest of those bytes; the key digests the destination's filter
and STIX settings and :data:`MAPPING_VERSION`. The seen cache stores the tag of the record each
entry was decided from, so equal tags mean: these bytes, judged by these settings and this
code, already yielded exactly this entry's fingerprint.

The filter looks the tag up under the STIX ids the message's properties predict
(:meth:`Shortcut.predict`) and skips the record only if every predicted id holds an entry with
this tag that ``decide`` would leave alone. That is sound whatever the properties claim: an
entry carries a tag only when a record with those bytes yielded that id, and the prediction
covers every id such a record can yield (all three hashes for ``HASH_TYPE=all``), so a wrong
or partial prediction finds a missing or foreign entry and the record takes the full path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Final

import orjson

from shared.core.filters import FilterPolicy, HashSelection, ObservableKind, kind_of
from shared.core.fingerprint import SOURCE_TAG_BYTES, SeenEntry, decide, refresh_after_for
from shared.core.indicator import HashType, IndicatorType
from shared.core.stix import StixPolicy, stix_id

#: Bump when parsing, the STIX mapping or the fingerprint changes what one record becomes:
#: every tag changes with it, so each record is judged afresh once (and re-uploaded only if
#: its fingerprint moved). tests/unit/test_source_tag.py pins the outputs this number stands
#: for and fails until it is bumped. 2: MATI's id, threat score and the fingerprint moved from
#: top-level ``x_`` properties into our STIX property extension.
MAPPING_VERSION: Final = 2


def _plain(value: object) -> object:
    if isinstance(value, timedelta):
        return round(value / timedelta(microseconds=1))
    if isinstance(value, frozenset | set):
        return sorted(str(item) for item in value)
    raise TypeError(f"cannot canonicalise {type(value).__name__}")


def policy_key(filter_policy: FilterPolicy, stix_policy: StixPolicy) -> bytes:
    """The key every tag of a destination is made with: it changes when any setting that
    shapes what the filter forwards changes, so no old tag matches after such a change."""
    # An empty set (``EXCLUDE_WARNINGLISTS`` unset) is left out: it filters exactly as the
    # versions before the setting did, so their tags stay good across an upgrade.
    settings = [
        MAPPING_VERSION,
        *(
            {f.name: value for f in fields(p) if (value := getattr(p, f.name)) != frozenset()}
            for p in (filter_policy, stix_policy)
        ),
    ]
    canonical = orjson.dumps(settings, default=_plain, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(canonical, digest_size=32).digest()


def source_tag(body: bytes, key: bytes) -> bytes:
    """The tag of one raw message body under ``key`` (``policy_key``)."""
    return hashlib.blake2b(body, key=key, digest_size=SOURCE_TAG_BYTES).digest()


@dataclass(frozen=True, slots=True)
class Prediction:
    """The STIX ids a record would yield if accepted, and the decision thresholds of its kind."""

    stix_ids: tuple[str, ...]
    expiration: timedelta
    refresh_after: timedelta
    #: The ids of an md5's hashes ``HASH_TYPE`` does not select: looked up in the same ``MGET``
    #: (a workspace may hold them, to be revoked), never part of the "unchanged" verdict.
    others: tuple[str, ...] = ()


class Shortcut:
    """One destination's source-tag shortcut: predictions from message properties, and the
    verdict "already uploaded, nothing to do" from the seen entries."""

    def __init__(
        self, filter_policy: FilterPolicy, stix_policy: StixPolicy, refresh_ratio: float
    ) -> None:
        self.key = policy_key(filter_policy, stix_policy)
        self._hash_types: tuple[HashType, ...] = (
            tuple(HashType)
            if filter_policy.hash_selection is HashSelection.ALL
            else (HashType(filter_policy.hash_selection.value),)
        )
        self._thresholds: dict[ObservableKind, tuple[timedelta, timedelta]] = {}
        for kind in ObservableKind:
            expiration = stix_policy.expiration_of(kind)
            self._thresholds[kind] = (expiration, refresh_after_for(expiration, refresh_ratio))

    def tag(self, body: bytes) -> bytes:
        return source_tag(body, self.key)

    def predict(self, properties: Mapping[str, str]) -> Prediction | None:
        """The ids to look up for a raw message, from the ``indicator_id`` and
        ``indicator_type`` the fetcher put on it; ``None`` when they say nothing usable."""
        indicator_id = properties.get("indicator_id", "")
        try:
            kind = kind_of(IndicatorType(properties.get("indicator_type", "")))
        except ValueError:
            return None
        if not indicator_id:
            return None
        expiration, refresh_after = self._thresholds[kind]
        if kind is not ObservableKind.HASH:
            return Prediction((stix_id(indicator_id, None),), expiration, refresh_after)
        ids = tuple(stix_id(indicator_id, hash_type) for hash_type in self._hash_types)
        others = tuple(stix_id(indicator_id, h) for h in HashType if h not in self._hash_types)
        return Prediction(ids, expiration, refresh_after, others)

    @staticmethod
    def unchanged(
        prediction: Prediction,
        tag: bytes,
        entries: Mapping[str, SeenEntry | None],
        now: datetime,
    ) -> bool:
        """True when every predicted id was uploaded from this very record and needs no
        refresh yet: the record would end ``dropped_unchanged`` on the full path too.

        Never true for a revoked entry (``decide`` calls it new: it goes out again under the
        next generation). Nor does it skip a record that now needs revoking: the entries hold
        this tag only if these bytes passed these settings (the tag's key), so they pass again."""
        valid_until_if_uploaded = now + prediction.expiration
        for stix_id_ in prediction.stix_ids:
            entry = entries.get(stix_id_)
            if entry is None or entry.source != tag:
                return False
            verdict = decide(
                entry, entry.fingerprint, now, valid_until_if_uploaded, prediction.refresh_after
            )
            if verdict is not None:
                return False
        return True


def predicted_ids(predictions: Sequence[Prediction | None]) -> list[str]:
    """Every id the predictions name, once each, in order: one ``MGET`` for a batch."""
    return list(
        dict.fromkeys(i for p in predictions if p is not None for i in (*p.stix_ids, *p.others))
    )
