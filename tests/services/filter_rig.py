"""The filter's test rig, shared by the test_filter_*.py modules: a real Redis, the real
RedisStreamsBus and DestinationState, records from the simulators' feed adjusted to a case's
shape, the bus moves a test makes around the worker (publish, take, read the upload queue, sync
a batch through it), and what the worker should forward. The uploader's side (reading the upload
queue, committing seen entries) is played by the tests with the same adapters the uploader uses.
The ``rig`` fixture itself is in conftest.py."""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis

from services.filter.config import FilterConfig
from services.filter.worker import BatchOutcome, FilterWorker
from shared.adapters.destination_state import DestinationState
from shared.adapters.redis_streams import RedisStreamsBus
from shared.contract.bus import Delivery, Message
from shared.contract.messages import (
    INDICATORS,
    UploadRequest,
    raw_message,
    read_upload,
    revocation_queue,
    subscription,
    upload_queue,
)
from shared.core.filters import DropReason, FilterPolicy, evaluate
from shared.core.fingerprint import SeenEntry, fingerprint
from shared.core.indicator import HashType
from shared.core.parsing import Rejection, parse_indicator
from shared.core.stix import StixPolicy, content, stix_id
from simulators.feed import Feed
from tests.helpers import wait_for

DEST = "acme"
SOURCE = subscription(DEST)
QUEUE = upload_queue(DEST)
URGENT = revocation_queue(DEST)
FEED = Feed(seed=11, count=1200, days=10)
STIX = StixPolicy()


class Clock:
    """The worker's clock, set by the test (near the real time: seen keys expire by Redis's
    clock, at the valid_until the test commits)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Rig:
    redis: Redis
    bus: RedisStreamsBus
    state: DestinationState
    clock: Clock

    def undeduplicated_bus(self) -> RedisStreamsBus:
        """A bus without duplicate detection, for tests that jump the clock days ahead: the
        window runs on wall time, so a refresh "days later" would fall inside it, which in
        production (a 10-minute window, syncs hours apart) it does not."""
        return RedisStreamsBus(self.redis, consumer="filter-1", duplicate_window_s=0)

    def worker(self, bus: RedisStreamsBus | None = None, **options: Any) -> FilterWorker:
        config = FilterConfig(DEST, stix_policy=STIX, **options)
        return FilterWorker(
            config, bus=bus or self.bus, state=self.state, clock=self.clock, rng=random.Random(1)
        )


# --- records --------------------------------------------------------------------------------


def of_type(kind: str, nth: int = 0) -> dict[str, Any]:
    found = (FEED.record(i) for i in range(len(FEED)) if FEED.type_of(i) == kind)
    for _ in range(nth):
        next(found)
    return copy.deepcopy(next(found))


def passing(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` adjusted to pass the default filters: high scores, a non-OSINT categorized
    source."""
    record = copy.deepcopy(record)
    record["mscore"] = 95
    record["threat_rating"] = {**(record.get("threat_rating") or {}), "threat_score": 95}
    for source in record["sources"]:
        source["osint"] = False
        source["category"] = source.get("category") or ["malware"]
    return record


def again(record: dict[str, Any], minutes: int = 1) -> dict[str, Any]:
    """The same indicator as a later sync sees it: only ``last_updated`` moved (so the bus
    does not drop it as a duplicate of the earlier publish)."""
    record = copy.deepcopy(record)
    moved = datetime.fromisoformat(record["last_updated"]) + timedelta(minutes=minutes)
    record["last_updated"] = moved.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return record


# --- bus moves ------------------------------------------------------------------------------


async def publish(bus: RedisStreamsBus, *items: dict[str, Any] | object | Message) -> None:
    messages = [i if isinstance(i, Message) else raw_message(i, run_id="r1") for i in items]
    await bus.publish(INDICATORS, messages)


async def take(bus: RedisStreamsBus, source: Any, want: int) -> list[Delivery]:
    """Receive until ``want`` deliveries came (each receive blocks up to 0.2 s for more)."""
    got: list[Delivery] = []

    async def enough() -> bool:
        got.extend(await bus.receive(source, max_messages=1000, max_wait_s=0.2))
        return len(got) >= want

    await wait_for(enough, 10, what=f"{want} deliveries from {source}", interval=0)
    return got


async def uploads(bus: RedisStreamsBus) -> list[UploadRequest]:
    """Whatever the upload queue and its priority lane hold now (received and completed, as an
    uploader would); each request is in the queue its kind belongs to: revocations, and only
    they, in the lane."""
    requests: list[UploadRequest] = []
    for queue in (URGENT, QUEUE):
        got = await bus.receive(queue, max_messages=1000, max_wait_s=0.05)
        await bus.complete(queue, got)
        taken = [read_upload(d.body) for d in got]
        assert all(r.revoked == (queue == URGENT) for r in taken), f"misrouted in {queue}"
        requests += taken
    return requests


# --- what the worker should forward, and did ------------------------------------------------


def expected(
    record: dict[str, Any], hash_type: HashType | None = None, policy: FilterPolicy | None = None
) -> tuple[str, str]:
    """(stix id, fingerprint) the uploader should be handed for ``record``."""
    indicator = parse_indicator(record)
    assert not isinstance(indicator, Rejection)
    accepted = evaluate(indicator, policy or FilterPolicy())
    assert not isinstance(accepted, DropReason)
    (observable,) = [o for o in accepted if o.hash_type == hash_type]
    return stix_id(record["id"], hash_type), fingerprint(content(observable, STIX))


async def sync(
    rig: Rig, worker: FilterWorker, *records: object, bus: RedisStreamsBus | None = None
) -> BatchOutcome:
    """Publish ``records`` (on ``bus``, by default the rig's) and hand them to ``worker``."""
    bus = bus or rig.bus
    await publish(bus, *records)
    return await worker.handle(await take(bus, SOURCE, len(records)))


async def commit(rig: Rig, requests: Sequence[UploadRequest], valid_until: datetime) -> None:
    """What the uploader does once Sentinel accepted the records."""
    entries = [
        (r.stix_id, SeenEntry(r.fingerprint, valid_until, r.source_tag, r.revoked, r.generation))
        for r in requests
    ]
    await rig.state.commit(entries, now=rig.clock.now)


async def assert_settled(rig: Rig) -> None:
    counts = await rig.bus.counts(SOURCE)
    assert (counts.depth, counts.in_flight) == (0, 0)
