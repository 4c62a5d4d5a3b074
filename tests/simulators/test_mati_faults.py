"""The faults the MATI simulator injects, each answered the way the real service (or the edge
in front of it) answers, so a client's handling of each is tested against something real.
"""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest

from simulators.faults import FaultKind
from simulators.mati import MatiSimulator
from simulators.mati_bad_records import BAD_RECORD_KINDS
from tests.simulators.mati_requests import (
    AUTH,
    START,
    MakeMati,
    fetch_token,
    get_indicators,
    page_all,
)


async def test_rate_limit_fault_with_retry_after_and_message(
    session: aiohttp.ClientSession, mati: MatiSimulator
) -> None:
    mati.faults.inject(FaultKind.RATE_LIMIT, route="indicator", retry_after_s=7, message_retry_s=9)
    mati.faults.inject(FaultKind.RATE_LIMIT, route="indicator")
    params = {"start_epoch": START}
    async with session.get(f"{mati.url}/v4/indicator", params=params, headers=AUTH) as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "7"
        assert "Try again in 9 seconds" in (await response.json())["message"]
    async with session.get(f"{mati.url}/v4/indicator", params=params, headers=AUTH) as response:
        assert response.status == 429
        assert "Retry-After" not in response.headers
    assert (await get_indicators(session, mati, params))[0] == 200
    assert [r.fault for r in mati.recorder.of("indicator")] == [
        FaultKind.RATE_LIMIT,
        FaultKind.RATE_LIMIT,
        None,
    ]


async def test_server_error_faults(session: aiohttp.ClientSession, mati: MatiSimulator) -> None:
    mati.faults.inject(FaultKind.SERVER_ERROR, route="indicator", status=500)
    mati.faults.inject(FaultKind.SERVER_ERROR, route="indicator", status=502)
    mati.faults.inject(FaultKind.EMPTY_500, route="indicator")
    params = {"start_epoch": START}
    status, body = await get_indicators(session, mati, params)
    assert (status, body["statusCode"]) == (500, 500)
    assert (await get_indicators(session, mati, params))[0] == 502
    assert await get_indicators(session, mati, params) == (500, None)
    assert (await get_indicators(session, mati, params))[0] == 200


async def test_timeout_fault(session: aiohttp.ClientSession, mati: MatiSimulator) -> None:
    mati.faults.inject(FaultKind.TIMEOUT, route="indicator", delay_s=0.5)
    timeout = aiohttp.ClientTimeout(total=0.2)
    with pytest.raises(TimeoutError):
        await session.get(
            f"{mati.url}/v4/indicator", params={"start_epoch": START}, headers=AUTH, timeout=timeout
        )
    await asyncio.sleep(0.4)  # let the held request finish before the server stops
    assert (await get_indicators(session, mati, {"start_epoch": START}))[0] == 200


async def test_reset_fault(session: aiohttp.ClientSession, mati: MatiSimulator) -> None:
    # aiohttp retries an idempotent request once by itself after a dropped connection, so a
    # client only sees a reset when it happens twice in a row.
    mati.faults.inject(FaultKind.RESET, route="indicator", times=2)
    with pytest.raises(aiohttp.ClientConnectionError):
        await get_indicators(session, mati, {"start_epoch": START})
    assert [r.fault for r in mati.recorder.of("indicator")] == [FaultKind.RESET] * 2
    mati.faults.inject(FaultKind.RESET, route="indicator")
    assert (await get_indicators(session, mati, {"start_epoch": START}))[
        0
    ] == 200  # retried transparently
    mati.faults.inject(FaultKind.RESET, route="token")
    with pytest.raises(aiohttp.ClientConnectionError):  # POST: never retried by aiohttp
        await fetch_token(session, mati)


async def test_malformed_json_fault(session: aiohttp.ClientSession, mati: MatiSimulator) -> None:
    mati.faults.inject(FaultKind.MALFORMED_JSON, route="indicator")
    async with session.get(
        f"{mati.url}/v4/indicator", params={"start_epoch": START}, headers=AUTH
    ) as response:
        assert response.status == 200
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(await response.read())


async def test_fault_on_token_route(session: aiohttp.ClientSession, mati: MatiSimulator) -> None:
    mati.faults.inject(FaultKind.SERVER_ERROR, route="token", status=503)
    form = {"grant_type": "client_credentials"}
    async with session.post(f"{mati.url}/token", data=form, headers=AUTH) as response:
        assert response.status == 503
    assert (await fetch_token(session, mati))["token_type"] == "Bearer"


