"""The MATI simulator over real TLS: the behaviours of specs/mati-api-v4.md that a client
depends on (auth, paging, cursors, filters, end of paging) and every fault it can inject."""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest

from simulators.faults import FaultKind
from simulators.feed import Feed
from simulators.mati import BAD_RECORD_KINDS, MatiSimulator

NOW = datetime(2025, 3, 9, 8, 0, 0, tzinfo=UTC)
KEY, SECRET = "sim-mati-key", "sim-mati-secret"
BASIC = aiohttp.encode_basic_auth(KEY, SECRET)
AUTH = {"Authorization": BASIC}
START = int((NOW - timedelta(days=31)).timestamp())


class Clock:
    """A clock the test moves by hand: token and cursor expiry without sleeping."""

    def __init__(self) -> None:
        self.now = NOW.timestamp()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


MakeSim = Callable[..., Awaitable[MatiSimulator]]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def make_sim(server_ssl: ssl.SSLContext, clock: Clock) -> AsyncIterator[MakeSim]:
    started: list[MatiSimulator] = []

    async def make(feed: Feed | None = None, **options: Any) -> MatiSimulator:
        sim = MatiSimulator(
            server_ssl, feed=feed or Feed(seed=11, count=230, now=NOW), clock=clock, **options
        )
        await sim.start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        await sim.stop()


@pytest.fixture
async def sim(make_sim: MakeSim) -> MatiSimulator:
    return await make_sim()


@pytest.fixture
async def http(client_ssl: ssl.SSLContext) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(ssl=client_ssl)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def _token(http: aiohttp.ClientSession, sim: MatiSimulator, **form: str) -> Any:
    data = {"grant_type": "client_credentials", **form}
    headers = {"Authorization": BASIC}
    async with http.post(f"{sim.url}/token", data=data, headers=headers) as response:
        assert response.status == 200
        return await response.json()


