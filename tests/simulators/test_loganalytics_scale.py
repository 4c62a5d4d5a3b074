"""A workspace the size of the product's: 300 000 indicators, republished once (600 000 rows),
read back by the product's 16 partition queries through the real ``azure-monitor-query``
client. Every object comes back exactly once, and no partition reaches the API's limits."""

from __future__ import annotations

import contextlib
import gc
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from azure.monitor.query import LogsQueryResult
from azure.monitor.query.aio import LogsQueryClient

from simulators.loganalytics import MAX_BYTES, MAX_ROWS, LogAnalyticsSimulator
from tests.simulators.logs_client import (
    PREFIXES,
    count,
    indicator,
    partition_query,
    run,
)

OBJECTS = 300_000


def objects(ids: list[str]) -> Iterator[dict[str, Any]]:
    for number, stix_id in enumerate(ids):
        yield indicator(number, stix_id=stix_id, fingerprint=f"fp-{number}")


@pytest.mark.timeout(300)  # half a minute here; the default 60 s leaves no margin on a busy host
async def test_300k_indicators_come_back_once_each_in_16_partitions(
    logs: LogAnalyticsSimulator, client: LogsQueryClient
) -> None:
    ids = [f"indicator--{uuid.uuid4()}" for _ in range(OBJECTS)]
    sentinel = logs.sentinel
    assert sentinel.seed(objects(ids)) == OBJECTS
    assert sentinel.republish() == OBJECTS
    assert len(sentinel.rows) == 2 * OBJECTS
    assert (logs.max_rows, logs.max_bytes) == (MAX_ROWS, MAX_BYTES)  # the real limits
    with collector_ignoring_what_exists():
        seen = await read_every_partition(logs, client)
    assert seen == {stix_id: f"fp-{number}" for number, stix_id in enumerate(ids)}


@contextlib.contextmanager
def collector_ignoring_what_exists() -> Iterator[None]:
    """The 600 000 rows are millions of containers: without this every full collection the
    client's allocations set off would walk them all, for nothing (none is garbage yet)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


async def read_every_partition(
    logs: LogAnalyticsSimulator, client: LogsQueryClient
) -> dict[str, str]:
    """STIX id -> fingerprint, from the reader's 16 partition queries, checking each."""
    planned = await count(client, logs, partition_query(count=True))
    seen: dict[str, str] = {}
    for prefix in PREFIXES:
        result = await run(client, logs, partition_query(prefix))
        assert isinstance(result, LogsQueryResult), result.partial_error  # within the limits
        (table,) = result.tables
        stix_id, fingerprint = table.columns.index("StixId"), table.columns.index("Fingerprint")
        for row in table.rows:
            assert row[stix_id].startswith(prefix)
            assert row[stix_id] not in seen
            seen[row[stix_id]] = row[fingerprint]
    assert planned == len(seen) == OBJECTS
    return seen
