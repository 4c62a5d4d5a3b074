"""Figure 4: fetch pace against a simulated MATI that takes 200 ms per page.

The real ``Fetcher`` runs one sync in this process, with the real ``MatiClient`` (TLS, token,
pacing), the real ``RedisStreamsBus`` and feed state on a private Redis. The ceiling is
``MATI_REQUESTS_PER_SECOND``; at 2 a page may take up to 500 ms from request to request, of
which the simulated MATI keeps 200 ms: the rest (decoding, publishing the page, moving the
checkpoint) must fit, or the fetcher falls behind its own ceiling.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

from redis.asyncio import Redis

from bench.common import Figure, private_redis
from services.fetcher.config import FetcherConfig
from services.fetcher.sync import Fetcher, Outcome
from shared.adapters.feed_state import FeedState, FetcherLease
from shared.adapters.http import open_session
from shared.adapters.mati_client import MatiClient
from shared.adapters.mati_paging import IndicatorQuery, RawPage
from shared.adapters.redis_streams import RedisStreamsBus
from shared.adapters.tls import client_context
from shared.contract.messages import subscription
from shared.core.secrets import Secret
from simulators.feed import Feed
from simulators.together import Simulators

CEILING_RPS = 2.0
PAGE_LATENCY_S = 0.2
TARGET = 0.95


class TimedClient(MatiClient):
    """The real client; notes when each page arrived, for the pace."""

    arrivals: list[float]

    async def pages(self, query: IndicatorQuery) -> AsyncIterator[RawPage]:
        self.arrivals = []
        async for page in super().pages(query):
            self.arrivals.append(time.monotonic())
            yield page


async def run(pages: int = 30) -> Figure:
    count = pages * 1000
    with tempfile.TemporaryDirectory(prefix="m2s-bench-") as directory:
        sims = Simulators(Path(directory), feed=Feed(seed=5, count=count, days=29))
        sims.mati.page_latency_s = PAGE_LATENCY_S
        await sims.start()
        try:
            async with private_redis() as server:
                redis = Redis.from_url(server.url, socket_timeout=30)
                session = open_session(client_context(sims.ca.ca_path))
                try:
                    client = TimedClient(
                        session,
                        base_url=sims.mati.url,
                        api_key=Secret(sims.credentials.mati_api_key),
                        api_secret=Secret(sims.credentials.mati_api_secret),
                        requests_per_second=CEILING_RPS,
                    )
                    bus = RedisStreamsBus(redis, consumer="bench-fetcher")
                    await bus.ensure(subscription("bench"))
                    fetcher = Fetcher(
                        client=client,
                        bus=bus,
                        feed=FeedState(redis),
                        lease=FetcherLease(redis, owner="bench-fetcher"),
                        config=FetcherConfig(
                            destinations=("bench",),
                            initial_lookback=timedelta(days=30),
                        ),
                    )
                    summary = await fetcher.sync("bench-fetch", asyncio.Event())
                finally:
                    await session.close()
                    await redis.aclose()
        finally:
            await sims.stop()
    arrivals = client.arrivals
    # Pages 1..n-1 after the first: each interval is one request-to-request cycle.
    span = arrivals[-1] - arrivals[0]
    rate = (len(arrivals) - 1) / span if span > 0 else 0.0
    share = rate / CEILING_RPS
    return Figure(
        key="fetch_pace",
        title="4. Fetch, 200 ms MATI page latency",
        ratio=round(share, 3),
        target=f">= {TARGET} of {CEILING_RPS:g} requests/s",
        passed=share >= TARGET and summary.outcome is Outcome.COMPLETED,
        absolute={
            "pages": len(arrivals),
            "page_size": 1000,
            "seconds": round(span, 2),
            "pages_per_s": round(rate, 3),
            "ceiling_requests_per_s": CEILING_RPS,
            "page_latency_s": PAGE_LATENCY_S,
            "indicators_per_s": round(rate * 1000),
            "outcome": summary.outcome.value,
            "published": summary.published,
        },
    )


if __name__ == "__main__":
    print(asyncio.run(run(10)).to_json())