async def _get(
    http: aiohttp.ClientSession,
    sim: MatiSimulator,
    params: Mapping[str, str | int],
    *,
    auth: str | None = BASIC,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    all_headers = {**({"Authorization": auth} if auth else {}), **(headers or {})}
    async with http.get(f"{sim.url}/v4/indicator", params=params, headers=all_headers) as response:
        body = await response.read()
        return response.status, (orjson.loads(body) if body else None)


async def _page_all(
    http: aiohttp.ClientSession, sim: MatiSimulator, params: Mapping[str, str | int]
) -> tuple[list[dict[str, Any]], list[tuple[int, Any]]]:
    """Follow ``next`` with the cursor as the only parameter; return records and raw answers."""
    answers = []
    status, body = await _get(http, sim, params)
    answers.append((status, body))
    records: list[dict[str, Any]] = []
    while status == 200:
        records.extend(body["indicators"])
        if "next" not in body:
            break
        status, body = await _get(http, sim, {"next": body["next"]})
        answers.append((status, body))
    return records, answers


# ---------------------------------------------------------------------------- tokens


async def test_token_flow_reuses_the_token_with_shrinking_lifetime(
    http: aiohttp.ClientSession, clock: Clock, make_sim: MakeSim
) -> None:
    sim = await make_sim(token_ttl_s=3600)
    first = await _token(http, sim, scope="", unknown="x")
    assert first["token_type"] == "Bearer"
    assert first["expires_in"] == 3600
    clock.advance(125)
    second = await _token(http, sim)
    assert second["access_token"] == first["access_token"]
    assert second["expires_in"] == 3600 - 125
    clock.advance(3600)
    third = await _token(http, sim)
    assert third["access_token"] != first["access_token"]
    assert third["expires_in"] == 3600
    assert sim.tokens_issued == 2
    assert sim.token_requests == 3


async def test_token_rejects_bad_credentials_and_grants(
    http: aiohttp.ClientSession, sim: MatiSimulator
) -> None:
    form = {"grant_type": "client_credentials"}
    bad = aiohttp.encode_basic_auth(KEY, "wrong")
    async with http.post(f"{sim.url}/token", data=form, headers={"Authorization": bad}) as response:
        assert response.status == 401
        assert (await response.json())["error"] == "invalid_client"
    async with http.post(f"{sim.url}/token", data=form) as response:
        assert response.status == 401
    async with http.post(f"{sim.url}/token", data={"scope": ""}, headers=AUTH) as response:
        assert response.status == 400
        assert (await response.json())["error"] == "invalid_request"
    async with http.post(f"{sim.url}/token", data={"grant_type": "password"}, headers=AUTH) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"] == "unsupported_grant_type"
    assert sim.tokens_issued == 0


# ---------------------------------------------------------------------------- auth


async def test_bearer_and_basic_accepted_everything_else_401(
    http: aiohttp.ClientSession, sim: MatiSimulator, clock: Clock
) -> None:
    params: dict[str, str | int] = {"start_epoch": START, "limit": 1}
    assert (await _get(http, sim, params))[0] == 200
    token = (await _token(http, sim))["access_token"]
    bearer = {"Authorization": f"Bearer {token}"}
    assert (await _get(http, sim, params, auth=None, headers=bearer))[0] == 200
    async with http.get(f"{sim.url}/v4/entitlements", headers=bearer) as response:
        assert response.status == 200
        assert "entitlements" in await response.json()
    status, body = await _get(http, sim, params, auth=None)
    assert status == 401
    assert body["error"] == "invalid_request"
    assert (await _get(http, sim, params, auth=aiohttp.encode_basic_auth(KEY, "nope")))[0] == 401
    unknown = {"Authorization": "Bearer not-a-token"}
    assert (await _get(http, sim, params, auth=None, headers=unknown))[0] == 401
    clock.advance(43_200)
    status, body = await _get(http, sim, params, auth=None, headers=bearer)
    assert status == 401
    assert body["error"] == "invalid_token"


async def test_expired_token_status_is_switchable(
    http: aiohttp.ClientSession, make_sim: MakeSim, clock: Clock
) -> None:
    sim = await make_sim(expired_auth_status=403, token_ttl_s=60)
    token = (await _token(http, sim))["access_token"]
    clock.advance(61)
    headers = {"Authorization": f"Bearer {token}"}
    status, _ = await _get(http, sim, {"start_epoch": START}, auth=None, headers=headers)
    assert status == 403


# ---------------------------------------------------------------------------- paging


@pytest.mark.parametrize("mode", ["short", "empty", "204"])
@pytest.mark.parametrize("limit", [50, 46])  # 230 = 4*50+30 and 230 = 5*46
async def test_paging_collects_the_window_exactly_once(
    http: aiohttp.ClientSession, make_sim: MakeSim, mode: str, limit: int
) -> None:
    sim = await make_sim(end_of_paging=mode)
    params: dict[str, str | int] = {
        "start_epoch": START,
        "end_epoch": int(NOW.timestamp()),
        "limit": limit,
        "sort_by": "last_updated:asc",
    }
    records, answers = await _page_all(http, sim, params)
    expected = [sim.feed.id(i) for i in sim.feed.window(NOW - timedelta(days=31), NOW)]
    assert len(expected) == 230
    assert [r["id"] for r in records] == expected
    stamps = [r["last_updated"] for r in records]
    assert stamps == sorted(stamps)
    full_pages = -(-230 // limit)
    last_status, last_body = answers[-1]
    if mode == "short":
        assert len(answers) == full_pages
        assert last_status == 200
        assert "next" not in last_body
        assert last_body["indicators"]
    elif mode == "empty":
        assert len(answers) == full_pages + 1
        assert last_status == 200
        assert last_body == {"indicators": []}
    else:
        assert len(answers) == full_pages + 1
        assert last_status == 204
        assert last_body is None
    assert all("next" in body for _, body in answers[: full_pages - 1])
    assert sim.pages_served == len(answers)


@pytest.mark.parametrize("mode", ["short", "empty", "204"])
async def test_empty_window_ends_at_once(
    http: aiohttp.ClientSession, make_sim: MakeSim, mode: str
) -> None:
    sim = await make_sim(end_of_paging=mode)
    future = int((NOW + timedelta(days=1)).timestamp())
    status, body = await _get(http, sim, {"start_epoch": future, "end_epoch": future + 60})
    if mode == "204":
        assert (status, body) == (204, None)
    else:
        assert (status, body) == (200, {"indicators": []})


async def test_cursor_anatomy_replay_and_extra_params(
    http: aiohttp.ClientSession, sim: MatiSimulator
) -> None:
    params: dict[str, str | int] = {
        "start_epoch": START,
        "limit": 20,
        "gte_mscore": 50,
        "exclude_osint": "True",
        "sort_by": "last_updated:asc",
    }
    _, first = await _get(http, sim, params)
    cursor = first["next"]
    assert len(cursor) > 3000
    scroll_id, _, state = cursor.rpartition(".")
    assert scroll_id.endswith("=")  # padded base64: the client must URL-encode it
    decoded = orjson.loads(base64.b64decode(state))
    assert decoded["exclude_os_int"] is True
    assert decoded["limit"] == 20
    assert decoded["gte_mscore"] == 50
    assert decoded["next_page_index"] == 1
    _, second = await _get(http, sim, {"next": cursor})
    _, replay = await _get(http, sim, {"next": cursor, "start_epoch": START, "limit": 5})
    assert [r["id"] for r in replay["indicators"]] == [r["id"] for r in second["indicators"]]
    assert len(second["indicators"]) == 20
    assert second["next"] != cursor
    assert not {r["id"] for r in first["indicators"]} & {r["id"] for r in second["indicators"]}


async def test_expired_cursor_is_a_400(
    http: aiohttp.ClientSession, make_sim: MakeSim, clock: Clock
) -> None:
    sim = await make_sim(cursor_ttl_s=30)
    _, first = await _get(http, sim, {"start_epoch": START, "limit": 10})
    clock.advance(29)
    status, second = await _get(http, sim, {"next": first["next"]})
    assert status == 200
    clock.advance(29)  # the second cursor is fresh; the first one is now too old
    assert (await _get(http, sim, {"next": second["next"]}))[0] == 200
    status, body = await _get(http, sim, {"next": first["next"]})
    assert status == 400
    assert body["error"] == "invalid_cursor"
    status, body = await _get(http, sim, {"next": "garbage"})
    assert status == 400


async def test_paging_is_stable_while_the_feed_changes(
    http: aiohttp.ClientSession, sim: MatiSimulator
) -> None:
    params: dict[str, str | int] = {
        "start_epoch": START,
        "limit": 100,
        "sort_by": "last_updated:asc",
    }
    expected = [sim.feed.record(i) for i in sim.feed.window(NOW - timedelta(days=31), NOW)]
    _, first = await _get(http, sim, params)
    changed = sim.feed.mutate(0.5, seed=3, now=NOW + timedelta(seconds=1))
    sim.feed.add(10, NOW + timedelta(seconds=2))
    records = list(first["indicators"])
    body = first
    while "next" in body:
        _, body = await _get(http, sim, {"next": body["next"]})
        records.extend(body["indicators"])
    strip = ("misp",)
    assert [{k: v for k, v in r.items() if k not in strip} for r in records] == [
        {
            k: v
            for k, v in r.items()
            if k not in ("misp", "threat_rating", "category", "campaigns", "reports")
        }
        for r in expected
    ]
    # A new query sees the change.
    end = int(NOW.timestamp()) + 3
    fresh, _ = await _page_all(http, sim, {**params, "limit": 1000, "end_epoch": end})
    assert len(fresh) == 240
    assert {r["id"] for r in fresh[-len(changed) - 10 :]} >= set(changed)


async def test_prerendered_pages_match_built_ones_and_follow_changes(
    http: aiohttp.ClientSession, make_sim: MakeSim
) -> None:
    """``prerender`` only saves work: the same bytes for the query it was given, a changed
    record rendered again, a pinned scroll still served as of its generation, and a query with
    other flags (or a page with bad records) built as before."""
    fetcher_flags = {"include_misp": "false", "include_reports": "false"}
    params: dict[str, str | int] = {
        "start_epoch": START,
        "end_epoch": int(NOW.timestamp()) + 3,
        "limit": 100,
        "sort_by": "last_updated:asc",
        **fetcher_flags,
    }
    plain, kept = await make_sim(), await make_sim()
    assert kept.prerender(fetcher_flags) == 230
    first = {}
    for sim in (plain, kept):  # a scroll pinned before the change, read after it
        _, first[sim] = await _get(http, sim, params)
        sim.feed.mutate(0.5, seed=3, now=NOW + timedelta(seconds=1))
    pinned = {}
    for sim, body in first.items():
        pinned[sim] = list(body["indicators"])
        while "next" in body:
            _, body = await _get(http, sim, {"next": body["next"]})
            pinned[sim].extend(body["indicators"])
    assert pinned[plain] == pinned[kept]
    for query in (params, {**params, "include_misp": "true"}):
        assert (await _page_all(http, plain, query))[0] == (await _page_all(http, kept, query))[0]
    kept.faults.inject(FaultKind.PARTIAL_ERRORS, route="indicator", record_indexes=(1,))
    _, page = await _get(http, kept, params)
    assert "id" not in page["indicators"][1]  # the first bad kind: no id


async def test_default_order_is_newest_first_and_desc_honoured(
    http: aiohttp.ClientSession, sim: MatiSimulator
) -> None:
    for params in (
        {},
        {"sort_by": "last_updated:desc"},
        {"sort_by": "last_updated", "sort_order": "desc"},
    ):
        _, body = await _get(http, sim, {"start_epoch": START, "limit": 30, **params})
        stamps = [r["last_updated"] for r in body["indicators"]]
        assert stamps == sorted(stamps, reverse=True), params
    status, _ = await _get(http, sim, {"start_epoch": START, "sort_by": "mscore:asc"})
    assert status == 400


# ---------------------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"start_epoch": START, "limit": 1001}, "limit"),
        ({"start_epoch": START, "limit": 0}, "limit"),
        ({"start_epoch": int((NOW - timedelta(days=91)).timestamp())}, "90 days"),
        ({}, "start_epoch"),
        ({"start_epoch": "yesterday"}, "start_epoch"),
        ({"start_epoch": START, "end_epoch": START - 1}, "end_epoch"),
        ({"start_epoch": START, "gte_mscore": 101}, "gte_mscore"),
        ({"start_epoch": START, "exclude_osint": "maybe"}, "exclude_osint"),
    ],
)
async def test_bad_parameters_are_400_json(
    http: aiohttp.ClientSession, sim: MatiSimulator, params: dict[str, str | int], fragment: str
) -> None:
    status, body = await _get(http, sim, params)
    assert status == 400
    assert fragment in body["error_description"]


