"""What the Log Analytics simulator tests share: the product's reconciliation queries, STIX
indicators shaped like the product's, and the real ``azure-monitor-query`` async client with an
Entra-simulator token over TLS that trusts the simulators' CA."""

from __future__ import annotations

import contextlib
import ssl
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from azure.core.pipeline.transport import AioHttpTransport
from azure.identity.aio import ClientSecretCredential
from azure.monitor.query import LogsQueryPartialResult, LogsQueryResult
from azure.monitor.query.aio import LogsQueryClient

from simulators.entra import EntraSimulator
from simulators.loganalytics import LogAnalyticsSimulator

SOURCE = "Mandiant Threat Intelligence"
CLIENT = "11111111-1111-1111-1111-111111111111"
TENANT = "00000000-0000-0000-0000-0000000000aa"
EXTENSION = "extension-definition--8b329901-f0cd-573b-8581-99c3f0668664"
_EXT = f'Data.extensions["{EXTENSION}"]'


def partition_query(prefix: str | None = None, *, count: bool = False) -> str:
    """The reader's query for the indicators whose STIX id starts with ``prefix`` (every one
    when ``None``: a single partition), or, with ``count``, how many there are."""
    stages = [
        "ThreatIntelIndicators",
        f'| where SourceSystem == "{SOURCE}"',
        "| extend StixId = tostring(Data.id)",
        *([f'| where StixId startswith "{prefix}"'] if prefix is not None else []),
        "| summarize arg_max(TimeGenerated, *) by Id",
    ]
    if count:
        stages.append("| count")
    else:
        stages += [
            f"| extend MatiId = tostring({_EXT}.mati_id), "
            f"Fingerprint = tostring({_EXT}.fingerprint)",
            "| project StixId, TimeGenerated, ValidUntil, Revoked, IsDeleted, IsActive, Pattern, "
            "MatiId, Fingerprint",
        ]
    return "\n".join(stages)


#: One partition per hex digit after ``indicator--`` (STIX ids are lowercase UUIDs).
PREFIXES = tuple(f"indicator--{digit:x}" for digit in range(16))


def indicator(
    number: int, *, stix_id: str | None = None, fingerprint: str = "fp-1", **overrides: Any
) -> dict[str, Any]:
    """An indicator as the product uploads it, its MATI id and fingerprint in the extension."""
    obj: dict[str, Any] = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": stix_id or f"indicator--{uuid.uuid4()}",
        "created": "2024-05-01T10:00:00Z",
        "modified": "2024-05-01T10:00:00Z",
        "pattern": f"[ipv4-addr:value = '10.{number >> 16 & 255}.{number >> 8 & 255}."
        f"{number & 255}']",
        "pattern_type": "stix",
        "valid_from": "2024-05-01T10:00:00Z",
        "valid_until": "2099-01-01T00:00:00Z",
        "labels": ["apt:apt29", "malware:emotet"],
        "extensions": {
            EXTENSION: {
                "extension_type": "property-extension",
                "mati_id": f"ipv4--{number:08d}",
                "fingerprint": fingerprint,
            }
        },
    }
    obj.update(overrides)
    return obj


@contextlib.asynccontextmanager
async def logs_client(
    server_ssl: ssl.SSLContext, session: aiohttp.ClientSession, logs: LogAnalyticsSimulator
) -> AsyncIterator[LogsQueryClient]:
    """``LogsQueryClient`` as the product builds it, against ``logs``, its token from an Entra
    simulator sharing ``logs``' minter."""
    async with EntraSimulator(server_ssl, minter=logs.minter, tenant_id=TENANT) as entra:
        entra.add_client(CLIENT, "secret")
        credential = ClientSecretCredential(
            TENANT,
            CLIENT,
            "secret",
            authority=entra.url,
            transport=AioHttpTransport(session=session, session_owner=False),
        )
        client = LogsQueryClient(
            credential,
            endpoint=logs.url,
            audience="https://api.loganalytics.io",
            transport=AioHttpTransport(session=session, session_owner=False),
        )
        async with credential, client:
            yield client


async def run(
    client: LogsQueryClient, logs: LogAnalyticsSimulator, kql: str
) -> LogsQueryResult | LogsQueryPartialResult:
    return await client.query_workspace(logs.sentinel.workspace_id, kql, timespan=None)


async def rows(
    client: LogsQueryClient, logs: LogAnalyticsSimulator, kql: str
) -> list[dict[str, Any]]:
    """The whole answer's rows as dicts; a partial answer fails the test."""
    result = await run(client, logs, kql)
    assert isinstance(result, LogsQueryResult), getattr(result, "partial_error", result)
    (table,) = result.tables
    return [dict(zip(table.columns, row, strict=True)) for row in table.rows]


async def count(client: LogsQueryClient, logs: LogAnalyticsSimulator, kql: str) -> int:
    (row,) = await rows(client, logs, kql)
    return int(row["Count"])


async def raw_rows(
    session: aiohttp.ClientSession, logs: LogAnalyticsSimulator, kql: str
) -> list[list[Any]]:
    """The rows exactly as the API rendered them (no client between), for measuring bytes."""
    token = logs.minter.mint_access_token(
        audience="https://api.loganalytics.io",
        client_id=CLIENT,
        tenant_id=TENANT,
        issuer="https://login.example/",
    )
    url = f"{logs.url}/v1/workspaces/{logs.sentinel.workspace_id}/query"
    headers = {"Authorization": f"Bearer {token}"}
    async with session.post(url, json={"query": kql}, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        reply = await resp.json()
    assert "error" not in reply
    table_rows: list[list[Any]] = reply["tables"][0]["rows"]
    return table_rows
