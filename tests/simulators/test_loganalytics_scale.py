"""A large workspace, republished once, read back by the product's 16 partition queries through
the real ``azure-monitor-query`` client: every object comes back exactly once, no partition
reaches the limits, and the whole workspace in one query does.

A fifth of the product's scale, with the API's limits cut tenfold (50 000 rows, 6.4 MiB) so
that they bind on the whole workspace and not on a partition: the same shape of test in a fifth
of the time. ``tests/clients/test_workspace_reader.py`` reads 300 000 through the product's
reader against the real limits."""

from __future__ import annotations

import contextlib
import gc
import uuid
from collections.abc import Iterator
from typing import Any

from azure.monitor.query import LogsQueryPartialResult, LogsQueryResult
from azure.monitor.query.aio import LogsQueryClient

from simulators.loganalytics import MAX_BYTES, MAX_ROWS, LogAnalyticsSimulator
from tests.simulators.logs_client import (
    PREFIXES,
    count,
    indicator,
    partition_query,
    run,
)

OBJECTS = 60_000
#: How much the API's limits are cut (module docstring).
CUT = 10


def objects(ids: list[str]) -> Iterator[dict[str, Any]]:
    for number, stix_id in enumerate(ids):
        yield indicator(number, stix_id=stix_id, fingerprint=f"fp-{number}")


async def test_a_large_workspace_comes_back_once_each_in_16_partitions(
    logs: LogAnalyticsSimulator, client: LogsQueryClient
) -> None:
    ids = [f"indicator--{uuid.uuid4()}" for _ in range(OBJECTS)]
    sentinel = logs.sentinel
    assert sentinel.seed(objects(ids)) == OBJECTS
    assert sentinel.republish() == OBJECTS
    assert len(sentinel.rows) == 2 * OBJECTS
    logs.max_rows, logs.max_bytes = MAX_ROWS // CUT, MAX_BYTES // CUT
    with collector_ignoring_what_exists():
        whole = await run(client, logs, partition_query())
        assert isinstance(whole, LogsQueryPartialResult), "one query cannot hold it all"
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