async def test_limit_1000_and_lookback_clamp_allowed(
    http: aiohttp.ClientSession, make_sim: MakeSim
) -> None:
    sim = await make_sim(lookback_clamp=True)
    old = int((NOW - timedelta(days=200)).timestamp())
    status, body = await _get(http, sim, {"start_epoch": old, "limit": 1000})
    assert status == 200
    assert len(body["indicators"]) == 230


@pytest.mark.parametrize("true", ["True", "true", "TRUE", "1"])
async def test_filters_honoured_with_booleans_in_any_case(
    http: aiohttp.ClientSession, sim: MatiSimulator, true: str
) -> None:
    params: dict[str, str | int] = {
        "start_epoch": START,
        "limit": 1000,
        "gte_mscore": 80,
        "exclude_osint": true,
        "sort_by": "last_updated:asc",
    }
    records, _ = await _page_all(http, sim, params)
    expected = sim.feed.window(NOW - timedelta(days=31), NOW, gte_mscore=80, exclude_osint=True)
    assert [r["id"] for r in records] == [sim.feed.id(i) for i in expected]
    assert 0 < len(records) < 230
    assert all(r["mscore"] >= 80 for r in records)
    assert all(not all(s["osint"] for s in r["sources"]) for r in records)


async def test_window_on_last_updated_is_inclusive(
    http: aiohttp.ClientSession, make_sim: MakeSim
) -> None:
    feed = Feed(seed=1, count=50, now=NOW)
    sim = await make_sim(feed=feed)
    # Move two records onto whole seconds, so epoch bounds can hit them exactly.
    at = int(NOW.timestamp()) - 3600
    feed.rereport([feed.id(3)], datetime.fromtimestamp(at, UTC))
    feed.rereport([feed.id(4)], datetime.fromtimestamp(at + 1, UTC))
    params: dict[str, str | int] = {
        "start_epoch": at,
        "end_epoch": at + 1,
        "sort_by": "last_updated",
    }
    status, body = await _get(http, sim, params)
    assert status == 200
    assert [r["id"] for r in body["indicators"]] == [feed.id(3), feed.id(4)]
    assert body["indicators"][0]["last_updated"].endswith(":00.000Z")


