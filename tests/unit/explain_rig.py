"""What the test_explain_verdict_*.py modules share: ``explain``, which asks ``judge`` about a
record and facts built by hand as ``gather`` would read them, the helpers those facts are
written with, and ``CASES``, one case per ``Verdict``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from services.cli.explain_core import Explanation, Facts, Found, Verdict, judge
from services.cli.query import read_query
from services.uploader.reasons import REJECTED_BY_SENTINEL
from shared.adapters.suppressions import Suppression
from shared.core.filters import FilterPolicy, evaluate
from shared.core.fingerprint import SeenEntry, fingerprint
from shared.core.stix import StixPolicy, content, stix_id
from tests.unit.strategies import example_record, must_parse

DEST = "soc"
#: A day after the §6 examples' ``last_updated`` (2025-03-09).
NOW = datetime(2025, 3, 10, 12, tzinfo=UTC)
AT = "2025-03-10T11:00:00.000Z"
POLICY = FilterPolicy()
STIX = StixPolicy()
RATIO = 0.5
OLD = "0" * 32
SENTINEL_MESSAGE = "Error for Property=pattern: The pattern is invalid"
IPV4 = example_record("ipv4")
IPV4_ID = stix_id(IPV4["id"], None)


def explain(
    record: dict[str, Any] | None,
    *,
    text: str | None = None,
    policy: FilterPolicy = POLICY,
    **facts: Any,
) -> Explanation:
    """``judge`` on ``record`` as MATI holds it now and ``facts`` as ``gather`` would read them;
    the operator typed ``text``, or the record's id."""
    query = read_query(text or str(record and record["id"]))
    return judge(query, Facts(NOW, DEST, record, **facts), policy, STIX, RATIO)


def current(record: dict[str, Any], policy: FilterPolicy = POLICY) -> str:
    """The fingerprint of what the filters would upload for ``record`` now (its first STIX id)."""
    observables = evaluate(must_parse(record), policy)
    assert isinstance(observables, tuple)
    return fingerprint(content(observables[0], STIX))


def found(**fields: Any) -> Found:
    return Found(**{"entity": f"upload.{DEST}", "message_id": "m-1", "at": AT, **fields})


def seen(fp: str, valid_for: timedelta) -> dict[str, SeenEntry | None]:
    return {IPV4_ID: SeenEntry(fp, NOW + valid_for)}


# ---- one case per verdict -------------------------------------------------------------------


def unknown() -> Explanation:
    return explain(None, text="fqdn--00000000-0000-5000-8000-000000000000")


def refused() -> Explanation:
    return explain({**IPV4, "value": 12345})


def dropped() -> Explanation:
    return explain({**IPV4, "mscore": 40})


def waiting_for_filter() -> Explanation:
    return explain(IPV4, waiting=[found(entity=f"indicators/{DEST}")])


def queued() -> Explanation:
    return explain(IPV4, queued=[found(stix_id=IPV4_ID, forward_reason="new")])


def in_flight() -> Explanation:
    return explain(IPV4, queued=[found(stix_id=IPV4_ID, locked=True)])


def uploaded() -> Explanation:
    return explain(IPV4, seen=seen(current(IPV4), timedelta(days=6)))


def stale() -> Explanation:
    return explain(IPV4, seen=seen(OLD, timedelta(days=6)))


def revoked() -> Explanation:
    """Accepted again after its revocation: the answer names the id it comes back under."""
    entry = SeenEntry(current(IPV4), NOW + timedelta(days=6), revoked=True)
    return explain(IPV4, seen={IPV4_ID: entry})


def rejected() -> Explanation:
    letter = found(stix_id=IPV4_ID, reason=REJECTED_BY_SENTINEL, description=SENTINEL_MESSAGE)
    return explain(IPV4, rejected=[letter])


def not_uploaded() -> Explanation:
    return explain(IPV4)


#: An analyst's suppression of ``IPV4``, an hour before ``NOW``.
SUPPRESSION = Suppression(
    IPV4["id"], IPV4["value"], "ipv4", "our own proxy", NOW - timedelta(hours=1)
)


def suppressed() -> Explanation:
    return explain(IPV4, suppression=SUPPRESSION)


CASES: dict[Verdict, Callable[[], Explanation]] = {
    Verdict.UNKNOWN: unknown,
    Verdict.REFUSED: refused,
    Verdict.DROPPED: dropped,
    Verdict.WAITING_FOR_FILTER: waiting_for_filter,
    Verdict.QUEUED: queued,
    Verdict.IN_FLIGHT: in_flight,
    Verdict.UPLOADED: uploaded,
    Verdict.STALE: stale,
    Verdict.REVOKED: revoked,
    Verdict.REJECTED: rejected,
    Verdict.NOT_UPLOADED: not_uploaded,
    Verdict.SUPPRESSED: suppressed,
}
