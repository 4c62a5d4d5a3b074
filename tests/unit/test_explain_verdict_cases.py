"""``explain``'s verdict on plain data, for each ``Verdict`` a case, and the answer around it:
the STIX id that needs attention leads, a cut scan is noted, the JSON carries the verdict.
``tests/services`` proves the facts are read right from real Redis, bus and MATI."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from services.cli.explain_core import Scan, Verdict
from services.uploader.reasons import REJECTED_BY_SENTINEL
from shared.core.filters import FilterPolicy, HashSelection, evaluate
from shared.core.fingerprint import SeenEntry, fingerprint
from shared.core.indicator import HashType
from shared.core.parsing import format_timestamp
from shared.core.stix import content, stix_id
from tests.unit.explain_rig import (
    CASES,
    DEST,
    IPV4,
    NOW,
    SENTINEL_MESSAGE,
    STIX,
    explain,
    found,
    not_uploaded,
)
from tests.unit.strategies import example_indicator, example_record

# ---- one case per verdict -------------------------------------------------------------------


def test_every_verdict_has_a_case() -> None:
    assert set(CASES) == set(Verdict)


@pytest.mark.parametrize("verdict", list(Verdict))
def test_each_case_gets_its_verdict(verdict: Verdict) -> None:
    answer = CASES[verdict]()

    assert answer.verdict is verdict
    assert answer.destination == DEST
    assert answer.checked_at == format_timestamp(NOW)


# ---- several STIX ids, cut scans ------------------------------------------------------------


def test_the_stix_id_that_needs_attention_leads() -> None:
    """``HASH_TYPE=all``: one STIX id per hash; one rejected outranks the others uploaded."""
    record = example_record("md5")
    policy = FilterPolicy(hash_selection=HashSelection.ALL)
    indicator = example_indicator("md5")
    observables = evaluate(indicator, policy)
    assert isinstance(observables, tuple)
    ids = {o.hash_type: stix_id(indicator.id, o.hash_type) for o in observables}
    fps = {o.hash_type: fingerprint(content(o, STIX)) for o in observables}
    until = NOW + timedelta(days=80)
    letter = found(
        stix_id=ids[HashType.SHA1], reason=REJECTED_BY_SENTINEL, description=SENTINEL_MESSAGE
    )

    answer = explain(
        record,
        policy=policy,
        seen={ids[h]: SeenEntry(fps[h], until) for h in (HashType.MD5, HashType.SHA256)},
        rejected=[letter],
    )

    assert answer.verdict is Verdict.REJECTED
    assert answer.filter_detail == "accepted as 3 STIX indicator(s)"
    verdicts = {s.hash_type: s.verdict for s in answer.stories}
    assert verdicts == {
        "md5": Verdict.UPLOADED,
        "sha1": Verdict.REJECTED,
        "sha256": Verdict.UPLOADED,
    }


def test_a_cut_scan_is_noted() -> None:
    scans = [Scan(f"upload.{DEST}", 1, True), Scan(f"indicators/{DEST}", 0, False)]

    answer = explain(IPV4, scans=scans)

    assert answer.notes == [f"upload.{DEST}: only the first 1 were scanned"]


def test_the_answer_is_json_with_the_verdicts_value() -> None:
    answer = replace(not_uploaded(), notes=["n"])

    assert b'"verdict": "not_uploaded"' in answer.to_json()
