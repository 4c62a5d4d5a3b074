"""What the fetcher asks MATI for, built from the settings once (``FetcherConfig.from_settings``),
and how far a window reaches back past the checkpoint."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from shared.adapters.mati_paging import MAX_LIMIT
from shared.core.settings import Settings

#: MATI serves indicators updated within the last 90 days and answers 400 to an older
#: ``start_epoch`` (specs/mati-api-v4.md §3.1): a query never reaches further back.
MATI_RETENTION: Final = timedelta(days=90)
#: Kept inside the 90 days for clock skew between us and MATI, and for the time between
#: computing a window and a later cursor restart re-sending it.
RETENTION_MARGIN: Final = timedelta(hours=1)
#: A later sync starts this far before the checkpoint. MATI's index is eventually consistent:
#: an indicator can become visible a little after a later one with an older ``last_updated``,
#: and many indicators share one ``last_updated`` (a bulk re-scoring stamps them all alike), so
#: starting exactly at the checkpoint could skip the ones that arrived late or sat on the edge.
#: The re-published overlap costs nothing: its message ids are the ones already published, so
#: the bus drops them (within its duplicate window), and the filter's seen cache after that.
OVERLAP: Final = timedelta(minutes=5)
#: Restarts of the window after an expired cursor, in a row without a confirmed page. A cursor
#: lives about ten minutes, so expiries are rare; one that keeps expiring before any progress
#: is a problem for the next run (and an operator), not a reason to loop.
MAX_RESTARTS: Final = 3


@dataclass(frozen=True, slots=True)
class FetcherConfig:
    """What to ask MATI for, from the settings; ``page_size`` is MATI's maximum by default.

    One fetch feeds every destination (``destinations``, each through its own subscription),
    so it asks for what the loosest of them needs. No filter is pushed down to MATI
    (``gte_mscore``, ``exclude_osint``), not even the loosest minimum: a record that was
    uploaded and then fell below a minimum must still be fetched, or the filter could never
    revoke it (DESIGN §5). ``include_misp``: ask for the warning-list flags only when some
    destination's filter reads them, since they add about eighty keys to every record."""

    destinations: tuple[str, ...]
    initial_lookback: timedelta
    include_misp: bool = False
    #: What a full sync pages: the longest expiration, so every indicator that can still be
    #: live in the workspace is judged again, within what MATI serves.
    full_window: timedelta = MATI_RETENTION - RETENTION_MARGIN
    page_size: int = MAX_LIMIT
    overlap: timedelta = OVERLAP
    max_restarts: int = MAX_RESTARTS

    @classmethod
    def from_settings(
        cls, settings: Settings, destinations: Iterable[Settings] = ()
    ) -> FetcherConfig:
        """``settings``: the fetcher's own (lookback); ``destinations``: those it feeds
        (default: ``settings``' own)."""
        served = tuple(destinations) or (settings,)
        return cls(
            destinations=tuple(each.destination for each in served),
            initial_lookback=timedelta(days=settings.initial_lookback),
            include_misp=any(each.exclude_warninglists for each in served),
            full_window=min(
                MATI_RETENTION - RETENTION_MARGIN, max(_longest_live(each) for each in served)
            ),
        )


def _longest_live(settings: Settings) -> timedelta:
    """The longest expiration of all four indicator types, taken or not: a type the
    destination no longer takes may still be live from before, and revoking it is what a full
    sync after that settings change is for."""
    return timedelta(
        days=max(
            settings.ip_indicator_expiration,
            settings.fqdn_indicator_expiration,
            settings.url_indicator_expiration,
            settings.hash_indicator_expiration,
        )
    )
