"""Finding one indicator in MATI the way the pipeline sees it, for the operator commands that
start from what an analyst typed (``explain``, ``suppress``): a MATI id or a value, asked with
the flags the fetcher asks for, so the record is the one a sync would publish."""

from __future__ import annotations

from typing import Any

from services.cli.query import Query
from services.fetcher.config import FetcherConfig
from shared.adapters.mati_client import MatiClient
from shared.core.settings import Settings


async def find(query: Query, mati: MatiClient, settings: Settings) -> dict[str, Any] | None:
    """MATI's record of ``query`` now, or ``None`` when MATI does not know it."""
    misp = FetcherConfig.from_settings(settings).include_misp  # what the fetcher asks for
    if query.indicator_id is not None:
        return await mati.lookup(indicator_id=query.indicator_id, include_misp=misp)
    return await mati.lookup(
        indicator_type=str(query.indicator_type), value=query.value, include_misp=misp
    )
