"""Judging one raw delivery on its own (stage 1 of the filter, see ``worker``): parse it,
apply the destination's filters, and for each observable it yields (an md5 with
``HASH_TYPE=all`` yields one per hash) map it to its STIX draft (id, content, fingerprint:
what the upload message carries) and say what ``valid_until`` an upload now would get.
No I/O: the seen cache has its say afterwards.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from opentelemetry.trace import INVALID_SPAN, Span

from services.filter.revoking import HASH_TYPE_UNSELECTED, Revocable
from services.filter.suppressing import SUPPRESSED
from shared.adapters.suppressions import SuppressionSet
from shared.contract.bus import Delivery, Message
from shared.contract.messages import FULL_SYNC, SYNC_PROPERTY, UploadRequest, upload_message
from shared.core.events import get_logger
from shared.core.filters import DropReason, FilterPolicy, Observable, evaluate, every_observable
from shared.core.fingerprint import ForwardReason, SeenEntry, refresh_after_for
from shared.core.indicator import HashType, Indicator
from shared.core.parsing import Rejection, parse_indicator, parse_json
from shared.core.stix import Draft, StixPolicy
from shared.telemetry import tracing

log = get_logger(__name__)
#: ``judge``'s default: nothing suppressed.
NO_SUPPRESSIONS: Final = SuppressionSet()

#: Dead-letter reasons: a record that is not a MATI indicator, or one the filter failed on.
INVALID_RECORD: Final = "invalid_record"
FILTER_ERROR: Final = "filter_error"


@dataclass(slots=True)
class Forward:
    """One observable of an accepted record, mapped, before the seen cache had its say."""

    draft: Draft
    indicator_type: str
    source: bytes
    valid_until: datetime
    refresh_after: timedelta
    #: MATI's id and the hash type: a later generation's id derives from them.
    mati_id: str = ""
    hash_type: HashType | None = None
    #: Until when an upload would have been valid had it followed MATI's last report of the
    #: record (``last_updated`` plus the expiration); None for an undated record.
    reported_until: datetime | None = None

    def stale(self, seen: SeenEntry | None, now: datetime) -> bool:
        """A full sync's record that is not live in the workspace and whose last report by
        MATI is older than its expiration: uploading it would bring back what the workspace
        rightly let expire. (A normal sync never meets one: MATI reporting it is what makes
        it current.)"""
        live = seen is not None and seen.live(now)
        return not live and self.reported_until is not None and self.reported_until <= now


@dataclass(slots=True)
class Item:
    """One raw delivery and what became of it."""

    delivery: Delivery
    indicator_id: str = ""
    #: From a full sync: re-judged, not reported again (``services.filter.worker._decide``).
    full: bool = False
    dead_letter: tuple[str, str] | None = None  # (reason, description)
    observables: list[Forward] = field(default_factory=list)
    #: Observables the workspace may hold that no longer pass (``services.filter.revoking``).
    revocable: list[Revocable] = field(default_factory=list)
    #: ``revoked_<reason>`` of each revocation decided, by lineage id.
    revoke_reasons: dict[str, str] = field(default_factory=dict)
    decided: list[UploadRequest] = field(default_factory=list)
    claimed: list[UploadRequest] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    abandoned: bool = False
    settled: bool = False
    span: Span = INVALID_SPAN

    def upload_messages(self) -> list[Message]:
        """The upload message of each claimed request. The indicator's trace goes on: from
        our span, or, when nothing records spans, straight from the raw message's context."""
        delivery = self.delivery
        trace = (
            tracing.inject({}, tracing.context_of(self.span))
            if self.span.is_recording()
            else delivery.properties
        )
        run_id = delivery.properties.get("run_id", "")
        return [
            upload_message(r, run_id=run_id, source_message_id=delivery.message_id, trace=trace)
            for r in self.claimed
        ]

    def count_forwarded(self) -> None:
        """Count what was forwarded, once the publish returned."""
        for request in self.claimed:
            self.counts["forwarded"] += 1
            self.counts[f"forwarded_{request.reason}"] += 1
            if request.reason is ForwardReason.REVOKE:
                self.counts[f"revoked_{self.revoke_reasons[request.stix_id]}"] += 1

    def outcome(self) -> str:
        """What became of the message, for its span."""
        if self.abandoned:
            return "abandoned"
        if not self.settled:  # the batch failed before settling: it comes back on lock expiry
            return "unsettled"
        if self.dead_letter is not None:
            return f"dead_lettered_{self.dead_letter[0]}"
        if self.claimed:
            return "forwarded"
        dropped = sorted(name for name in self.counts if name.startswith("dropped_"))
        return dropped[0] if dropped else "dropped"


