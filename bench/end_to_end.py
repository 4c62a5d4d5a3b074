"""Figure 2: end to end against a simulated Sentinel without a quota.

Fetcher (``sync --once``), filter and one uploader run as processes over a private Redis; the
clock runs from the first MATI page served to the moment the simulated workspace holds every
expected object (each one stored only after Sentinel accepted it, and committed right after).
The product's own rate budget is opened as wide as its settings allow (100 requests per
1 s window): that is the only limit left, and the figure says how close to it we get.

``make bench`` takes figure 2 from the 100k-backlog run of ``bench.memory`` instead (same
services, the fetcher as a service), to save a run; this module is the same measurement on
its own: ``python -m bench.end_to_end``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bench.common import Figure
from bench.runs import first_page, pipeline_run, stored_at_least, sync_in_background
from shared.adapters.rate_budget import default_rate_margin_s

#: Sentinel's quota: 100 requests of 100 objects a minute.
SENTINEL_QUOTA_PER_S = 100 * 100 / 60
TARGET_MULTIPLE = 30.0
#: The widest budget the settings allow (SENTINEL_REQUESTS_PER_MINUTE ≤ 100, window ≥ 1 s).
WIDE_OPEN = {"SENTINEL_REQUESTS_PER_MINUTE": "100", "SENTINEL_RATE_WINDOW_SECONDS": "1"}


async def run(count: int = 60_000, *, uploaders: int = 1) -> Figure:
    async with pipeline_run(count=count, uploaders=uploaders, env=WIDE_OPEN) as run_:
        pipeline = run_.pipeline
        expected = len(pipeline.expected().objects)
        sync = await sync_in_background(pipeline, timeout_s=600)
        started = await first_page(pipeline)
        await run_.mark_cpu()
        finished = await stored_at_least(pipeline, expected, timeout_s=600)
        cpu = run_.cpu_used()
        code = await sync
        requests = len(pipeline.sims.sentinel.request_log)
        statuses = sorted({r.status or 0 for r in pipeline.sims.sentinel.request_log})
    seconds = finished - started
    return unthrottled_figure(
        f"2. End to end, unthrottled ({uploaders} uploader)",
        expected / seconds,
        {
            "indicators": expected,
            "seconds": round(seconds, 2),
            "sentinel_requests": requests,
            "sentinel_statuses": statuses,
            "sync_exit_code": code,
            "cpu_seconds": cpu,
        },
    )


def unthrottled_figure(title: str, rate: float, evidence: dict[str, Any]) -> Figure:
    """Figure 2 from a measured rate: this module's run and ``bench.memory``'s 100k-backlog
    run report it, and must judge it by the same quota, target and budget cap."""
    multiple = rate / SENTINEL_QUOTA_PER_S
    # What the product's budget allows at its widest: limit / (window + margin) × objects.
    budget_cap = 100 / (1 + default_rate_margin_s(1)) * 100
    return Figure(
        key="end_to_end_unthrottled",
        title=title,
        ratio=round(multiple, 1),
        target=f">= {TARGET_MULTIPLE:.0f}x quota ({SENTINEL_QUOTA_PER_S:.0f}/s)",
        passed=multiple >= TARGET_MULTIPLE,
        absolute={
            **evidence,
            "indicators_per_s": round(rate),
            "sentinel_quota_per_s": round(SENTINEL_QUOTA_PER_S, 1),
            "product_budget_cap_per_s": budget_cap,
            "share_of_product_budget_cap": round(rate / budget_cap, 3),
        },
    )


if __name__ == "__main__":
    print(asyncio.run(run(30_000)).to_json())
