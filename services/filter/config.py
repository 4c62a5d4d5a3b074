"""What the filter decides with, built from the settings once (``FilterConfig.from_settings``):
the settings object already validated every value, so the worker takes them as they are."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from shared.core.backoff import Backoff
from shared.core.filters import FilterPolicy
from shared.core.settings import Settings
from shared.core.stix import StixPolicy

#: How long an in-flight claim lives. It must outlast a realistic upload-queue backlog (an
#: initial 90-day backfill at Sentinel's 10 000 objects a minute drains in hours, a long 429
#: pause or an open circuit adds more): a claim that expires while its message is still queued
#: lets the next sync queue the same version again, a harmless but wasted upload. It must not
#: be forever: a claim whose message was lost (dead-lettered by the uploader, an operator
#: purging the queue) would then block that indicator until it changed.
CLAIM_TTL_S: Final = 6 * 3600.0
#: Longest wait for the first message of a batch; also bounds how long ``run`` takes to notice
#: ``stop`` while the subscription is idle.
RECEIVE_WAIT_S: Final = 1.0
#: Back-off while Redis or the bus is unavailable: short first (a failover takes seconds),
#: capped so the filter notices recovery within half a minute.
UNAVAILABLE_BACKOFF: Final = Backoff(base_s=0.5, cap_s=30.0)


@dataclass(frozen=True, slots=True)
class FilterConfig:
    """One destination's filter: its policies, the seen cache's use, and the batch's shape."""

    destination: str
    filter_policy: FilterPolicy = field(default_factory=FilterPolicy)
    stix_policy: StixPolicy = field(default_factory=StixPolicy)
    deduplication: bool = True
    refresh_ratio: float = 0.5
    batch_size: int = 500
    claim_ttl_s: float = CLAIM_TTL_S
    receive_wait_s: float = RECEIVE_WAIT_S
    #: Batches handled at once in one process (``services.runtime.lanes_for`` the bus).
    lanes: int = 1
    #: ``CACHE_REBUILD=auto``: decide nothing while the destination's state is not born
    #: (a seen cache lost with Redis is being rebuilt from the workspace by the uploader).
    hold_until_born: bool = False

    @classmethod
    def from_settings(cls, settings: Settings, *, lanes: int = 1) -> FilterConfig:
        return cls(
            destination=settings.destination,
            filter_policy=settings.filter_policy(),
            stix_policy=settings.stix_policy(),
            deduplication=settings.enable_deduplication,
            refresh_ratio=settings.validity_refresh_ratio,
            batch_size=settings.filter_batch_size,
            lanes=lanes,
            hold_until_born=settings.cache_rebuild == "auto" and settings.enable_deduplication,
        )
