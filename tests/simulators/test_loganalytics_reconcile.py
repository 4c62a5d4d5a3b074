"""The Log Analytics simulator as ``reconcile`` reads it: the product's partition queries through
the real ``azure-monitor-query`` async client, over workspaces changed by Sentinel's hooks
(republish, delete, a drifted object), an ingestion delay, and the API's result limits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import aiohttp
import orjson
import pytest
from azure.monitor.query import LogsQueryPartialResult
from azure.monitor.query.aio import LogsQueryClient

from simulators.__main__ import build_parser
from simulators.loganalytics import LogAnalyticsSimulator
from tests.simulators.logs_client import (
    PREFIXES,
    count,
    indicator,
    partition_query,
    raw_rows,
    rows,
    run,
)


def stix_ids(found: list[dict[str, object]]) -> list[str]:
    return sorted(str(row["StixId"]) for row in found)


async def test_partitions_are_disjoint_and_cover_every_indicator(
    logs: LogAnalyticsSimulator, client: LogsQueryClient
) -> None:
    objects = [indicator(n) for n in range(64)]
    logs.sentinel.seed(objects)
    logs.sentinel.seed([indicator(999)], source="Another Vendor")  # not ours: in no partition
    logs.sentinel.overwrite(dict(objects[0], modified="2024-06-01T00:00:00Z"))  # two rows
    everything = sorted(o["id"] for o in objects)

    whole = await rows(client, logs, partition_query())
    assert stix_ids(whole) == everything
    assert await count(client, logs, partition_query(count=True)) == len(everything)
    seen: list[str] = []
    for prefix in PREFIXES:
        part = await rows(client, logs, partition_query(prefix))
        assert all(str(row["StixId"]).startswith(prefix) for row in part)
        assert await count(client, logs, partition_query(prefix, count=True)) == len(part)
        seen += stix_ids(part)
    assert sorted(seen) == everything  # each object in exactly one partition
    assert len(logs.recorder.of("query")) == 2 + 2 * len(PREFIXES)  # all through the client

    row = next(r for r in whole if r["StixId"] == objects[1]["id"])
    assert row == {
        "StixId": objects[1]["id"],
        "TimeGenerated": row["TimeGenerated"],
        "ValidUntil": datetime(2099, 1, 1, tzinfo=UTC),
        "Revoked": False,
        "IsDeleted": False,
        "IsActive": True,
        "Pattern": objects[1]["pattern"],
        "MatiId": "ipv4--00000001",
        "Fingerprint": "fp-1",
    }
    assert isinstance(row["TimeGenerated"], datetime)


async def test_startswith_ignores_case_and_has_a_negation(
    logs: LogAnalyticsSimulator, client: LogsQueryClient
) -> None:
    logs.sentinel.seed([indicator(n) for n in range(40)])
    lower = await rows(client, logs, partition_query("indicator--a"))
    assert stix_ids(await rows(client, logs, partition_query("INDICATOR--A"))) == stix_ids(lower)
    base = "ThreatIntelIndicators | extend StixId = tostring(Data.id) | where StixId "
    outside = await count(client, logs, base + '!startswith "indicator--a" | count')
    assert outside == 40 - len(lower)
    assert await count(client, logs, base + 'startswith "" | count') == 40


async def test_tags_is_a_string_holding_a_json_array(
    logs: LogAnalyticsSimulator, client: LogsQueryClient
) -> None:
    logs.sentinel.overwrite(indicator(1))
    result = await run(client, logs, "ThreatIntelIndicators | project Tags, Data")
    (table,) = result.tables  # type: ignore[union-attr]
    assert table.columns_types == ["string", "dynamic"]
    (row,) = table.rows
    assert isinstance(row["Tags"], str)
    assert orjson.loads(row["Tags"]) == ["apt:apt29", "malware:emotet"]
    kql = 'ThreatIntelIndicators | where Tags startswith "[\\"apt:" | count'
    assert await count(client, logs, kql) == 1


async def test_rows_show_up_only_after_the_ingestion_delay(
    logs: LogAnalyticsSimulator, client: LogsQueryClient
) -> None:
    logs.ingestion_delay = 300
    obj = indicator(1)
    logs.sentinel.overwrite(obj)
    ingested = datetime.fromisoformat(logs.sentinel.rows[-1]["TimeGenerated"])
    assert await rows(client, logs, partition_query()) == []
    assert await count(client, logs, "ThreatIntelIndicators | count") == 0

    logs.now = lambda: ingested + timedelta(seconds=299)
    assert await rows(client, logs, partition_query()) == []
    logs.now = lambda: ingested + timedelta(seconds=300)
    (row,) = await rows(client, logs, partition_query())
    assert row["StixId"] == obj["id"]
    assert row["TimeGenerated"] == ingested  # when Sentinel made the row, not when it showed

    logs.ingestion_delay = 0  # the default: everything at once
    logs.sentinel.overwrite(dict(obj, modified="2024-06-01T00:00:00Z"))
    assert await count(client, logs, "ThreatIntelIndicators | count") == 2


async def test_republish_adds_rows_yet_arg_max_keeps_one_per_object(
    logs: LogAnalyticsSimulator, client: LogsQueryClient
) -> None:
    sentinel = logs.sentinel
    live = [indicator(n) for n in range(3)]
    expired = indicator(9, valid_until="2024-06-01T00:00:00Z")
    revoked = indicator(8, revoked=True)
    sentinel.seed([*live, expired, revoked])
    week_later = datetime.now(UTC) + timedelta(days=7)
    assert sentinel.republish(now=week_later) == 4  # not the expired one; revoked ones too
    methods = [row["LastUpdateMethod"] for row in sentinel.rows]
    assert methods == ["UploadApi"] * 5 + ["LogARepublisher"] * 4
    assert await count(client, logs, "ThreatIntelIndicators | count") == 9

    by_id = {row["StixId"]: row for row in await rows(client, logs, partition_query())}
    assert sorted(by_id) == sorted(o["id"] for o in [*live, expired, revoked])
    for obj in [*live, revoked]:
        assert by_id[obj["id"]]["TimeGenerated"] == week_later
    assert by_id[expired["id"]]["TimeGenerated"] < week_later
    assert by_id[revoked["id"]]["Revoked"] is True
    assert by_id[revoked["id"]]["IsActive"] is False


async def test_a_delete_shows_as_a_deleted_latest_row(
    logs: LogAnalyticsSimulator, client: LogsQueryClient
) -> None:
    sentinel = logs.sentinel
    kept, gone = indicator(1), indicator(2)
    sentinel.seed([kept, gone])
    sentinel.delete(gone["id"])
    assert set(sentinel.store) == {kept["id"]}
    assert sentinel.rows[-1]["IsDeleted"] is True
    with pytest.raises(KeyError):
        sentinel.delete(gone["id"])
    assert sentinel.republish() == 1  # a deleted indicator is not republished

    by_id = {row["StixId"]: row for row in await rows(client, logs, partition_query())}
    assert (by_id[gone["id"]]["IsDeleted"], by_id[gone["id"]]["IsActive"]) == (True, False)
    assert (by_id[kept["id"]]["IsDeleted"], by_id[kept["id"]]["IsActive"]) == (False, True)


async def test_overwrite_changes_what_arg_max_returns(
    logs: LogAnalyticsSimulator, client: LogsQueryClient
) -> None:
    sentinel = logs.sentinel
    obj = indicator(1)
    sentinel.seed([obj])
    (before,) = await rows(client, logs, partition_query())
    stale = indicator(1, stix_id=obj["id"], fingerprint="fp-2", valid_until="2030-01-01T00:00:00Z")
    sentinel.overwrite(stale)
    (after,) = await rows(client, logs, partition_query())
    assert (before["ValidUntil"], before["Fingerprint"]) == (
        datetime(2099, 1, 1, tzinfo=UTC),
        "fp-1",
    )
    assert (after["ValidUntil"], after["Fingerprint"]) == (datetime(2030, 1, 1, tzinfo=UTC), "fp-2")
    assert sentinel.store[obj["id"]] == stale
    assert (sentinel.uploads_for(obj["id"]), len(sentinel.rows)) == (2, 2)
    # The source an id was stored under stays its source unless another is named.
    other = indicator(2)
    sentinel.seed([other], source="Another Vendor")
    sentinel.overwrite(dict(other, modified="2024-06-01T00:00:00Z"))
    assert sentinel.rows[-1]["SourceSystem"] == "Another Vendor"


def limit_details(result: object) -> list[str]:
    assert isinstance(result, LogsQueryPartialResult), result
    error = result.partial_error
    assert error is not None
    assert error.code == "PartialError"
    return [detail["innererror"]["message"] for detail in error.details or []]


ORDERED = partition_query() + "\n| order by StixId asc"


async def test_the_row_limit_cuts_the_result_and_says_so(
    logs: LogAnalyticsSimulator, client: LogsQueryClient
) -> None:
    logs.sentinel.seed([indicator(n) for n in range(5)])
    everything = await rows(client, logs, ORDERED)
    logs.max_rows = 3
    result = await run(client, logs, ORDERED)
    assert limit_details(result) == [
        "Query result set has exceeded the internal record count limit 3 records"
    ]
    (table,) = result.partial_data  # type: ignore[union-attr]
    kept = [dict(zip(table.columns, row, strict=True)) for row in table.rows]
    assert kept == everything[:3]
    logs.max_rows = 5  # exactly at the limit is whole
    assert await rows(client, logs, ORDERED) == everything


async def test_the_size_limit_cuts_the_result_and_says_so(
    logs: LogAnalyticsSimulator, client: LogsQueryClient, session: aiohttp.ClientSession
) -> None:
    logs.sentinel.seed([indicator(n) for n in range(5)])
    rendered = await raw_rows(session, logs, ORDERED)
    logs.max_bytes = len(orjson.dumps(rendered[:2])) + len(orjson.dumps(rendered[2])) // 2
    result = await run(client, logs, ORDERED)
    assert limit_details(result) == [
        f"Query result set has exceeded the internal data size limit {logs.max_bytes} bytes"
    ]
    (table,) = result.partial_data  # type: ignore[union-attr]
    assert [row["StixId"] for row in table.rows] == [row[0] for row in rendered[:2]]

    logs.max_bytes = len(orjson.dumps(rendered))  # exactly at the limit is whole
    assert len(await rows(client, logs, ORDERED)) == 5
    logs.max_rows, logs.max_bytes = 4, len(orjson.dumps(rendered[:1]))  # both at once
    details = limit_details(await run(client, logs, ORDERED))
    assert [message.split(" limit ")[0] for message in details] == [
        "Query result set has exceeded the internal record count",
        "Query result set has exceeded the internal data size",
    ]


async def test_defaults_are_the_real_apis_and_the_delay_is_a_flag(
    logs: LogAnalyticsSimulator,
) -> None:
    assert (logs.max_rows, logs.max_bytes, logs.ingestion_delay) == (500_000, 67_108_864, 0)
    assert build_parser().parse_args(["--ingestion-delay", "90"]).ingestion_delay == 90
    assert build_parser().parse_args([]).ingestion_delay == 0
