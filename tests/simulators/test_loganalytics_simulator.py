"""The Log Analytics simulator: the reconciliation queries the product issues, over real TLS,
against rows the Sentinel simulator ingested through its own upload route.

The query subset is small on purpose; these tests also prove that anything outside it is
refused loudly (400) rather than answered wrongly.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest

from simulators.faults import FaultKind
from simulators.loganalytics import LogAnalyticsSimulator
from simulators.sentinel import SentinelSimulator
from simulators.tokens import TokenMinter

CLIENT = "11111111-1111-1111-1111-111111111111"
TENANT = "00000000-0000-0000-0000-0000000000aa"
SOURCE = "Mandiant Threat Intelligence"
DEDUP_QUERY = f"""ThreatIntelIndicators
| where SourceSystem == "{SOURCE}"
| extend StixId = tostring(Data.id)
| summarize arg_max(TimeGenerated, *) by Id
| where IsDeleted == false
| project StixId, Modified, ValidUntil, IsActive, Revoked, ObservableKey, ObservableValue"""


def mint(minter: TokenMinter, audience: str = "https://api.loganalytics.io") -> str:
    return minter.mint_access_token(
        audience=audience, client_id=CLIENT, tenant_id=TENANT, issuer="https://login.example/"
    )


def indicator(stix_id: str, value: str, **overrides: Any) -> dict[str, Any]:
    obj = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": stix_id,
        "created": "2024-05-01T10:00:00Z",
        "modified": "2024-05-01T10:00:00Z",
        "pattern": f"[domain-name:value = '{value}']",
        "pattern_type": "stix",
        "valid_from": "2024-05-01T10:00:00Z",
        "valid_until": "2099-01-01T00:00:00Z",
        "labels": ["apt:apt29"],
    }
    obj.update(overrides)
    return obj


async def ingest(
    session: aiohttp.ClientSession, sentinel: SentinelSimulator, objects: list[dict[str, Any]]
) -> None:
    """Through the upload route, so the rows are exactly what an upload produces."""
    token = mint(sentinel.minter, "https://management.azure.com")
    url = (
        f"{sentinel.url}/workspaces/{sentinel.workspace_id}/threat-intelligence-stix-objects:upload"
    )
    async with session.post(
        url,
        params={"api-version": "2024-02-01-preview"},
        json={"sourcesystem": SOURCE, "stixobjects": objects},
        headers={"Authorization": f"Bearer {token}"},
    ) as resp:
        assert resp.status == 200, await resp.text()


async def query(
    session: aiohttp.ClientSession,
    logs: LogAnalyticsSimulator,
    kql: str,
    *,
    timespan: str | None = None,
    token: str | None = None,
    workspace: str | None = None,
) -> tuple[int, Any]:
    headers = {}
    if token is None:  # a valid one; "" sends none
        token = mint(logs.minter)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    ws = workspace or logs.sentinel.workspace_id
    # What azure-monitor-query sends when no timespan or extra workspaces are given.
    body = {"query": kql, "timespan": timespan, "workspaces": None}
    async with session.post(
        f"{logs.url}/v1/workspaces/{ws}/query", data=orjson.dumps(body), headers=headers
    ) as resp:
        return resp.status, orjson.loads(await resp.read())


def records(reply: Any) -> list[dict[str, Any]]:
    (table,) = reply["tables"]
    assert table["name"] == "PrimaryResult"
    names = [c["name"] for c in table["columns"]]
    return [dict(zip(names, row, strict=True)) for row in table["rows"]]


@dataclass(frozen=True)
class Indexed:
    """Two indicators ingested, the first then revoked (three rows), and what the tests that
    read them query through."""

    session: aiohttp.ClientSession
    logs: LogAnalyticsSimulator
    first: str
    second: str

    async def query(self, kql: str, **options: Any) -> tuple[int, Any]:
        return await query(self.session, self.logs, kql, **options)


@pytest.fixture
async def indexed(
    session: aiohttp.ClientSession, sentinel: SentinelSimulator, logs: LogAnalyticsSimulator
) -> Indexed:
    first, second = f"indicator--{uuid.uuid4()}", f"indicator--{uuid.uuid4()}"
    await ingest(session, sentinel, [indicator(first, "a.example"), indicator(second, "b.example")])
    revoked = indicator(first, "a.example", modified="2024-06-01T00:00:00Z", revoked=True)
    await ingest(session, sentinel, [revoked])
    return Indexed(session, logs, first, second)


async def test_dedup_query_returns_the_latest_row_per_indicator(indexed: Indexed) -> None:
    first, second = indexed.first, indexed.second
    assert len(indexed.logs.sentinel.rows) == 3
    status, reply = await indexed.query(DEDUP_QUERY)
    assert status == 200, reply
    assert [c["name"] for c in reply["tables"][0]["columns"]] == [
        "StixId",
        "Modified",
        "ValidUntil",
        "IsActive",
        "Revoked",
        "ObservableKey",
        "ObservableValue",
    ]
    by_id = {r["StixId"]: r for r in records(reply)}
    assert set(by_id) == {first, second}
    assert by_id[first]["Revoked"] is True
    assert by_id[first]["IsActive"] is False
    assert by_id[first]["Modified"] == "2024-06-01T00:00:00.000000Z"
    assert by_id[second]["ObservableValue"] == "b.example"
    assert by_id[second]["ObservableKey"] == "domain-name:value"


async def test_simple_operators(indexed: Indexed) -> None:
    first, second = indexed.first, indexed.second
    cases = {
        "ThreatIntelIndicators | count": [{"Count": 3}],
        "ThreatIntelIndicators | where Revoked == true | count": [{"Count": 1}],
        'ThreatIntelIndicators | where ObservableValue != "a.example" | count': [{"Count": 1}],
        'ThreatIntelIndicators | where ObservableValue in ("a.example", "z") | count': [
            {"Count": 2}
        ],
        "ThreatIntelIndicators | where Modified > datetime(2024-05-15) | count": [{"Count": 1}],
        "ThreatIntelIndicators | where IsActive and isnotempty(ValidUntil) | count": [{"Count": 2}],
        "ThreatIntelIndicators | take 1 | count": [{"Count": 1}],
        "ThreatIntelIndicators | extend StixId = tostring(Data.id) "
        "| order by ObservableValue desc, TimeGenerated asc | project StixId": [
            {"StixId": second},
            {"StixId": first},
            {"StixId": first},
        ],
    }
    for kql, expected in cases.items():
        status, reply = await indexed.query(kql)
        assert status == 200, (kql, reply)
        assert records(reply) == expected, kql


async def test_dynamic_columns_and_tags_come_back_as_json_text(indexed: Indexed) -> None:
    status, reply = await indexed.query("ThreatIntelIndicators | take 1 | project Data, Tags")
    assert status == 200
    (row,) = records(reply)
    assert orjson.loads(row["Tags"]) == ["apt:apt29"]
    assert orjson.loads(row["Data"])["id"] == indexed.first
    types = {c["name"]: c["type"] for c in reply["tables"][0]["columns"]}
    assert types == {"Data": "dynamic", "Tags": "string"}  # Tags: the text of a JSON array


async def test_timespan_bounds_time_generated(indexed: Indexed) -> None:
    old = datetime.now(UTC) - timedelta(days=10)
    indexed.logs.sentinel.rows[0]["TimeGenerated"] = old.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    for timespan, count in [(None, 3), ("P8D", 2), ("P11D", 3), ("PT1H", 2)]:
        status, reply = await indexed.query("ThreatIntelIndicators | count", timespan=timespan)
        assert (status, records(reply)) == (200, [{"Count": count}]), timespan
    start = (old - timedelta(hours=1)).isoformat()
    status, reply = await indexed.query("ThreatIntelIndicators | count", timespan=f"{start}/PT2H")
    assert records(reply) == [{"Count": 1}]


async def test_get_with_query_parameter(indexed: Indexed) -> None:
    url = f"{indexed.logs.url}/v1/workspaces/{indexed.logs.sentinel.workspace_id}/query"
    headers = {"Authorization": f"Bearer {mint(indexed.logs.minter)}"}
    async with indexed.session.get(
        url, params={"query": "ThreatIntelIndicators | count"}, headers=headers
    ) as resp:
        assert resp.status == 200
        assert records(await resp.json()) == [{"Count": 3}]


@pytest.mark.parametrize(
    "kql",
    [
        "ThreatIntelligenceIndicator | count",
        "ThreatIntelIndicators | join (ThreatIntelObjects) on Id",
        'ThreatIntelIndicators | where ObservableValue contains "a"',
        'ThreatIntelIndicators | where Nope == "a"',
        'ThreatIntelIndicators | where SourceSystem == "a" or Revoked',
        "ThreatIntelIndicators | project Nope",
        "ThreatIntelIndicators | summarize count() by Id",
        "ThreatIntelIndicators | extend X = toupper(Pattern)",
        "ThreatIntelIndicators | take many",
        "ThreatIntelIndicators | where Revoked == ",
        'ThreatIntelIndicators | where SourceSystem == "unterminated',
        'ThreatIntelIndicators | where IsActive startswith "t"',
        "ThreatIntelIndicators | where Pattern !startswith 1",
        'ThreatIntelIndicators | where Pattern startswith "\\d"',
    ],
)
async def test_unsupported_queries_are_400(
    session: aiohttp.ClientSession, logs: LogAnalyticsSimulator, kql: str
) -> None:
    status, reply = await query(session, logs, kql)
    assert status == 400
    assert reply["error"]["code"] == "BadArgumentError"
    assert reply["error"]["innererror"]["message"]


@pytest.mark.parametrize("timespan", ["8 days", "P", "2024-01-01/nonsense"])
async def test_bad_timespan_is_400(
    session: aiohttp.ClientSession, logs: LogAnalyticsSimulator, timespan: str
) -> None:
    status, reply = await query(session, logs, "ThreatIntelIndicators | count", timespan=timespan)
    assert (status, reply["error"]["code"]) == (400, "BadArgumentError")


async def test_audience_and_workspace_are_checked(
    session: aiohttp.ClientSession, logs: LogAnalyticsSimulator
) -> None:
    kql = "ThreatIntelIndicators | count"
    status, reply = await query(session, logs, kql, token="")
    assert (status, reply["error"]["code"]) == (401, "AuthorizationRequiredError")
    management = mint(logs.minter, "https://management.azure.com")
    status, reply = await query(session, logs, kql, token=management)
    assert (status, reply["error"]["code"]) == (401, "InvalidTokenError")
    slash = mint(logs.minter, "https://api.loganalytics.io/")
    assert (await query(session, logs, kql, token=slash))[0] == 200
    status, reply = await query(session, logs, kql, workspace=str(uuid.uuid4()))
    assert (status, reply["error"]["code"]) == (404, "WorkspaceNotFoundError")


async def test_faults_on_the_query_route(
    session: aiohttp.ClientSession, logs: LogAnalyticsSimulator
) -> None:
    kql = "ThreatIntelIndicators | count"
    logs.faults.inject(FaultKind.SERVER_ERROR, route="query", status=503)
    assert (await query(session, logs, kql))[0] == 503
    logs.faults.inject(FaultKind.EXPIRED_TOKEN, route="query")
    token = mint(logs.minter)
    assert (await query(session, logs, kql, token=token))[0] == 401
    assert (await query(session, logs, kql, token=token))[0] == 401
    assert (await query(session, logs, kql))[0] == 200


async def raw_query(
    session: aiohttp.ClientSession, logs: LogAnalyticsSimulator, kql: str
) -> tuple[int, str, dict[str, str], bytes]:
    body = {"query": kql, "timespan": None, "workspaces": None}
    headers = {"Authorization": f"Bearer {mint(logs.minter)}"}
    url = f"{logs.url}/v1/workspaces/{logs.sentinel.workspace_id}/query"
    async with session.post(url, data=orjson.dumps(body), headers=headers) as resp:
        return resp.status, resp.content_type, dict(resp.headers), await resp.read()


async def test_a_partial_failure_adds_an_error_beside_the_tables(indexed: Indexed) -> None:
    kql = "ThreatIntelIndicators | project Id, TimeGenerated | order by TimeGenerated asc"
    status, full = await indexed.query(kql)
    assert status == 200
    assert "error" not in full
    indexed.logs.faults.inject(FaultKind.PARTIAL_ERRORS, route="query", record_indexes=(1,))
    status, partial = await indexed.query(kql)
    assert status == 200  # a partial failure is still a 200: only "error" tells it apart
    assert partial["error"]["code"] == "PartialError"
    (detail,) = partial["error"]["details"]
    assert detail["innererror"]["message"].startswith("Query result set has exceeded")
    everything = records(full)
    assert records(partial) == everything[:1] + everything[2:]  # the lost row is simply absent
    assert "error" not in (await indexed.query(kql))[1]  # one query per fault


async def test_throttling_answers_in_the_apis_error_envelope(
    session: aiohttp.ClientSession, logs: LogAnalyticsSimulator
) -> None:
    logs.faults.inject(FaultKind.RATE_LIMIT, route="query", retry_after_s=30)
    status, content_type, headers, body = await raw_query(session, logs, "ThreatIntelIndicators")
    assert (status, content_type, headers["Retry-After"]) == (429, "application/json", "30")
    error = orjson.loads(body)["error"]
    assert error["code"] == "ThrottledError"
    assert {"message", "correlationId"} <= error.keys()


@pytest.mark.parametrize(
    ("status", "code"),
    [(500, "InternalServerError"), (503, "ServiceUnavailableError"), (504, "GatewayTimeout")],
)
async def test_an_outage_answers_in_the_apis_error_envelope(
    session: aiohttp.ClientSession, logs: LogAnalyticsSimulator, status: int, code: str
) -> None:
    logs.faults.inject(FaultKind.SERVER_ERROR, route="query", status=status)
    got, content_type, _, body = await raw_query(session, logs, "ThreatIntelIndicators")
    assert (got, content_type) == (status, "application/json")
    assert orjson.loads(body)["error"]["code"] == code


async def test_transport_faults_and_bodies_on_the_query_route(
    session: aiohttp.ClientSession, logs: LogAnalyticsSimulator
) -> None:
    kql = "ThreatIntelIndicators | count"
    logs.faults.inject(FaultKind.EMPTY_500, route="query")
    logs.faults.inject(FaultKind.MALFORMED_JSON, route="query")
    logs.faults.inject(FaultKind.TIMEOUT, route="query", delay_s=0.05)
    assert (await raw_query(session, logs, kql))[::3] == (500, b"")
    status, content_type, _, body = await raw_query(session, logs, kql)
    assert (status, content_type) == (200, "application/json")
    assert body.startswith(b'{"tables": [{"name": "PrimaryResult"')  # the API's own shape, cut
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(body)
    assert (await raw_query(session, logs, kql))[0] == 504
    logs.faults.inject(FaultKind.RESET, route="query")
    with pytest.raises(aiohttp.ClientConnectionError):  # a POST: aiohttp never re-sends it
        await raw_query(session, logs, kql)
    assert [r.fault for r in logs.recorder.of("query")] == [
        FaultKind.EMPTY_500,
        FaultKind.MALFORMED_JSON,
        FaultKind.TIMEOUT,
        FaultKind.RESET,
    ]
