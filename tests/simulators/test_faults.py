"""The fault plan itself, and that every simulator words its generic faults as its own service:
a truncated body from the Entra simulator must look like a cut-off token answer, not a MATI page.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from datetime import UTC, datetime

import aiohttp
import orjson
import pytest

from simulators.entra import EntraSimulator
from simulators.faults import Fault, FaultKind, FaultPlan
from simulators.feed import Feed
from simulators.loganalytics import LogAnalyticsSimulator
from simulators.mati import MatiSimulator
from simulators.sentinel import SentinelSimulator
from simulators.server import SimServer
from simulators.tokens import TokenMinter

NOW = datetime(2025, 6, 1, tzinfo=UTC)


def test_after_lets_matching_requests_through_first() -> None:
    plan = FaultPlan()
    plan.inject(FaultKind.SERVER_ERROR, route="a", after=2)
    plan.inject(FaultKind.RATE_LIMIT, route="a")
    generic = frozenset({FaultKind.SERVER_ERROR, FaultKind.RATE_LIMIT})
    # The waiting 500 is passed over, so the 429 behind it answers the first request.
    first = plan.take("a", generic)
    assert first is not None
    assert first.kind is FaultKind.RATE_LIMIT
    assert plan.take("a", generic) is None
    assert plan.take("b", generic) is None  # another route does not count
    third = plan.take("a", generic)
    assert third is not None
    assert third.kind is FaultKind.SERVER_ERROR
    assert plan.pending == []


def test_after_survives_the_control_route_json() -> None:
    fault = Fault.from_json({"kind": "gateway_error", "status": 502, "after": 3})
    assert (fault.kind, fault.status, fault.after) == (FaultKind.GATEWAY_ERROR, 502, 3)
    assert Fault.from_json(fault.to_json()) == fault


def _mati(server_ssl: ssl.SSLContext, minter: TokenMinter) -> SimServer:
    return MatiSimulator(server_ssl, feed=Feed(seed=1, count=5, days=5, now=NOW))


def _sentinel(server_ssl: ssl.SSLContext, minter: TokenMinter) -> SimServer:
    return SentinelSimulator(server_ssl, minter=minter)


def _entra(server_ssl: ssl.SSLContext, minter: TokenMinter) -> SimServer:
    return EntraSimulator(server_ssl, minter=minter)


def _logs(server_ssl: ssl.SSLContext, minter: TokenMinter) -> SimServer:
    sentinel = SentinelSimulator(server_ssl, minter=minter)  # read only, never started
    return LogAnalyticsSimulator(server_ssl, minter=minter, sentinel=sentinel)


@pytest.mark.parametrize(
    ("build", "method", "path", "prefix"),
    [
        (_mati, "GET", "/v4/indicator", b'{"indicators": [{"id": "indicator--'),
        (
            _sentinel,
            "POST",
            "/workspaces/w/threat-intelligence-stix-objects:upload",
            b'{"errors": [{"recordIndex": 0,',
        ),
        (_entra, "POST", "/tenant/oauth2/v2.0/token", b'{"token_type": "Bearer",'),
        (_logs, "POST", "/v1/workspaces/w/query", b'{"tables": [{"name": "PrimaryResult",'),
    ],
    ids=["mati", "sentinel", "entra", "loganalytics"],
)
async def test_malformed_json_is_each_services_own_body_cut_off(
    server_ssl: ssl.SSLContext,
    session: aiohttp.ClientSession,
    minter: TokenMinter,
    build: Callable[[ssl.SSLContext, TokenMinter], SimServer],
    method: str,
    path: str,
    prefix: bytes,
) -> None:
    async with build(server_ssl, minter) as sim:
        sim.faults.inject(FaultKind.MALFORMED_JSON)
        async with session.request(method, f"{sim.url}{path}") as resp:
            status, content_type, body = resp.status, resp.content_type, await resp.read()
    assert (status, content_type) == (200, "application/json")
    assert body.startswith(prefix)
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(body)
