"""A record no message can carry (nested deeper than orjson writes, or larger than
``MAX_RECORD_BYTES``) costs that record alone: the fetcher publishes a stand-in naming it and
why, logs it, and moves the checkpoint past its page, on Redis Streams and on Service Bus
(whose SDK refuses a message past the namespace's size with a ValueError, outside the error
tree). Before, the deep record refused its whole page on every sync (the checkpoint stayed
before it: the feed was blocked for good) and a record of megabytes crashed Service Bus's
publish. The filter's side (the stand-in dead-lettered with its reason) is in
tests/clients/test_edge_input_pipeline.py; the stand-in itself in tests/unit/test_record_bounds.py.

The fault's page (three records, the middle one broken) is stamped with the real time, so the
fetcher's clock is put just after it: the page is then inside the window and may move the
checkpoint."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Final, cast

import orjson
import pytest
from redis.asyncio import Redis

from services.fetcher.sync import Outcome
from shared.contract.bus import Bus, Delivery
from shared.contract.messages import REFUSED_PROPERTY, subscription
from shared.core.record_bounds import MAX_RECORD_BYTES, STAND_IN_KEY
from simulators.faults import FaultKind
from tests.bus.contract_rig import BusSettings
from tests.bus.test_servicebus import ProvisionedBus
from tests.servicebus_peer import FakeServiceBus
from tests.services.fetcher_rig import DEST, World, newest, world

pytestmark = pytest.mark.timeout(60)

#: The ids of the fault's page, in order; the middle one is the broken record.
PAGE: Final = [f"url--00000000-0000-5000-8000-{n:012d}" for n in (0, 999_999_999_999, 1)]
ODD_ONE: Final = PAGE[1]


def after_the_fault_page(w: World) -> None:
    """Put the fetcher's clock after the fault page's stamps (the real time of its answer)."""
    w.clock.now = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=1)


def stand_in_of(deliveries: list[Delivery]) -> dict[str, Any]:
    """The one stand-in among ``deliveries``, checked to be the odd record's and marked."""
    assert [d.properties["indicator_id"] for d in deliveries] == PAGE
    (marked,) = [d for d in deliveries if REFUSED_PROPERTY in d.properties]
    assert marked.properties["indicator_id"] == ODD_ONE
    assert len(marked.body) < 1024
    body: dict[str, Any] = orjson.loads(marked.body)
    assert body["id"] == ODD_ONE
    assert body[STAND_IN_KEY]["reason"] == marked.properties[REFUSED_PROPERTY]
    return body


@pytest.mark.parametrize(
    ("kind", "options", "reason"),
    [
        pytest.param(FaultKind.DEEP_JSON, {"depth": 300}, "too_deep", id="too_deep"),
        # Just past the bound: the record is the value and a few hundred bytes around it.
        pytest.param(
            FaultKind.HUGE_VALUE, {"size_bytes": MAX_RECORD_BYTES}, "too_large", id="large"
        ),
    ],
)
async def test_the_page_of_a_record_no_message_can_carry_is_published_and_checkpointed(
    server_ssl: Any,
    client_ssl: Any,
    redis_client: Redis,
    kind: FaultKind,
    options: dict[str, Any],
    reason: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with world(server_ssl, client_ssl, redis_client) as w:
        w.mati.faults.inject(kind, route="indicator", **options)
        after_the_fault_page(w)
        summary = await w.sync()
        published = await w.drain()

        assert summary.outcome is Outcome.COMPLETED, summary.error
        assert (summary.fetched, summary.published) == (3, 3)
        assert stand_in_of(published)[STAND_IN_KEY]["reason"] == reason
        assert await w.checkpoint() == newest(published)
        assert (await w.state.counters())["published"] == 3
    (warning,) = [r for r in caplog.records if r.getMessage() == "fetch.record_refused"]
    assert warning.levelno == logging.WARNING
    assert warning.m2s_fields == {  # type: ignore[attr-defined]
        "page": 0,
        "indicator_id": ODD_ONE,
        "reason": reason,
    }


async def test_a_record_just_within_the_bound_is_published_whole(
    server_ssl: Any, client_ssl: Any, redis_client: Redis
) -> None:
    """The bound is the record's own size, not its value's: a value of 150 KiB still travels
    (the filter refuses it as a value too long, a ``bad_field``), byte for byte."""
    async with world(server_ssl, client_ssl, redis_client) as w:
        w.mati.faults.inject(FaultKind.HUGE_VALUE, route="indicator", size_bytes=150 * 1024)
        after_the_fault_page(w)
        summary = await w.sync()
        published = await w.drain()

    assert summary.outcome is Outcome.COMPLETED
    assert not [d for d in published if REFUSED_PROPERTY in d.properties]
    (odd,) = [d for d in published if d.properties["indicator_id"] == ODD_ONE]
    assert len(orjson.loads(odd.body)["value"]) == 150 * 1024


# ---- on Service Bus ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def namespace() -> Iterator[FakeServiceBus]:
    with FakeServiceBus() as fake:
        yield fake
        assert fake.failure is None, f"the fake Service Bus failed: {fake.failure!r}"


@pytest.fixture
async def service_bus(namespace: FakeServiceBus) -> AsyncIterator[ProvisionedBus]:
    bus = ProvisionedBus(namespace, BusSettings(), consumer="fetcher")
    yield bus
    async with asyncio.timeout(20):
        await bus.aclose()


async def drain(bus: Bus) -> list[Delivery]:
    """Everything the destination's subscription holds, completed; Service Bus delivers it in
    a few batches, so this reads until one comes back empty."""
    source = subscription(DEST)
    out: list[Delivery] = []
    while batch := await bus.receive(source, max_messages=100, max_wait_s=1.0):
        out += batch
        await bus.complete(source, batch)
    return out


async def test_a_record_of_megabytes_reaches_service_bus_as_its_stand_in(
    server_ssl: Any, client_ssl: Any, redis_client: Redis, service_bus: ProvisionedBus
) -> None:
    """4 MiB: past any namespace's message size (the fake's SDK allows 1 MiB, Standard 256 KB)."""
    async with world(server_ssl, client_ssl, redis_client) as w:
        w.mati.faults.inject(FaultKind.HUGE_VALUE, route="indicator")
        after_the_fault_page(w)
        async with asyncio.timeout(30):
            summary = await w.sync(w.fetcher(bus=cast(Bus, service_bus)))
            published = await drain(service_bus)

        assert summary.outcome is Outcome.COMPLETED, summary.error
        assert stand_in_of(published)[STAND_IN_KEY]["reason"] == "too_large"
        assert await w.checkpoint() == newest(published)
