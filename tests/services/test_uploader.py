"""The uploader against real parts: a real Redis (bus and state), the Entra ID and Sentinel
simulators over TLS, and azure-identity fetching tokens through ``credential_factory``.

Upload messages are built the way the filter builds them (feed record → ``parse_indicator`` →
``evaluate`` → STIX draft: id, content, fingerprint; in-flight claim). Windows, locks and
back-offs are short real durations so the file stays fast; nothing asserts how long anything
took, except lower bounds the design itself imposes (a 429's wait).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis

from services.cli.redis_server import LocalRedis
from services.cli.status import collect, render
from services.runtime import Runtime
from services.uploader.config import UploaderConfig
from services.uploader.main import loop
from services.uploader.request import Uploads
from services.uploader.worker import Uploader
from shared.adapters.credentials import TokenProvider, credential_factory
from shared.adapters.destination_state import CircuitState, DestinationState
from shared.adapters.http import open_session
from shared.adapters.rate_budget import RateBudget
from shared.adapters.redis_streams import RedisStreamsBus
from shared.adapters.sentinel_client import SentinelClient, UploadResult
from shared.contract.bus import Message
from shared.contract.messages import UploadRequest, raw_message, upload_message, upload_queue
from shared.core.backoff import Backoff
from shared.core.filters import FilterPolicy, Observable, evaluate
from shared.core.fingerprint import ForwardReason, SeenEntry
from shared.core.parsing import Rejection, parse_indicator, parse_timestamp
from shared.core.secrets import Secret
from shared.core.settings import Service, load_settings
from shared.core.stix import Draft, StixPolicy, pattern
from simulators.entra import EntraSimulator
from simulators.faults import SCHEMA_CHANGED, FaultKind
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
V1_REFUSED = "upload message has no STIX object (upload.indicator/1, queued by an older filter)"
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
        counts = await self.bus.counts(QUEUE)
        return counts.depth == 0 and counts.in_flight == 0

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
        w = World(entra, sentinel, session, redis, redis_server, bus, DestinationState(redis, DEST))
        try:
            yield w
        finally:
            for provider in w.providers:
                await provider.aclose()


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


WorldFactory = Callable[..., contextlib.AbstractAsyncContextManager[World]]


@pytest.fixture
def make_world(
    server_ssl: ssl.SSLContext,
    client_ssl: ssl.SSLContext,
    redis_client: Redis,
    redis_server: LocalRedis,
) -> WorldFactory:
    """``world`` on this test's TLS and Redis, for the tests that need a shorter timeout or a
    smaller Sentinel quota than the ``w`` fixture's."""
    return functools.partial(world, server_ssl, client_ssl, redis_client, redis_server)


@pytest.fixture
async def w(make_world: WorldFactory) -> AsyncIterator[World]:
    async with make_world() as made:
        yield made


# ---- success ---------------------------------------------------------------------------------