async def test_include_flags_shape_the_records(
    http: aiohttp.ClientSession, sim: MatiSimulator
) -> None:
    base: dict[str, str | int] = {"start_epoch": START, "limit": 200}
    _, plain = await _get(http, sim, base)
    keys = {k for r in plain["indicators"] for k in r}
    assert "misp" in keys  # on by default
    assert not keys & {"threat_rating", "category", "campaigns", "reports"}
    flags = {
        "include_threat_rating": "true",
        "include_category": "True",
        "include_campaigns": "1",
        "include_reports": "TRUE",
        "include_misp": "false",
    }
    _, full = await _get(http, sim, {**base, **flags})
    keys = {k for r in full["indicators"] for k in r}
    assert keys >= {"threat_rating", "category", "campaigns", "reports"}
    assert "misp" not in keys
    # Flags live in the scroll: the cursor alone keeps them, flags sent with it override.
    _, alone = await _get(http, sim, {"next": full["next"]})
    assert "misp" not in {k for r in alone["indicators"] for k in r}
    assert "category" in alone["indicators"][0]
    _, override = await _get(http, sim, {"next": full["next"], "include_category": "false"})
    assert all("category" not in r for r in override["indicators"])


# ---------------------------------------------------------------------------- faults


async def test_rate_limit_fault_with_retry_after_and_message(
    http: aiohttp.ClientSession, sim: MatiSimulator
) -> None:
    sim.faults.inject(FaultKind.RATE_LIMIT, route="indicator", retry_after_s=7, message_retry_s=9)
    sim.faults.inject(FaultKind.RATE_LIMIT, route="indicator")
    params = {"start_epoch": START}
    async with http.get(f"{sim.url}/v4/indicator", params=params, headers=AUTH) as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "7"
        assert "Try again in 9 seconds" in (await response.json())["message"]
    async with http.get(f"{sim.url}/v4/indicator", params=params, headers=AUTH) as response:
        assert response.status == 429
        assert "Retry-After" not in response.headers
    assert (await _get(http, sim, params))[0] == 200
    assert [r.fault for r in sim.recorder.of("indicator")] == [
        FaultKind.RATE_LIMIT,
        FaultKind.RATE_LIMIT,
        None,
    ]


