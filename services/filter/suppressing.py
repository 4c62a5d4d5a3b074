"""Suppressions in the filter (issue 14, "suppress now"): a record whose MATI id an analyst
suppressed is dropped (``dropped_suppressed``) and its observables the workspace holds live
are revoked (``revoked_suppressed``), through the revocable path every other drop takes
(``services.filter.revoking``). It is judged on the full path even when the source-tag
shortcut would recognise it: its seen entry can be live and carry its tag (an upload that
was already on its way when the suppression was added), and then it must be revoked, not
"unchanged".

The set is checked for every record, so the filter keeps a copy (``SuppressedIds``) and pays
for it per batch, not per record: the suppressions' version rides in the batch's first
``MGET``, and the set is read again only when that version moved. A batch judged with the set
of a moment ago cannot queue a freshly suppressed indicator either: the claim script checks
the suppressions itself (``DestinationState.claim_unless_suppressed``).
"""

from __future__ import annotations

from typing import Final

from shared.adapters.suppressions import Suppressions, SuppressionSet
from shared.core.events import get_logger

log = get_logger(__name__)

#: The ``dropped_<reason>`` and ``revoked_<reason>`` of a suppressed record.
SUPPRESSED: Final = "suppressed"


class SuppressedIds:
    """One filter process's copy of its destination's suppressions, shared by its lanes."""

    def __init__(self, store: Suppressions) -> None:
        self._store = store
        self._current = SuppressionSet()

    async def at(self, version: int) -> SuppressionSet:
        """The suppressions as of ``version`` or later; reads them only when ``version`` is
        not the one held (two lanes may both read them once after a change: harmless)."""
        if version != self._current.version:
            self._current = await self._store.snapshot()
            log.info(
                "filter.suppressions_loaded",
                version=self._current.version,
                suppressed=len(self._current.by_id),
            )
        return self._current
