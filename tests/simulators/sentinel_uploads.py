"""How the Sentinel simulator tests talk to it: tokens, STIX indicators and uploads shaped
like the product's, so each test states only what it changes."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import orjson

from simulators.sentinel import SentinelSimulator
from simulators.tokens import TokenMinter

CLIENT = "11111111-1111-1111-1111-111111111111"
OTHER_CLIENT = "33333333-3333-3333-3333-333333333333"
TENANT = "00000000-0000-0000-0000-0000000000aa"
SOURCE = "Mandiant Threat Intelligence"
MISSING_ID = "Error for Property=id: Required property is missing. Actual value: NULL."
LEGACY_401 = {"statusCode": 401, "message": "Unauthorized. Access token is missing or invalid."}


def mint(
    minter: TokenMinter,
    *,
    client: str = CLIENT,
    audience: str = "https://management.azure.com",
    ttl_s: int = 3599,
    now: float | None = None,
) -> str:
    return minter.mint_access_token(
        audience=audience,
        client_id=client,
        tenant_id=TENANT,
        issuer=f"https://login.example/{TENANT}/v2.0",
        ttl_s=ttl_s,
        now=now,
    )


def indicator(value: str = "203.0.113.7", **overrides: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--{uuid.uuid4()}",
        "created": "2024-05-01T10:00:00.000Z",
        "modified": "2024-05-01T10:00:00.000Z",
        "pattern": f"[ipv4-addr:value = '{value}']",
        "pattern_type": "stix",
        "valid_from": "2024-05-01T10:00:00Z",
        "valid_until": "2099-01-01T00:00:00Z",
        "confidence": 80,
        "labels": ["malware:emotet"],
    }
    obj.update(overrides)
    return {k: v for k, v in obj.items() if v is not None}


def stix_path(sim: SentinelSimulator, workspace: str | None = None) -> str:
    ws = workspace or sim.workspace_id
    return f"/workspaces/{ws}/threat-intelligence-stix-objects:upload"


def legacy_path(sim: SentinelSimulator, workspace: str | None = None) -> str:
    return f"/{workspace or sim.workspace_id}/threatintelligence:upload-indicators"


async def upload(
    session: aiohttp.ClientSession,
    sim: SentinelSimulator,
    objects: list[Any] | None = None,
    *,
    legacy: bool = False,
    token: str | None = None,
    minter: TokenMinter | None = None,
    body: Any = None,
    api_version: str | None = "default",
    workspace: str | None = None,
) -> tuple[int, dict[str, str], Any]:
    """POST like the product does; returns status, headers and the parsed body (or None).

    ``token=None`` mints a valid one; ``token=""`` sends no Authorization header.
    """
    if body is None:
        key = "value" if legacy else "stixobjects"
        body = {"sourcesystem": SOURCE, key: objects if objects is not None else [indicator()]}
    path = legacy_path(sim, workspace) if legacy else stix_path(sim, workspace)
    if api_version == "default":
        api_version = "2022-07-01" if legacy else "2024-02-01-preview"
    params = {} if api_version is None else {"api-version": api_version}
    headers = {"Content-Type": "application/json"}
    if token is None:
        token = mint(minter or sim.minter)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with session.post(
        f"{sim.url}{path}", params=params, data=orjson.dumps(body), headers=headers
    ) as resp:
        raw = await resp.read()
        return resp.status, dict(resp.headers), orjson.loads(raw) if raw else None
