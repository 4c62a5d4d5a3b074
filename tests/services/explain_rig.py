"""What the explain and suppress tests share: a feed the MATI simulator serves, the settings
they run with, ``Ctx`` (the simulator, a MatiClient on it, a real Redis, bus and
DestinationState; the ``ctx`` fixture in conftest.py opens one) and records picked from the
feed with what the filters make of them."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis

from services.cli.explain import (
    Explanation,
    gather,
    judge,
    read_query,
)
from shared.adapters.destination_state import DestinationState
from shared.adapters.feed_state import FeedState
from shared.adapters.http import open_session
from shared.adapters.mati_client import MatiClient
from shared.adapters.redis_streams import RedisStreamsBus
from shared.contract.bus import Message
from shared.contract.messages import (
    UploadRequest,
    raw_message,
    subscription,
    upload_message,
)
from shared.core.filters import evaluate
from shared.core.fingerprint import EXTENSION_ID, ForwardReason, fingerprint
from shared.core.indicator import Indicator, IndicatorType
from shared.core.parsing import parse_indicator
from shared.core.secrets import Secret
from shared.core.settings import Service, Settings, load_settings
from shared.core.stix import Draft, content, stix_id
from simulators.feed import Feed
from simulators.mati import MatiSimulator

DEST = "soc"
FEED = Feed(seed=23, count=400, days=10)
KEY, SECRET = "sim-mati-key", "sim-mati-secret"
SENTINEL_MESSAGE = "Error for Property=pattern: The pattern is invalid"


def settings_with(**env: str) -> Settings:
    base = {"DESTINATION": DEST, "MATI_API_KEY": KEY, "MATI_API_SECRET": SECRET}
    return load_settings({**base, **env}, Service.FETCHER)


DEFAULT = settings_with()


@dataclass
class Ctx:
    redis: Redis
    bus: RedisStreamsBus
    state: DestinationState
    mati: MatiClient
    sim: MatiSimulator

    async def explain(
        self, text: str, settings: Settings = DEFAULT, scan_limit: int = 100
    ) -> Explanation:
        query = read_query(text)
        facts = await gather(
            query,
            settings=settings,
            bus=self.bus,
            state=self.state,
            feed=FeedState(self.redis),
            mati=self.mati,
            now=datetime.now(UTC),
            scan_limit=scan_limit,
        )
        return judge(
            query,
            facts,
            settings.filter_policy(),
            settings.stix_policy(),
            settings.validity_refresh_ratio,
        )


@asynccontextmanager
async def open_ctx(
    redis_client: Redis, server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> AsyncIterator[Ctx]:
    async with MatiSimulator(server_ssl, feed=FEED) as sim:
        session = open_session(client_ssl)
        client = MatiClient(
            session,
            base_url=sim.url,
            api_key=Secret(KEY),
            api_secret=Secret(SECRET),
            requests_per_second=50,
            max_attempts=2,
        )
        bus = RedisStreamsBus(redis_client, consumer="explain-test", lock_duration_s=30)
        await bus.ensure(subscription(DEST))
        try:
            yield Ctx(redis_client, bus, DestinationState(redis_client, DEST), client, sim)
        finally:
            await session.close()


def find(
    predicate: Callable[[Indicator, Any], bool], settings: Settings = DEFAULT
) -> tuple[dict[str, Any], Indicator]:
    """The first feed record whose parsed indicator and verdict under ``settings`` match."""
    policy = settings.filter_policy()
    for record in FEED.records(range(len(FEED))):
        indicator = parse_indicator(record)
        if isinstance(indicator, Indicator) and predicate(indicator, evaluate(indicator, policy)):
            return record, indicator
    raise AssertionError("no feed record fits")


def accepted_ipv4() -> tuple[dict[str, Any], str, str]:
    """A record the default filters accept: (record, STIX id, fingerprint)."""
    record, indicator = find(lambda i, v: i.type is IndicatorType.IPV4 and isinstance(v, tuple))
    verdict = evaluate(indicator, DEFAULT.filter_policy())
    assert isinstance(verdict, tuple)
    fp = fingerprint(content(verdict[0], DEFAULT.stix_policy()))
    return record, stix_id(indicator.id, None), fp


def upload(record: Mapping[str, Any], sid: str, fp: str) -> Message:
    """The upload message of ``record`` (``explain`` reads its ids and fingerprint only)."""
    ours = {"extension_type": "property-extension", "mati_id": record["id"]}
    body: dict[str, object] = {"id": sid, "extensions": {EXTENSION_ID: ours}}
    draft = Draft.known(body, fp, timedelta(days=7), None)
    request = UploadRequest(draft, ForwardReason.NEW, indicator_type=str(record["type"]))
    source = raw_message(record, run_id="r1").message_id
    return upload_message(request, run_id="r1", source_message_id=source)
