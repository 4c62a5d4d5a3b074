"""The uploader's test rig, shared by the test_uploader_*.py modules: real parts to run an
uploader against — a real Redis (bus and state), the Entra ID and Sentinel simulators over TLS,
and azure-identity fetching tokens through ``credential_factory``.

Upload messages are built the way the filter builds them (feed record → ``parse_indicator`` →
``evaluate`` → STIX draft: id, content, fingerprint; in-flight claim). Windows, locks and
back-offs are short real durations so the tests stay fast; nothing asserts how long anything
took, except lower bounds the design itself imposes (a 429's wait). The ``make_world`` and
``w`` fixtures themselves are in conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
from redis.asyncio import Redis

from services.cli.redis_server import LocalRedis
from services.uploader.config import UploaderConfig
from services.uploader.request import Uploads
from services.uploader.worker import Uploader
from shared.adapters.credentials import TokenProvider, credential_factory
from shared.adapters.destination_state import CircuitState, DestinationState
from shared.adapters.http import open_session
from shared.adapters.rate_budget import RateBudget
from shared.adapters.redis_streams import RedisStreamsBus
from shared.adapters.sentinel_client import SentinelClient
from shared.contract.bus import Message
from shared.contract.messages import (
    UploadRequest,
    raw_message,
    revocation_queue,
    upload_message,
    upload_queue,
)
from shared.core.backoff import Backoff
from shared.core.filters import FilterPolicy, Observable, evaluate
from shared.core.fingerprint import ForwardReason
from shared.core.parsing import Rejection, parse_indicator, parse_timestamp
from shared.core.secrets import Secret
from shared.core.stix import Draft, StixPolicy, pattern
from simulators.entra import EntraSimulator
from simulators.faults import SCHEMA_CHANGED
from simulators.feed import Feed
from simulators.sentinel import STIX_ROUTE, SentinelSimulator
from simulators.tokens import TokenMinter
from tests.helpers import wait_for

TENANT = "00000000-0000-4000-8000-0000000000aa"
CLIENT_ID = "00000000-0000-4000-8000-0000000000c1"
CLIENT_SECRET = "sim-client-secret-0123456789"
WORKSPACE = "00000000-0000-4000-8000-0000000000b0"
DEST = "soc-a"
QUEUE = upload_queue(DEST)
URGENT = revocation_queue(DEST)
LOCK_S = 3.0
WINDOW_S = 2.0
POLICY = StixPolicy()
#: Everything the feed holds passes, so the tests choose exactly which records are queued.
FILTERS = FilterPolicy(minimum_confidence=0, minimum_threat_score=0, exclude_osint=False)
FEED = Feed(seed=11, count=40, now=datetime(2025, 5, 1, tzinfo=UTC))
#: Short real durations, so the file stays fast; a test changes what it is about.
CONFIG = UploaderConfig(
    destination=DEST,
    linger_s=0.05,
    lock_duration_s=LOCK_S,
    receive_wait_s=0.1,
    drain_timeout_s=5.0,
    retry=Backoff(base_s=0.05, cap_s=0.2),
    probe=Backoff(base_s=0.1, cap_s=0.4),
)
#: The circuit's reason (what readiness and ``status`` show) while Sentinel refuses everything
#: for the REJECT_ALL fault's default cause.
SYSTEMIC = (
    "SystemicRejection: Sentinel refuses every record (HTTP 400): "
    f"InvalidStixObjects: {SCHEMA_CHANGED}"
)


@dataclass(frozen=True)
class Queued:
    """One upload message as the filter queued it."""

    request: UploadRequest
    observable: Observable
    message: Message

    @property
    def stix_id(self) -> str:
        return self.request.stix_id


def queued(index: int) -> Queued:
    """Feed record ``index`` forwarded exactly as the filter would forward it."""
    record = FEED.record(index)
    indicator = parse_indicator(record)
    assert not isinstance(indicator, Rejection)
    observables = evaluate(indicator, FILTERS)
    assert isinstance(observables, tuple)
    observable = observables[0]
    request = UploadRequest(
        Draft.of(observable, POLICY), ForwardReason.NEW, indicator_type=indicator.type.value
    )
    raw = raw_message(record, run_id="run-1")
    message = upload_message(request, run_id="run-1", source_message_id=raw.message_id)
    return Queued(request, observable, message)


@dataclass
class World:
    entra: EntraSimulator
    sentinel: SentinelSimulator
    session: aiohttp.ClientSession
    redis: Redis
    redis_server: LocalRedis
    bus: RedisStreamsBus
    state: DestinationState
    providers: list[TokenProvider] = field(default_factory=list)

    async def forward(self, indexes: range | list[int]) -> list[Queued]:
        """Claim and queue these feed records (the filter's half of the contract)."""
        items = [queued(i) for i in indexes]
        claims = await self.state.claim(
            [(q.stix_id, q.request.fingerprint) for q in items], ttl_s=600
        )
        assert all(claims)
        await self.bus.publish(QUEUE, [q.message for q in items])
        return items

    def uploader(
        self,
        *,
        redis: Redis | None = None,
        consumer: str = "uploader-1",
        budget: RateBudget | None = None,
        wrap: Callable[[SentinelClient], Uploads] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        **options: Any,
    ) -> Uploader:
        """An uploader of ``DEST``; ``options`` change ``CONFIG``."""
        client = redis or self.redis
        bus = (
            self.bus
            if redis is None
            else RedisStreamsBus(client, consumer=consumer, lock_duration_s=LOCK_S)
        )
        factory = credential_factory(
            session=self.session,
            tenant_id=TENANT,
            client_id=CLIENT_ID,
            authority_host=self.entra.url,
            client_secret=Secret(CLIENT_SECRET),
        )
        tokens = TokenProvider(factory, redact=(Secret(CLIENT_SECRET),))
        self.providers.append(tokens)
        sentinel = SentinelClient(
            self.session, tokens, base_url=self.sentinel.url, workspace_id=WORKSPACE
        )
        return Uploader(
            bus=bus,
            state=DestinationState(client, DEST),
            budget=budget or RateBudget(client, DEST, limit=100, window_s=WINDOW_S),
            client=wrap(sentinel) if wrap else sentinel,
            config=replace(CONFIG, **options),
            sleep=sleep,
        )

    async def drained(self) -> bool:
        """Nothing waiting or held in the upload queue or its priority lane."""
        for queue in (QUEUE, URGENT):
            counts = await self.bus.counts(queue)
            if counts.depth or counts.in_flight:
                return False
        return True

    def statuses(self) -> list[int | None]:
        return [r.status for r in self.sentinel.recorder.of(STIX_ROUTE)]


@contextlib.asynccontextmanager
async def world(
    server_ssl: ssl.SSLContext,
    client_ssl: ssl.SSLContext,
    redis: Redis,
    redis_server: LocalRedis,
    *,
    timeout_s: float = 10.0,
    requests_per_window: int = 100,
) -> AsyncIterator[World]:
    minter = TokenMinter()
    async with (
        EntraSimulator(server_ssl, minter=minter, tenant_id=TENANT) as entra,
        SentinelSimulator(
            server_ssl,
            minter=minter,
            workspace_id=WORKSPACE,
            requests_per_minute=requests_per_window,
            window_s=WINDOW_S,
        ) as sentinel,
        open_session(client_ssl, timeout_s=timeout_s) as session,
    ):
        entra.add_client(CLIENT_ID, CLIENT_SECRET)
        bus = RedisStreamsBus(redis, consumer="uploader-1", lock_duration_s=LOCK_S)
        await bus.ensure(QUEUE)
        await bus.ensure(URGENT)
        w = World(entra, sentinel, session, redis, redis_server, bus, DestinationState(redis, DEST))
        try:
            yield w
        finally:
            for provider in w.providers:
                await provider.aclose()


WorldFactory = Callable[..., contextlib.AbstractAsyncContextManager[World]]


async def run_until(
    uploaders: list[Uploader], condition: Callable[[], Awaitable[bool]], timeout_s: float = 15.0
) -> None:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(u.run(stop)) for u in uploaders]
    try:
        await wait_for(condition, timeout_s)
    finally:
        stop.set()
        await asyncio.gather(*tasks)


def assert_stored_once(w: World, items: list[Queued]) -> None:
    for q in items:
        obj = w.sentinel.store[q.stix_id]
        assert w.sentinel.uploads_for(q.stix_id) == 1
        assert obj["pattern"] == pattern(q.observable)


async def assert_committed(w: World, items: list[Queued]) -> None:
    ids = [q.stix_id for q in items]
    for q, entry in zip(items, await w.state.seen(ids), strict=True):
        assert entry is not None
        assert entry.fingerprint == q.request.fingerprint
        assert entry.valid_until == parse_timestamp(w.sentinel.store[q.stix_id]["valid_until"])
    assert await w.state.claims(ids) == [None] * len(ids)


async def assert_recovered_once(w: World, items: list[Queued]) -> None:
    """After an open circuit closed again: every item stored and committed once, the
    circuit opened once, and nothing abandoned (held messages are not burnt)."""
    assert (await w.state.circuit())[0] is CircuitState.CLOSED
    assert_stored_once(w, items)
    await assert_committed(w, items)
    counters = await w.state.counters()
    assert counters["circuit_opened"] == 1
    assert "abandoned" not in counters
