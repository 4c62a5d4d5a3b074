"""The sizes and settings of a chaos run, on each bus, full and ``--quick``.

The simulated Sentinel quota sets how long the back-fill takes, and so how long the kills
have to land in it: the window is sized to end while uploads are still queued, so every kill
meets a pipeline at work. Measured on a shared 2-core machine, the uploaders use about half
the quota through the kills, faults and pauses (100 requests every 40 s, 150 a minute,
carries 50,000 indicators in about seven minutes; the product takes at most 100 a window,
Sentinel's own quota, so the window is what is shortened). The MATI page latency (a second
in the full run) spreads the fetch of the back-fill, so the filters work in bursts (a page
at a time) rather than once, and the fetcher has pages to be killed in; each fetcher kill
stops the fetch for most of a minute (its lease), which is what the back-fill waits on.

What the services run with besides the simulators' endpoints (``CHAOS_ENV``):

- the filters accept everything at first (``ACCEPT_ALL``), so the back-fill is all uploads;
- ``SYNC_SCHEDULE`` of 18 s: the fetcher syncs again and again, as a long-running deployment
  does, so it always has a sync to be killed in; and a killed fetcher's successor, which
  finds the lease still held by the dead one and stands by, tries again 18 s later rather
  than after the default four hours (reported as a finding);
- the lock duration stays the default 60 s: above the services' 30 s HTTP timeout, so a
  request a fault stalls cannot outlive its messages' locks;
- filter batches of 100 (not 500): a page is shared by both filters' lanes, so each replica
  has raw messages in hand often enough for its kills to land mid-batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from harness.chaos.scheduler import Size
from harness.pipeline import ACCEPT_ALL

CHAOS_ENV: Final = {
    **ACCEPT_ALL,
    "SYNC_SCHEDULE": "0.005",
    "UPLOAD_LINGER_SECONDS": "0.5",
    "FILTER_BATCH_SIZE": "100",
    "DRAIN_TIMEOUT_SECONDS": "10",
    "INITIAL_LOOKBACK": "30",
    "LOG_LEVEL": "INFO",
}
#: Days of history the feed spreads over (within ``INITIAL_LOOKBACK``).
FEED_DAYS: Final = 20
#: Life of the access tokens Entra issues during the run (the issue asks for two minutes).
TOKEN_TTL_S: Final = 120
#: Share of the simulators' requests answered with a fault.
FAULT_RATE: Final = 0.10
#: Share of the fake Service Bus peer's operations that meet a fault (a drop, ServerBusy, a
#: lost lock). Every receive, settlement, renewal and peek is one, several a second per
#: process, so a tenth of them would fault the bus many times a minute.
PEER_FAULT_RATE: Final = 0.02
#: ``SYNC_SCHEDULE`` and the 30 s fetcher lease.
FETCHER_PHASE_TIMEOUT_S: Final = 45.0


@dataclass(frozen=True)
class Variant:
    bus: str
    quick: bool
    seed: int
    size: Size
    #: The simulated Sentinel's quota, which the uploaders are told as well.
    sentinel_requests: int
    sentinel_window_s: float
    page_latency_s: float
    planted: int
    suppressions: int
    #: How long a kill waits for its phase before it falls back to a random moment.
    phase_timeout_s: float
    drain_timeout_s: float
    fault_rate: float = FAULT_RATE

    @property
    def phase_timeouts(self) -> dict[str, float]:
        """The fetcher's spans a sync schedule and a lease left by a killed predecessor:
        between syncs it has no page to be killed in."""
        return {"fetcher": FETCHER_PHASE_TIMEOUT_S, "filter": self.phase_timeout_s,
                "uploader": self.phase_timeout_s}  # fmt: skip

    @property
    def env(self) -> dict[str, str]:
        return {
            **CHAOS_ENV,
            "SENTINEL_REQUESTS_PER_MINUTE": str(self.sentinel_requests),
            "SENTINEL_RATE_WINDOW_SECONDS": f"{self.sentinel_window_s:g}",
        }


def variant(bus: str, *, quick: bool, seed: int) -> Variant:
    """The run of ``make chaos`` on ``bus`` (``CHAOS_ARGS=--quick``: the small one)."""
    if quick:
        size = Size(indicators=5_000, service_kills=10, redis_kills=1, window_s=40.0)
        return Variant(
            bus, quick, seed, size, sentinel_requests=15, sentinel_window_s=10.0,
            page_latency_s=4.0, planted=4, suppressions=2, phase_timeout_s=8.0,
            drain_timeout_s=240.0,
        )  # fmt: skip
    if bus == "servicebus":
        size = Size(indicators=12_000, service_kills=24, redis_kills=2, window_s=150.0)
        return Variant(
            bus, quick, seed, size, sentinel_requests=50, sentinel_window_s=60.0,
            page_latency_s=4.0, planted=8, suppressions=3, phase_timeout_s=15.0,
            drain_timeout_s=600.0,
        )  # fmt: skip
    size = Size(indicators=50_000, service_kills=100, redis_kills=3, window_s=420.0)
    return Variant(
        bus, quick, seed, size, sentinel_requests=100, sentinel_window_s=40.0,
        page_latency_s=1.0, planted=12, suppressions=3, phase_timeout_s=12.0,
        drain_timeout_s=900.0,
    )  # fmt: skip