async def test_every_record_is_uploaded_once_then_committed_and_completed(
    w: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    items = await w.forward(range(12))

    await run_until([w.uploader()], w.drained)

    assert_stored_once(w, items)
    await assert_committed(w, items)
    counters = await w.state.counters()
    assert counters["uploaded"] == 12
    assert counters["requests"] == 1
    assert (await w.bus.counts(QUEUE)).dead_letter == 0
    requests = [r for r in caplog.records if r.getMessage() == "upload.request"]
    assert [r.m2s_fields["accepted"] for r in requests] == [12]  # type: ignore[attr-defined]
    for token in (t.access_token for t in w.entra.tokens_issued):
        assert token not in caplog.text
        assert all(token not in str(r.__dict__) for r in caplog.records)


# ---- per-record and per-batch refusals --------------------------------------------------------


async def test_records_sentinel_rejects_are_dead_lettered_with_its_message(w: World) -> None:
    items = await w.forward(range(5))
    w.sentinel.faults.inject(FaultKind.PARTIAL_ERRORS, route=STIX_ROUTE, record_indexes=(1, 3))

    await run_until([w.uploader()], w.drained)

    rejected, accepted = [items[1], items[3]], [items[0], items[2], items[4]]
    letters = await w.bus.dead_letters(QUEUE)
    assert sorted(d.message_id for d in letters) == sorted(q.message.message_id for q in rejected)
    for letter in letters:
        assert letter.reason == "rejected_by_sentinel"
        assert "could not be ingested" in letter.description
    assert_stored_once(w, accepted)
    await assert_committed(w, accepted)
    rejected_ids = [q.stix_id for q in rejected]
    assert await w.state.seen(rejected_ids) == [None, None]
    assert await w.state.claims(rejected_ids) == [None, None]  # released: may be re-queued
    counters = await w.state.counters()
    assert (counters["uploaded"], counters["rejected"], counters["dead_lettered"]) == (3, 2, 2)


async def test_a_400_naming_no_record_is_split_until_the_refused_record_stands_alone(
    w: World,
) -> None:
    """A 400 that does not say which record is at fault (REJECT_ALL answers one, without
    ``errors[]``) is halved: [a b c d] → 400, [a b] ok, [c d] → 400, [c] ok, [d] → 400, and
    [d] is dead-lettered alone with Sentinel's message. ``after`` places the faults; a skipped
    request passes every later fault's ``after`` too."""
    items = await w.forward(range(4))
    faults = w.sentinel.faults
    refused = "Error for Property=pattern: The pattern could not be parsed."
    faults.inject(FaultKind.REJECT_ALL, route=STIX_ROUTE, message=refused)
    faults.inject(FaultKind.REJECT_ALL, route=STIX_ROUTE, message=refused, after=1)
    faults.inject(FaultKind.REJECT_ALL, route=STIX_ROUTE, message=refused, after=2)

    await run_until([w.uploader()], w.drained)

    assert w.statuses() == [400, 200, 400, 200, 400]
    assert_stored_once(w, items[:3])
    await assert_committed(w, items[:3])
    [letter] = await w.bus.dead_letters(QUEUE)
    assert letter.message_id == items[3].message.message_id
    assert letter.reason == "rejected_by_sentinel"
    assert letter.description == f"InvalidStixObjects: {refused}"
    counters = await w.state.counters()
    assert (counters["split"], counters["requests"], counters["uploaded"]) == (2, 5, 3)
    assert "systemic_rejection" not in counters
    assert (await w.state.circuit())[0] is CircuitState.CLOSED


async def test_a_400_naming_records_dead_letters_exactly_those_and_resends_the_rest(
    w: World,
) -> None:
    """No split: the answer says which records are at fault, each with its own message."""
    items = await w.forward(range(5))
    w.sentinel.faults.inject(FaultKind.REJECT_RECORDS, route=STIX_ROUTE, record_indexes=(1, 3))

    await run_until([w.uploader()], w.drained)

    assert w.statuses() == [400, 200]
    rejected, accepted = [items[1], items[3]], [items[0], items[2], items[4]]
    assert_stored_once(w, accepted)
    await assert_committed(w, accepted)
    letters = {d.message_id: d for d in await w.bus.dead_letters(QUEUE)}
    assert set(letters) == {q.message.message_id for q in rejected}
    for q in rejected:
        letter = letters[q.message.message_id]
        assert letter.reason == "rejected_by_sentinel"
        assert letter.description == (
            "Error for Property=pattern: The pattern could not be parsed. "
            f"Actual value: {pattern(q.observable)}."
        )
    assert await w.state.claims([q.stix_id for q in rejected]) == [None, None]
    counters = await w.state.counters()
    assert (counters["requests"], counters["rejected"], counters["uploaded"]) == (2, 2, 3)
    assert "split" not in counters


async def test_records_refused_each_for_its_own_reason_are_dead_lettered_without_a_split(
    w: World,
) -> None:
    """Every record fails (Sentinel's transient ingestion failure, each message naming its
    record): the simulator answers 400 with ``errors[]``. One request, four dead letters,
    each with its own message; a batch of one likewise gets its record's message, not the
    request's "None of the 1 objects ...". No circuit: the causes are the records'."""
    four = await w.forward(range(4))
    w.sentinel.faults.inject(
        FaultKind.PARTIAL_ERRORS, route=STIX_ROUTE, record_indexes=(0, 1, 2, 3)
    )
    await run_until([w.uploader()], w.drained)
    [lone] = await w.forward([4])
    w.sentinel.faults.inject(FaultKind.PARTIAL_ERRORS, route=STIX_ROUTE, record_indexes=(0,))
    await run_until([w.uploader()], w.drained)

    assert w.statuses() == [400, 400]
    assert w.sentinel.store == {}
    letters = {d.message_id: d.description for d in await w.bus.dead_letters(QUEUE)}
    assert set(letters) == {q.message.message_id for q in [*four, lone]}
    for q in [*four, lone]:
        assert letters[q.message.message_id] == (
            "Error for Property=id: The object could not be ingested, please retry later. "
            f"Actual value: {q.stix_id}."
        )
    counters = await w.state.counters()
    assert (counters["requests"], counters["rejected"], counters["dead_lettered"]) == (2, 5, 5)
    assert "split" not in counters
    assert "systemic_rejection" not in counters
    assert (await w.state.circuit())[0] is CircuitState.CLOSED


# ---- systemic refusals: a cause no record owns -------------------------------------------------


async def test_a_refusal_both_halves_share_opens_the_circuit_and_holds_the_batch(
    w: World,
) -> None:
    """A schema change on Sentinel's side refuses every request alike, naming no record.
    [8] → 400, [4] → 400, [4] → 400 with the same message: systemic. The circuit opens with
    Sentinel's message, the batch is held (its probes, refused again, are not split), the
    rest stays queued, nothing is dead-lettered; once Sentinel accepts again the probe closes
    the circuit and every record arrives once."""
    items = await w.forward(range(12))
    w.sentinel.faults.inject(FaultKind.REJECT_ALL, route=STIX_ROUTE, times=10_000)
    stop = asyncio.Event()
    task = asyncio.create_task(w.uploader(batch_size=8).run(stop))
    try:

        async def probed_twice() -> bool:
            return len(w.statuses()) >= 5

        await wait_for(probed_twice, 15)
        state, reason, _ = await w.state.circuit()
        assert state is CircuitState.OPEN
        assert reason == SYSTEMIC
        counts = await w.bus.counts(QUEUE)
        assert (counts.depth, counts.in_flight, counts.dead_letter) == (4, 8, 0)
        assert set(w.statuses()) == {400}
        sizes = [len(r.json()["stixobjects"]) for r in w.sentinel.recorder.of(STIX_ROUTE)]
        assert sizes[:3] == [8, 4, 4]
        assert set(sizes[3:]) == {8}  # each probe is the held batch, whole: never split again
        assert w.sentinel.store == {}

        w.sentinel.faults.clear()  # Sentinel's side is fixed
        await wait_for(w.drained, 15)
    finally:
        stop.set()
        await task

    await assert_recovered_once(w, items)
    counters = await w.state.counters()
    assert counters["split"] == 1
    assert counters["systemic_rejection"] >= 2
    assert "rejected" not in counters
    assert "dead_lettered" not in counters
    assert (await w.bus.counts(QUEUE)).dead_letter == 0


async def test_every_record_named_with_one_message_opens_the_circuit_without_a_split(
    w: World,
) -> None:
    items = await w.forward(range(6))
    w.sentinel.faults.inject(FaultKind.REJECT_ALL, route=STIX_ROUTE, attributed=True, times=2)

    await run_until([w.uploader()], w.drained)

    assert w.statuses() == [400, 400, 200]  # refused, probe refused again, probe accepted
    await assert_recovered_once(w, items)
    counters = await w.state.counters()
    assert counters["systemic_rejection"] == 2
    assert "split" not in counters
    assert "dead_lettered" not in counters


async def test_batches_refused_entirely_in_a_row_open_the_circuit(w: World) -> None:
    """Batches of one, refused naming no record: each alone could be its record's fault, so
    the first is dead-lettered with Sentinel's message; the second in a row is judged
    systemic (``systemic_after=2``) and held, and the rest waits for the probe."""
    items = await w.forward(range(5))
    w.sentinel.faults.inject(FaultKind.REJECT_ALL, route=STIX_ROUTE, times=3)

    await run_until([w.uploader(batch_size=1, systemic_after=2)], w.drained)

    assert w.statuses() == [400, 400, 400, 200, 200, 200, 200]
    [letter] = await w.bus.dead_letters(QUEUE)
    assert letter.message_id == items[0].message.message_id
    assert letter.description == f"InvalidStixObjects: {SCHEMA_CHANGED}"
    await assert_recovered_once(w, items[1:])
    counters = await w.state.counters()
    assert (counters["systemic_rejection"], counters["dead_lettered"]) == (2, 1)


async def test_replicas_share_a_systemic_circuit_and_dead_letter_nothing(w: World) -> None:
    """Whichever replica finds the cause first opens the circuit in Redis; a batch of the
    other refused for that same cause is held at once (not split), and so is every probe."""
    items = await w.forward(range(16))
    w.sentinel.faults.inject(FaultKind.REJECT_ALL, route=STIX_ROUTE, times=10_000)
    other: Redis = Redis.from_url(w.redis_server.url)
    stop = asyncio.Event()
    replicas = [
        w.uploader(redis=client, consumer=name, batch_size=4)
        for client, name in ((w.redis, "replica-a"), (other, "replica-b"))
    ]
    tasks = [asyncio.create_task(r.run(stop)) for r in replicas]
    try:

        async def both_held() -> bool:
            counts = await w.bus.counts(QUEUE)
            return counts.in_flight == 8 and len(w.statuses()) >= 8

        await wait_for(both_held, 15)
        assert (await w.state.circuit())[0] is CircuitState.OPEN
        counts = await w.bus.counts(QUEUE)
        assert (counts.depth, counts.dead_letter) == (8, 0)
        assert (await w.state.counters())["split"] <= 2  # at most one split per replica
        w.sentinel.faults.clear()
        await wait_for(w.drained, 15)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await other.aclose()

    assert (await w.state.circuit())[0] is CircuitState.CLOSED
    assert_stored_once(w, items)
    await assert_committed(w, items)
    assert (await w.bus.counts(QUEUE)).dead_letter == 0


# ---- waiting: 429, outages --------------------------------------------------------------------


async def test_429_pauses_every_replica_then_the_same_batch_arrives(w: World) -> None:
    items = await w.forward(range(3))
    w.sentinel.faults.inject(FaultKind.RATE_LIMIT, route=STIX_ROUTE, retry_after_s=1)
    budget = RateBudget(w.redis, DEST, limit=100, window_s=WINDOW_S)
    paused: list[float] = []

    async def watch() -> bool:
        paused.append(await budget.paused_for())
        return await w.drained()

    await run_until([w.uploader(budget=budget)], watch)

    assert max(paused) > 0  # the pause lived in Redis, where every replica reads it
    assert w.statuses() == [429, 200]
    first, second = w.sentinel.request_log
    assert second.at - first.at >= 0.9  # lower bound: Retry-After was honoured
    assert_stored_once(w, items)
    counters = await w.state.counters()
    assert (counters["throttled"], counters["throttle_wait_seconds"]) == (1, 1)


async def test_5xx_timeouts_and_resets_are_retried_until_everything_arrives(
    make_world: WorldFactory,
) -> None:
    async with make_world(timeout_s=0.5) as w:
        items = await w.forward(range(6))
        faults = w.sentinel.faults
        faults.inject(FaultKind.SERVER_ERROR, route=STIX_ROUTE, status=503)
        faults.inject(FaultKind.TIMEOUT, route=STIX_ROUTE, delay_s=1.0)
        faults.inject(FaultKind.RESET, route=STIX_ROUTE)
        faults.inject(FaultKind.EMPTY_500, route=STIX_ROUTE)

        await run_until([w.uploader()], w.drained)

        assert_stored_once(w, items)
        await assert_committed(w, items)
        counters = await w.state.counters()
        assert (counters["retried"], counters["uploaded"]) == (4, 6)
        assert (await w.bus.counts(QUEUE)).dead_letter == 0


async def test_two_replicas_share_one_budget_and_lose_nothing(make_world: WorldFactory) -> None:
    async with make_world(requests_per_window=10) as w:
        items = await w.forward(range(20))
        other: Redis = Redis.from_url(w.redis_server.url)
        try:
            replicas = [
                w.uploader(
                    budget=RateBudget(client, DEST, limit=10, window_s=WINDOW_S),
                    redis=client,
                    consumer=name,
                    batch_size=1,
                )
                for client, name in ((w.redis, "replica-a"), (other, "replica-b"))
            ]
            await run_until(replicas, w.drained)
        finally:
            await other.aclose()

        assert w.sentinel.max_requests_in_any_window() <= 10
        assert set(w.statuses()) == {200}
        assert_stored_once(w, items)
        await assert_committed(w, items)
        assert (await w.state.counters())["uploaded"] == 20


async def test_lanes_overlap_requests_and_settle_each_batch_on_its_own(w: World) -> None:
    """No simulator fault holds a request until another one has arrived, so a thin wrapper
    around the real client holds the first request until a second is out: only an uploader
    with a second lane ever sends it (one lane would time out here). The requests are real."""
    items = await w.forward(range(6))
    second_out = asyncio.Event()
    calls = 0

    class HoldFirst:
        def __init__(self, real: SentinelClient) -> None:
            self.real = real

        async def upload(self, objects: Sequence[Mapping[str, Any]]) -> UploadResult:
            nonlocal calls
            calls += 1
            if calls == 1:
                await asyncio.wait_for(second_out.wait(), timeout=10)
            else:
                second_out.set()
            return await self.real.upload(objects)

    await run_until([w.uploader(wrap=HoldFirst, lanes=2, batch_size=3)], w.drained)

    assert_stored_once(w, items)
    await assert_committed(w, items)
    counters = await w.state.counters()
    assert (counters["requests"], counters["uploaded"]) == (2, 6)


async def test_the_seen_entry_keeps_the_source_tag_the_message_carried(w: World) -> None:
    """The filter recognises a record it already judged by the tag stored with the entry."""
    q = queued(0)
    tagged = replace(q.request, source_tag=bytes(range(1, 9)))
    assert await w.state.claim([(q.stix_id, q.request.fingerprint)], ttl_s=600) == [True]
    await w.bus.publish(QUEUE, [upload_message(tagged, run_id="r", source_message_id="raw-0")])

    await run_until([w.uploader()], w.drained)

    [entry] = await w.state.seen([q.stix_id])
    assert entry is not None
    assert (entry.fingerprint, entry.source) == (q.request.fingerprint, tagged.source_tag)


# ---- credentials and the circuit ----------------------------------------------------------------


async def test_an_expired_token_is_refreshed_and_the_batch_arrives(w: World) -> None:
    items = await w.forward(range(3))
    w.sentinel.faults.inject(FaultKind.EXPIRED_TOKEN, route=STIX_ROUTE)

    await run_until([w.uploader()], w.drained)

    assert w.statuses() == [401, 200]
    assert len(w.entra.tokens_issued) == 2
    assert_stored_once(w, items)
    assert (await w.state.circuit())[0] is CircuitState.CLOSED


async def test_refused_credentials_open_the_circuit_until_they_are_fixed(w: World) -> None:
    items = await w.forward(range(4))
    w.entra.add_client(CLIENT_ID, "a-rotated-secret-the-uploader-lacks")
    stop = asyncio.Event()
    task = asyncio.create_task(w.uploader().run(stop))
    try:

        async def opened() -> bool:
            return (await w.state.circuit())[0] is CircuitState.OPEN

        await wait_for(opened, 15)
        reason = (await w.state.circuit())[1]
        assert "AuthenticationFailed" in reason
        counts = await w.bus.counts(QUEUE)
        assert (counts.in_flight, counts.dead_letter) == (4, 0)  # held, not burnt
        assert w.sentinel.store == {}

        w.entra.add_client(CLIENT_ID, CLIENT_SECRET)  # the operator fixes the secret
        await wait_for(w.drained, 15)
    finally:
        stop.set()
        await task

    await assert_recovered_once(w, items)


# ---- skips and bad input ----------------------------------------------------------------------


async def assert_recovered_once(w: World, items: list[Queued]) -> None:
    """After an open circuit closed again: every item stored and committed once, the
    circuit opened once, and nothing abandoned (held messages are not burnt)."""
    assert (await w.state.circuit())[0] is CircuitState.CLOSED
    assert_stored_once(w, items)
    await assert_committed(w, items)
    counters = await w.state.counters()
    assert counters["circuit_opened"] == 1
    assert "abandoned" not in counters


async def test_with_lanes_an_open_circuit_is_probed_and_closed_once(w: World) -> None:
    items = await w.forward(range(6))
    w.entra.add_client(CLIENT_ID, "a-rotated-secret-the-uploader-lacks")
    stop = asyncio.Event()
    task = asyncio.create_task(w.uploader(lanes=3, batch_size=2).run(stop))
    try:

        async def opened() -> bool:
            return (await w.state.circuit())[0] is CircuitState.OPEN

        await wait_for(opened, 15)
        assert (await w.bus.counts(QUEUE)).dead_letter == 0
        assert w.sentinel.store == {}
        w.entra.add_client(CLIENT_ID, CLIENT_SECRET)
        await wait_for(w.drained, 15)
    finally:
        stop.set()
        await task

    await assert_recovered_once(w, items)


async def test_superseded_uploaded_and_bad_messages_never_reach_sentinel(w: World) -> None:
    superseded, uploaded, fresh = await w.forward([0, 1, 2])
    # A newer version of record 0 was queued since: its claim holds another fingerprint.
    await w.state.claim([(superseded.stix_id, "f" * 32)], ttl_s=600)
    # Record 1 went up before a crash kept its message from being completed.
    now = datetime.now(UTC)
    valid_until = now + POLICY.expiration_for(uploaded.observable)
    await w.state.commit(
        [(uploaded.stix_id, SeenEntry(uploaded.request.fingerprint, valid_until))], now=now
    )
    # The first schema carried the raw record for the uploader to map: refused by name.
    first_schema = {"record": {"id": "ipv4--1"}, "stix_id": fresh.stix_id, "fingerprint": "0" * 32}
    await w.bus.publish(
        QUEUE,
        [
            Message(body=b"not json", message_id="junk-1"),
            Message(body=orjson.dumps({**first_schema, "reason": "new"}), message_id="v1-1"),
        ],
    )

    batch = await w.bus.receive(QUEUE, max_messages=100, max_wait_s=1.0)
    assert len(batch) == 5
    await w.uploader().process(batch)

    assert list(w.sentinel.store) == [fresh.stix_id]
    assert await w.drained()
    dead = sorted((d.reason, d.description) for d in await w.bus.dead_letters(QUEUE))
    assert dead == [
        ("malformed_message", V1_REFUSED),
        ("malformed_message", "upload message is not JSON"),
    ]
    counters = await w.state.counters()
    assert counters["superseded"] == counters["already_uploaded"] == counters["uploaded"] == 1
    assert counters["requests"] == 1
    assert counters["dead_lettered_malformed_message"] == counters["dead_lettered"] == 2


# ---- stopping ---------------------------------------------------------------------------------


async def test_a_stop_while_waiting_for_the_budget_gives_the_batch_back(w: World) -> None:
    await w.forward(range(3))
    budget = RateBudget(w.redis, DEST, limit=1, window_s=30.0)
    assert await budget.acquire() == 0.0  # the only slot of the window is taken
    naps: list[float] = []

    async def sleep(seconds: float) -> None:
        naps.append(seconds)
        await asyncio.sleep(seconds)

    stop = asyncio.Event()
    task = asyncio.create_task(w.uploader(budget=budget, sleep=sleep).run(stop))

    async def waiting_for_budget() -> bool:
        return bool(naps)  # the only wait on this path is the budget's

    await wait_for(waiting_for_budget, 15)
    assert (await w.bus.counts(QUEUE)).in_flight == 3
    stop.set()
    await task

    assert w.sentinel.request_log == []
    assert (await w.state.counters())["abandoned"] == 3
    other = RedisStreamsBus(w.redis, consumer="someone-else", lock_duration_s=LOCK_S)
    back = await other.receive(QUEUE, max_messages=10, max_wait_s=1.0)
    assert [d.delivery_count for d in back] == [2, 2, 2]


async def test_a_request_in_flight_when_stop_comes_is_settled(w: World) -> None:
    """No simulator fault answers *successfully* but late, so a thin wrapper around the real
    client holds the request until the test has set stop; the request itself is real."""
    items = await w.forward(range(3))
    sent, go = asyncio.Event(), asyncio.Event()

    class Late:
        def __init__(self, real: SentinelClient) -> None:
            self.real = real

        async def upload(self, objects: Sequence[Mapping[str, Any]]) -> UploadResult:
            sent.set()
            await go.wait()
            return await self.real.upload(objects)

    stop = asyncio.Event()
    task = asyncio.create_task(w.uploader(wrap=Late).run(stop))
    await asyncio.wait_for(sent.wait(), timeout=10)
    stop.set()
    go.set()
    await task

    assert await w.drained()
    assert_stored_once(w, items)
    await assert_committed(w, items)


@contextlib.asynccontextmanager
async def running_service(w: World) -> AsyncIterator[Runtime]:
    """The uploader service's loop as ``main`` runs it, on settings loaded from the environment
    it would be given; stopped (and awaited) on leaving."""
    environ = {
        "REDIS_URL": w.redis_server.url,
        "DESTINATION": DEST,
        "AZURE_AUTHORITY_HOST": w.entra.url,
        "AZURE_TENANT_ID": TENANT,
        "AZURE_CLIENT_ID": CLIENT_ID,
        "AZURE_CLIENT_SECRET": CLIENT_SECRET,
        "AZURE_WORKSPACE_ID": WORKSPACE,
        "SENTINEL_BASE_URL": w.sentinel.url,
        "SENTINEL_RATE_WINDOW_SECONDS": "2",
        "UPLOAD_LINGER_SECONDS": "0.05",
    }
    runtime = Runtime(
        settings=load_settings(environ, Service.UPLOADER),
        service=Service.UPLOADER,
        consumer="uploader-main",
        redis=w.redis,
        bus=RedisStreamsBus(w.redis, consumer="uploader-main", lock_duration_s=LOCK_S),
        stop=asyncio.Event(),
        http=w.session,
    )
    task = asyncio.create_task(loop(runtime))
    try:
        yield runtime
    finally:
        runtime.stop.set()
        await task


def test_the_config_takes_the_settings_once_and_checks_what_the_code_chooses() -> None:
    environ = {
        "DESTINATION": DEST,
        "AZURE_TENANT_ID": TENANT,
        "AZURE_CLIENT_ID": CLIENT_ID,
        "AZURE_CLIENT_SECRET": CLIENT_SECRET,
        "AZURE_WORKSPACE_ID": WORKSPACE,
        "VALIDITY_REFRESH_RATIO": "0.25",
        "UPLOAD_LINGER_SECONDS": "0.5",
        "BUS_LOCK_DURATION_SECONDS": "30",
        "DRAIN_TIMEOUT_SECONDS": "10",
        "ENABLE_DEDUPLICATION": "false",
    }
    config = UploaderConfig.from_settings(load_settings(environ, Service.UPLOADER), lanes=2)

    assert config == UploaderConfig(
        destination=DEST,
        refresh_ratio=0.25,
        linger_s=0.5,
        lock_duration_s=30.0,
        drain_timeout_s=10.0,
        skip_uploaded=False,
        lanes=2,
    )
    assert config.slice_s == 10.0
    for bad in ({"batch_size": 0}, {"batch_size": 101}, {"lanes": 0}, {"systemic_after": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            replace(config, **bad)


async def test_the_service_loop_wires_settings_to_a_working_uploader(w: World) -> None:
    items = await w.forward(range(5))
    async with running_service(w):
        await wait_for(w.drained, 15)

    assert_stored_once(w, items)
    await assert_committed(w, items)


async def test_a_systemic_refusal_shows_in_readiness_and_status_until_a_probe_is_accepted(
    w: World,
) -> None:
    """The service as it runs (settings, the readiness check, the default probe back-off of
    5 s): while Sentinel refuses everything for one reason, /readyz says why and so does
    ``mati2sentinel status``; the probe after the fault is gone closes the circuit."""
    items = await w.forward(range(5))
    w.sentinel.faults.inject(FaultKind.REJECT_ALL, route=STIX_ROUTE, times=3)
    async with running_service(w) as runtime:

        async def opened() -> bool:
            return (await w.state.circuit())[0] is CircuitState.OPEN

        await wait_for(opened, 15)
        why = SYSTEMIC
        assert (await runtime.health.ready())["circuit"] == f"not_ready: circuit open: {why}"
        shown = await collect(runtime)
        assert (shown.circuit, shown.circuit_reason) == ("open", why)
        assert f"circuit      open ({why})" in render(shown)
        upload = next(e for e in shown.entities if e.entity == QUEUE.name)
        assert (upload.in_flight, upload.dead_letter) == (5, 0)

        # The fault was for three requests: the first probe is accepted.
        await wait_for(w.drained, 15)
        assert (await runtime.health.ready())["circuit"] == "ok"

    assert w.statuses() == [400, 400, 400, 200]
    await assert_recovered_once(w, items)