async def test_server_error_faults(http: aiohttp.ClientSession, sim: MatiSimulator) -> None:
    sim.faults.inject(FaultKind.SERVER_ERROR, route="indicator", status=500)
    sim.faults.inject(FaultKind.SERVER_ERROR, route="indicator", status=502)
    sim.faults.inject(FaultKind.EMPTY_500, route="indicator")
    params = {"start_epoch": START}
    status, body = await _get(http, sim, params)
    assert (status, body["statusCode"]) == (500, 500)
    assert (await _get(http, sim, params))[0] == 502
    assert await _get(http, sim, params) == (500, None)
    assert (await _get(http, sim, params))[0] == 200


async def test_timeout_fault(http: aiohttp.ClientSession, sim: MatiSimulator) -> None:
    sim.faults.inject(FaultKind.TIMEOUT, route="indicator", delay_s=0.5)
    timeout = aiohttp.ClientTimeout(total=0.2)
    with pytest.raises(TimeoutError):
        await http.get(
            f"{sim.url}/v4/indicator", params={"start_epoch": START}, headers=AUTH, timeout=timeout
        )
    await asyncio.sleep(0.4)  # let the held request finish before the server stops
    assert (await _get(http, sim, {"start_epoch": START}))[0] == 200


async def test_reset_fault(http: aiohttp.ClientSession, sim: MatiSimulator) -> None:
    # aiohttp retries an idempotent request once by itself after a dropped connection, so a
    # client only sees a reset when it happens twice in a row.
    sim.faults.inject(FaultKind.RESET, route="indicator", times=2)
    with pytest.raises(aiohttp.ClientConnectionError):
        await _get(http, sim, {"start_epoch": START})
    assert [r.fault for r in sim.recorder.of("indicator")] == [FaultKind.RESET] * 2
    sim.faults.inject(FaultKind.RESET, route="indicator")
    assert (await _get(http, sim, {"start_epoch": START}))[0] == 200  # retried transparently
    sim.faults.inject(FaultKind.RESET, route="token")
    with pytest.raises(aiohttp.ClientConnectionError):  # POST: never retried by aiohttp
        await _token(http, sim)


async def test_malformed_json_fault(http: aiohttp.ClientSession, sim: MatiSimulator) -> None:
    sim.faults.inject(FaultKind.MALFORMED_JSON, route="indicator")
    async with http.get(
        f"{sim.url}/v4/indicator", params={"start_epoch": START}, headers=AUTH
    ) as response:
        assert response.status == 200
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(await response.read())


async def test_fault_on_token_route(http: aiohttp.ClientSession, sim: MatiSimulator) -> None:
    sim.faults.inject(FaultKind.SERVER_ERROR, route="token", status=503)
    form = {"grant_type": "client_credentials"}
    async with http.post(f"{sim.url}/token", data=form, headers=AUTH) as response:
        assert response.status == 503
    assert (await _token(http, sim))["token_type"] == "Bearer"