def judge(
    delivery: Delivery,
    *,
    source: bytes,
    now: datetime,
    filter_policy: FilterPolicy,
    stix_policy: StixPolicy,
    refresh_ratio: float,
    suppressed: SuppressionSet = NO_SUPPRESSIONS,
) -> Item:
    """Parse, filter and fingerprint one record; never raises (bad input is its verdict).
    ``source`` is the record's source tag, stored with the seen entry its upload writes.
    A record whose MATI id is in ``suppressed`` is dropped whatever the filters say, and each
    of its observables is revocable (``services.filter.suppressing``)."""
    properties = delivery.properties
    item = Item(
        delivery,
        indicator_id=properties.get("indicator_id", ""),
        full=properties.get(SYNC_PROPERTY) == FULL_SYNC,
    )
    try:
        raw = parse_json(delivery.body)
        indicator = raw if isinstance(raw, Rejection) else parse_indicator(raw)
        if isinstance(indicator, Rejection):
            item.indicator_id = indicator.indicator_id or item.indicator_id
            item.dead_letter = (INVALID_RECORD, f"{indicator.reason}: {indicator.detail}")
            item.counts[f"rejected_{indicator.reason}"] += 1
            return item
        item.indicator_id = indicator.id
        if indicator.id in suppressed:
            item.counts[f"dropped_{SUPPRESSED}"] += 1
            item.revocable = _revocable(
                indicator,
                every_observable(indicator),
                SUPPRESSED,
                source,
                note=suppressed.note(indicator.id),
            )
            return item
        accepted = evaluate(indicator, filter_policy)
        if isinstance(accepted, DropReason):
            item.counts[f"dropped_{accepted}"] += 1
            # Fetched without the flags, the record says nothing about warning lists: what is
            # live stays live until a record that says is judged (never revoked on a guess).
            if accepted is not DropReason.WARNINGLIST_UNKNOWN:
                observables = every_observable(indicator)
                item.revocable = _revocable(indicator, observables, accepted, source)
            return item
        chosen = {observable.hash_type for observable in accepted}
        unselected = [o for o in every_observable(indicator) if o.hash_type not in chosen]
        item.revocable = _revocable(indicator, unselected, HASH_TYPE_UNSELECTED, source)
        for observable in accepted:
            draft = Draft.of(observable, stix_policy)
            item.observables.append(
                Forward(
                    draft=draft,
                    indicator_type=indicator.type.value,
                    source=source,
                    valid_until=now + draft.expiration,
                    refresh_after=refresh_after_for(draft.expiration, refresh_ratio),
                    mati_id=indicator.id,
                    hash_type=observable.hash_type,
                    reported_until=(
                        None
                        if indicator.last_updated is None
                        else indicator.last_updated + draft.expiration
                    ),
                )
            )
    except Exception as exc:
        # A bug meeting one odd record must cost that record (set aside, replayable once
        # fixed), not the whole subscription in a crash loop.
        log.exception("filter.record_failed", indicator_id=item.indicator_id)
        item.observables.clear()
        item.revocable.clear()
        item.dead_letter = (FILTER_ERROR, f"{type(exc).__name__}: {str(exc)[:150]}")
        item.counts = Counter({"failed": 1})
    return item


def _revocable(
    indicator: Indicator,
    observables: Sequence[Observable],
    reason: str,
    source: bytes,
    *,
    note: Mapping[str, str] | None = None,
) -> list[Revocable]:
    return [Revocable(o, reason, indicator.type.value, source, note) for o in observables]
