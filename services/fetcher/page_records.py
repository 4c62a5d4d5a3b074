"""What a page's records tell the fetcher beyond being published: the newest ``last_updated``
the checkpoint may move to, and which records no message could carry (``too_large``,
``too_deep``: each published as a stand-in the filter dead-letters, ``shared.core.record_bounds``).

Kept apart from the sync loop so each reading of a page can be read on its own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from shared.contract.bus import Message
from shared.contract.messages import REFUSED_PROPERTY
from shared.core.parsing import parse_timestamp
from shared.telemetry import logs

log = logs.get_logger(__name__)


def newest(records: Sequence[Any], limit: datetime) -> tuple[datetime | None, int, int]:
    """``(newest last_updated up to limit, records without one, records after limit)``;
    ``limit`` is the query's ``end_epoch``.

    A ``last_updated`` after the window's end is not trusted for the checkpoint: it cannot be
    an answer to this query, and a checkpoint moved into the future would skip everything
    until then, for good (the checkpoint never moves back). A record published as a stand-in
    counts like any other: the stand-in is its dead letter, so the checkpoint may pass it.
    """
    latest: datetime | None = None
    undated = ahead = 0
    for record in records:
        stamp = parse_timestamp(record.get("last_updated")) if isinstance(record, dict) else None
        if stamp is None:
            undated += 1
        elif stamp > limit:
            ahead += 1
        elif latest is None or stamp > latest:
            latest = stamp
    return latest, undated, ahead


def refused(messages: Sequence[Message], page: int) -> dict[str, int]:
    """How many of ``messages`` are stand-ins, by reason; each is logged with its MATI id, so
    the warning names the record an operator finds in the dead-letter queue. The filter counts
    them (``rejected_<reason>``, per destination) as it dead-letters them: a count here too
    would be a second account of the same records."""
    reasons: Counter[str] = Counter()
    for message in messages:
        reason = message.properties.get(REFUSED_PROPERTY)
        if reason is not None:
            reasons[reason] += 1
            log.warning(
                "fetch.record_refused",
                page=page,
                indicator_id=message.properties.get("indicator_id") or None,
                reason=reason,
            )
    return dict(reasons)