async def test_expired_token_fault_revokes_the_token(
    http: aiohttp.ClientSession, sim: MatiSimulator
) -> None:
    token = (await _token(http, sim))["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    sim.faults.inject(FaultKind.EXPIRED_TOKEN, route="indicator")
    params = {"start_epoch": START}
    status, body = await _get(http, sim, params, auth=None, headers=headers)
    assert (status, body["error"]) == (401, "invalid_token")
    assert (await _get(http, sim, params, auth=None, headers=headers))[0] == 401
    fresh = (await _token(http, sim))["access_token"]
    assert fresh != token
    headers = {"Authorization": f"Bearer {fresh}"}
    assert (await _get(http, sim, params, auth=None, headers=headers))[0] == 200


async def test_bad_records_fault_corrupts_chosen_records(
    http: aiohttp.ClientSession, sim: MatiSimulator
) -> None:
    positions = tuple(range(0, 14, 2))
    sim.faults.inject(FaultKind.PARTIAL_ERRORS, route="indicator", record_indexes=positions)
    params: dict[str, str | int] = {
        "start_epoch": START,
        "limit": 20,
        "sort_by": "last_updated:asc",
    }
    async with http.get(f"{sim.url}/v4/indicator", params=params, headers=AUTH) as response:
        raw = await response.read()
    body = orjson.loads(raw)  # one bad record must not make the page unparseable
    assert len(body["indicators"]) == 20
    assert raw.count(b',"value":null}') == 1  # the duplicated key, raw on the wire
    assert [b.kind for b in sim.bad_records] == list(BAD_RECORD_KINDS)
    assert [b.position for b in sim.bad_records] == list(positions)
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
    _, clean = await _get(http, sim, {"next": body["next"]})
    assert all(isinstance(r.get("value"), str) for r in clean["indicators"])


async def test_inject_bad_records_option_on_every_page(
    http: aiohttp.ClientSession, make_sim: MakeSim
) -> None:
    sim = await make_sim(inject_bad_records=2)
    params: dict[str, str | int] = {"start_epoch": START, "limit": 100}
    records, answers = await _page_all(http, sim, params)
    assert len(records) == 230
    assert len(sim.bad_records) == 6  # two on each of the three non-empty pages
    assert {b.kind for b in sim.bad_records} == {"missing_id", "missing_value"}
    assert len(answers) == 4


async def test_page_latency_and_counters(http: aiohttp.ClientSession, make_sim: MakeSim) -> None:
    sim = await make_sim(page_latency_s=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await _get(http, sim, {"start_epoch": START, "limit": 10}, headers={"X-App-Name": "tests"})
    assert loop.time() - started >= 0.2
    assert (sim.pages_served, sim.indicators_served, sim.scrolls_opened) == (1, 10, 1)
    recorded = sim.recorder.of("indicator")[0]
    assert recorded.headers["X-App-Name"] == "tests"
    assert recorded.query["start_epoch"] == str(START)
    assert recorded.status == 200


async def test_gte_threatscore_drops_missing_and_low_ratings(
    http: aiohttp.ClientSession, sim: MatiSimulator
) -> None:
    params: dict[str, str | int] = {
        "start_epoch": START,
        "limit": 1000,
        "gte_threatscore": 60,
        "include_threat_rating": "true",
    }
    _, body = await _get(http, sim, params)
    expected = sim.feed.window(NOW - timedelta(days=31), NOW, gte_threatscore=60)
    assert {r["id"] for r in body["indicators"]} == {sim.feed.id(i) for i in expected}
    assert all(r["threat_rating"]["threat_score"] >= 60 for r in body["indicators"])


async def test_faults_queued_over_the_control_route(
    http: aiohttp.ClientSession, sim: MatiSimulator
) -> None:
    fault = {"kind": "rate_limit", "route": "indicator", "retry_after_s": 3}
    async with http.post(f"{sim.url}/_sim/faults", data=orjson.dumps(fault)) as response:
        assert response.status == 201
    status, _ = await _get(http, sim, {"start_epoch": START})
    assert status == 429
    async with http.get(f"{sim.url}/_sim/requests") as response:
        rows = await response.json()
    assert [(r["route"], r["status"]) for r in rows] == [("indicator", 429)]