async def test_expired_token_fault_revokes_the_token(
    session: aiohttp.ClientSession, mati: MatiSimulator
) -> None:
    token = (await fetch_token(session, mati))["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    mati.faults.inject(FaultKind.EXPIRED_TOKEN, route="indicator")
    params = {"start_epoch": START}
    status, body = await get_indicators(session, mati, params, auth=None, headers=headers)
    assert (status, body["error"]) == (401, "invalid_token")
    assert (await get_indicators(session, mati, params, auth=None, headers=headers))[0] == 401
    fresh = (await fetch_token(session, mati))["access_token"]
    assert fresh != token
    headers = {"Authorization": f"Bearer {fresh}"}
    assert (await get_indicators(session, mati, params, auth=None, headers=headers))[0] == 200


async def test_bad_records_fault_corrupts_chosen_records(
    session: aiohttp.ClientSession, mati: MatiSimulator
) -> None:
    positions = tuple(range(0, 14, 2))
    mati.faults.inject(FaultKind.PARTIAL_ERRORS, route="indicator", record_indexes=positions)
    params: dict[str, str | int] = {
        "start_epoch": START,
        "limit": 20,
        "sort_by": "last_updated:asc",
    }
    async with session.get(f"{mati.url}/v4/indicator", params=params, headers=AUTH) as response:
        raw = await response.read()
    body = orjson.loads(raw)  # one bad record must not make the page unparseable
    assert len(body["indicators"]) == 20
    assert raw.count(b',"value":null}') == 1  # the duplicated key, raw on the wire
    assert [b.kind for b in mati.bad_records] == list(BAD_RECORD_KINDS)
    assert [b.position for b in mati.bad_records] == list(positions)
    records = body["indicators"]
    assert "id" not in records[0]
    assert "value" not in records[2]
    assert records[4]["mscore"] == "high"
    assert records[6]["value"] == 12345
    assert records[8]["sources"] == "Mandiant"
    assert records[10]["last_updated"] == "yesterday"
    assert records[12]["value"] is None
    good = [r for n, r in enumerate(records) if n not in positions]
    assert all(isinstance(r["value"], str) for r in good)
    # Only that page was affected.
    _, clean = await get_indicators(session, mati, {"next": body["next"]})
    assert all(isinstance(r.get("value"), str) for r in clean["indicators"])


async def test_inject_bad_records_option_on_every_page(
    session: aiohttp.ClientSession, make_mati: MakeMati
) -> None:
    mati = await make_mati(inject_bad_records=2)
    params: dict[str, str | int] = {"start_epoch": START, "limit": 100}
    records, answers = await page_all(session, mati, params)
    assert len(records) == 230
    assert len(mati.bad_records) == 6  # two on each of the three non-empty pages
    assert {b.kind for b in mati.bad_records} == {"missing_id", "missing_value"}
    assert len(answers) == 4


async def test_page_latency_and_counters(
    session: aiohttp.ClientSession, make_mati: MakeMati
) -> None:
    mati = await make_mati(page_latency_s=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await get_indicators(
        session, mati, {"start_epoch": START, "limit": 10}, headers={"X-App-Name": "tests"}
    )
    assert loop.time() - started >= 0.2
    assert (mati.pages_served, mati.indicators_served, mati.scrolls_opened) == (1, 10, 1)
    recorded = mati.recorder.of("indicator")[0]
    assert recorded.headers["X-App-Name"] == "tests"
    assert recorded.query["start_epoch"] == str(START)
    assert recorded.status == 200


async def test_faults_queued_over_the_control_route(
    session: aiohttp.ClientSession, mati: MatiSimulator
) -> None:
    fault = {"kind": "rate_limit", "route": "indicator", "retry_after_s": 3}
    async with session.post(f"{mati.url}/_sim/faults", data=orjson.dumps(fault)) as response:
        assert response.status == 201
    status, _ = await get_indicators(session, mati, {"start_epoch": START})
    assert status == 429
    async with session.get(f"{mati.url}/_sim/requests") as response:
        rows = await response.json()
    assert [(r["route"], r["status"]) for r in rows] == [("indicator", 429)]
