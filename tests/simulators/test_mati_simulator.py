"""The MATI simulator over real TLS: the behaviours of specs/mati-api-v4.md that a client
depends on (auth, paging, cursors, filters, end of paging). Its faults: test_mati_faults.py."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import aiohttp
import orjson
import pytest

from simulators.faults import FaultKind
from simulators.feed import Feed
from simulators.mati import MatiSimulator
from tests.simulators.mati_requests import (
    AUTH,
    KEY,
    NOW,
    START,
    Clock,
    MakeMati,
    fetch_token,
    from_start,
    get_indicators,
    page_all,
)

# ---------------------------------------------------------------------------- tokens


async def test_token_flow_reuses_the_token_with_shrinking_lifetime(
    session: aiohttp.ClientSession, clock: Clock, make_mati: MakeMati
) -> None:
    mati = await make_mati(token_ttl_s=3600)
    first = await fetch_token(session, mati, scope="", unknown="x")
    assert first["token_type"] == "Bearer"
    assert first["expires_in"] == 3600
    clock.advance(125)
    second = await fetch_token(session, mati)
    assert second["access_token"] == first["access_token"]
    assert second["expires_in"] == 3600 - 125
    clock.advance(3600)
    third = await fetch_token(session, mati)
    assert third["access_token"] != first["access_token"]
    assert third["expires_in"] == 3600
    assert mati.tokens_issued == 2
    assert mati.token_requests == 3


async def test_token_rejects_bad_credentials_and_grants(
    session: aiohttp.ClientSession, mati: MatiSimulator
) -> None:
    form = {"grant_type": "client_credentials"}
    bad = aiohttp.encode_basic_auth(KEY, "wrong")
    async with session.post(
        f"{mati.url}/token", data=form, headers={"Authorization": bad}
    ) as response:
        assert response.status == 401
        assert (await response.json())["error"] == "invalid_client"
    async with session.post(f"{mati.url}/token", data=form) as response:
        assert response.status == 401
    async with session.post(f"{mati.url}/token", data={"scope": ""}, headers=AUTH) as response:
        assert response.status == 400
        assert (await response.json())["error"] == "invalid_request"
    async with session.post(
        f"{mati.url}/token", data={"grant_type": "password"}, headers=AUTH
    ) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"] == "unsupported_grant_type"
    assert mati.tokens_issued == 0


# ---------------------------------------------------------------------------- auth


async def test_bearer_and_basic_accepted_everything_else_401(
    session: aiohttp.ClientSession, mati: MatiSimulator, clock: Clock
) -> None:
    params = from_start(limit=1)
    assert (await get_indicators(session, mati, params))[0] == 200
    token = (await fetch_token(session, mati))["access_token"]
    bearer = {"Authorization": f"Bearer {token}"}
    assert (await get_indicators(session, mati, params, auth=None, headers=bearer))[0] == 200
    async with session.get(f"{mati.url}/v4/entitlements", headers=bearer) as response:
        assert response.status == 200
        assert "entitlements" in await response.json()
    status, body = await get_indicators(session, mati, params, auth=None)
    assert status == 401
    assert body["error"] == "invalid_request"
    assert (
        await get_indicators(session, mati, params, auth=aiohttp.encode_basic_auth(KEY, "nope"))
    )[0] == 401
    unknown = {"Authorization": "Bearer not-a-token"}
    assert (await get_indicators(session, mati, params, auth=None, headers=unknown))[0] == 401
    clock.advance(43_200)
    status, body = await get_indicators(session, mati, params, auth=None, headers=bearer)
    assert status == 401
    assert body["error"] == "invalid_token"


async def test_expired_token_status_is_switchable(
    session: aiohttp.ClientSession, make_mati: MakeMati, clock: Clock
) -> None:
    mati = await make_mati(expired_auth_status=403, token_ttl_s=60)
    token = (await fetch_token(session, mati))["access_token"]
    clock.advance(61)
    headers = {"Authorization": f"Bearer {token}"}
    status, _ = await get_indicators(
        session, mati, {"start_epoch": START}, auth=None, headers=headers
    )
    assert status == 403


# ---------------------------------------------------------------------------- paging


@pytest.mark.parametrize("mode", ["short", "empty", "204"])
@pytest.mark.parametrize("limit", [50, 46])  # 230 = 4*50+30 and 230 = 5*46
async def test_paging_collects_the_window_exactly_once(
    session: aiohttp.ClientSession, make_mati: MakeMati, mode: str, limit: int
) -> None:
    mati = await make_mati(end_of_paging=mode)
    params = from_start(end_epoch=int(NOW.timestamp()), limit=limit, sort_by="last_updated:asc")
    records, answers = await page_all(session, mati, params)
    expected = [mati.feed.id(i) for i in mati.feed.window(NOW - timedelta(days=31), NOW)]
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
    assert mati.pages_served == len(answers)


@pytest.mark.parametrize("mode", ["short", "empty", "204"])
async def test_empty_window_ends_at_once(
    session: aiohttp.ClientSession, make_mati: MakeMati, mode: str
) -> None:
    mati = await make_mati(end_of_paging=mode)
    future = int((NOW + timedelta(days=1)).timestamp())
    status, body = await get_indicators(
        session, mati, {"start_epoch": future, "end_epoch": future + 60}
    )
    if mode == "204":
        assert (status, body) == (204, None)
    else:
        assert (status, body) == (200, {"indicators": []})


async def test_cursor_anatomy_replay_and_extra_params(
    session: aiohttp.ClientSession, mati: MatiSimulator
) -> None:
    params = from_start(limit=20, gte_mscore=50, exclude_osint="True", sort_by="last_updated:asc")
    _, first = await get_indicators(session, mati, params)
    cursor = first["next"]
    assert len(cursor) > 3000
    scroll_id, _, state = cursor.rpartition(".")
    assert scroll_id.endswith("=")  # padded base64: the client must URL-encode it
    decoded = orjson.loads(base64.b64decode(state))
    assert decoded["exclude_os_int"] is True
    assert decoded["limit"] == 20
    assert decoded["gte_mscore"] == 50
    assert decoded["next_page_index"] == 1
    _, second = await get_indicators(session, mati, {"next": cursor})
    _, replay = await get_indicators(
        session, mati, {"next": cursor, "start_epoch": START, "limit": 5}
    )
    assert [r["id"] for r in replay["indicators"]] == [r["id"] for r in second["indicators"]]
    assert len(second["indicators"]) == 20
    assert second["next"] != cursor
    assert not {r["id"] for r in first["indicators"]} & {r["id"] for r in second["indicators"]}


async def test_expired_cursor_is_a_400(
    session: aiohttp.ClientSession, make_mati: MakeMati, clock: Clock
) -> None:
    mati = await make_mati(cursor_ttl_s=30)
    _, first = await get_indicators(session, mati, {"start_epoch": START, "limit": 10})
    clock.advance(29)
    status, second = await get_indicators(session, mati, {"next": first["next"]})
    assert status == 200
    clock.advance(29)  # the second cursor is fresh; the first one is now too old
    assert (await get_indicators(session, mati, {"next": second["next"]}))[0] == 200
    status, body = await get_indicators(session, mati, {"next": first["next"]})
    assert status == 400
    assert body["error"] == "invalid_cursor"
    status, body = await get_indicators(session, mati, {"next": "garbage"})
    assert status == 400


async def test_paging_is_stable_while_the_feed_changes(
    session: aiohttp.ClientSession, mati: MatiSimulator
) -> None:
    params = from_start(limit=100, sort_by="last_updated:asc")
    expected = [mati.feed.record(i) for i in mati.feed.window(NOW - timedelta(days=31), NOW)]
    _, first = await get_indicators(session, mati, params)
    changed = mati.feed.mutate(0.5, seed=3, now=NOW + timedelta(seconds=1))
    mati.feed.add(10, NOW + timedelta(seconds=2))
    records = list(first["indicators"])
    body = first
    while "next" in body:
        _, body = await get_indicators(session, mati, {"next": body["next"]})
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
    fresh, _ = await page_all(session, mati, {**params, "limit": 1000, "end_epoch": end})
    assert len(fresh) == 240
    assert {r["id"] for r in fresh[-len(changed) - 10 :]} >= set(changed)


async def test_prerendered_pages_match_built_ones_and_follow_changes(
    session: aiohttp.ClientSession, make_mati: MakeMati
) -> None:
    """``prerender`` only saves work: the same bytes for the query it was given, a changed
    record rendered again, a pinned scroll still served as of its generation, and a query with
    other flags (or a page with bad records) built as before."""
    fetcher_flags = {"include_misp": "false", "include_reports": "false"}
    params = from_start(
        end_epoch=int(NOW.timestamp()) + 3, limit=100, sort_by="last_updated:asc", **fetcher_flags
    )
    plain, kept = await make_mati(), await make_mati()
    assert kept.prerender(fetcher_flags) == 230
    first = {}
    for mati in (plain, kept):  # a scroll pinned before the change, read after it
        _, first[mati] = await get_indicators(session, mati, params)
        mati.feed.mutate(0.5, seed=3, now=NOW + timedelta(seconds=1))
    pinned = {}
    for mati, body in first.items():
        pinned[mati] = list(body["indicators"])
        while "next" in body:
            _, body = await get_indicators(session, mati, {"next": body["next"]})
            pinned[mati].extend(body["indicators"])
    assert pinned[plain] == pinned[kept]
    for query in (params, {**params, "include_misp": "true"}):
        assert (await page_all(session, plain, query))[0] == (await page_all(session, kept, query))[
            0
        ]
    kept.faults.inject(FaultKind.PARTIAL_ERRORS, route="indicator", record_indexes=(1,))
    _, page = await get_indicators(session, kept, params)
    assert "id" not in page["indicators"][1]  # the first bad kind: no id


async def test_default_order_is_newest_first_and_desc_honoured(
    session: aiohttp.ClientSession, mati: MatiSimulator
) -> None:
    for params in (
        {},
        {"sort_by": "last_updated:desc"},
        {"sort_by": "last_updated", "sort_order": "desc"},
    ):
        _, body = await get_indicators(session, mati, {"start_epoch": START, "limit": 30, **params})
        stamps = [r["last_updated"] for r in body["indicators"]]
        assert stamps == sorted(stamps, reverse=True), params
    status, _ = await get_indicators(session, mati, {"start_epoch": START, "sort_by": "mscore:asc"})
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
    session: aiohttp.ClientSession, mati: MatiSimulator, params: dict[str, str | int], fragment: str
) -> None:
    status, body = await get_indicators(session, mati, params)
    assert status == 400
    assert fragment in body["error_description"]


async def test_limit_1000_and_lookback_clamp_allowed(
    session: aiohttp.ClientSession, make_mati: MakeMati
) -> None:
    mati = await make_mati(lookback_clamp=True)
    old = int((NOW - timedelta(days=200)).timestamp())
    status, body = await get_indicators(session, mati, {"start_epoch": old, "limit": 1000})
    assert status == 200
    assert len(body["indicators"]) == 230


@pytest.mark.parametrize("true", ["True", "true", "TRUE", "1"])
async def test_filters_honoured_with_booleans_in_any_case(
    session: aiohttp.ClientSession, mati: MatiSimulator, true: str
) -> None:
    params = from_start(limit=1000, gte_mscore=80, exclude_osint=true, sort_by="last_updated:asc")
    records, _ = await page_all(session, mati, params)
    expected = mati.feed.window(NOW - timedelta(days=31), NOW, gte_mscore=80, exclude_osint=True)
    assert [r["id"] for r in records] == [mati.feed.id(i) for i in expected]
    assert 0 < len(records) < 230
    assert all(r["mscore"] >= 80 for r in records)
    assert all(not all(s["osint"] for s in r["sources"]) for r in records)


async def test_window_on_last_updated_is_inclusive(
    session: aiohttp.ClientSession, make_mati: MakeMati
) -> None:
    feed = Feed(seed=1, count=50, now=NOW)
    mati = await make_mati(feed=feed)
    # Move two records onto whole seconds, so epoch bounds can hit them exactly.
    at = int(NOW.timestamp()) - 3600
    feed.rereport([feed.id(3)], datetime.fromtimestamp(at, UTC))
    feed.rereport([feed.id(4)], datetime.fromtimestamp(at + 1, UTC))
    params: dict[str, str | int] = {
        "start_epoch": at,
        "end_epoch": at + 1,
        "sort_by": "last_updated",
    }
    status, body = await get_indicators(session, mati, params)
    assert status == 200
    assert [r["id"] for r in body["indicators"]] == [feed.id(3), feed.id(4)]
    assert body["indicators"][0]["last_updated"].endswith(":00.000Z")


async def test_include_flags_shape_the_records(
    session: aiohttp.ClientSession, mati: MatiSimulator
) -> None:
    base: dict[str, str | int] = {"start_epoch": START, "limit": 200}
    _, plain = await get_indicators(session, mati, base)
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
    _, full = await get_indicators(session, mati, {**base, **flags})
    keys = {k for r in full["indicators"] for k in r}
    assert keys >= {"threat_rating", "category", "campaigns", "reports"}
    assert "misp" not in keys
    # Flags live in the scroll: the cursor alone keeps them, flags sent with it override.
    _, alone = await get_indicators(session, mati, {"next": full["next"]})
    assert "misp" not in {k for r in alone["indicators"] for k in r}
    assert "category" in alone["indicators"][0]
    _, override = await get_indicators(
        session, mati, {"next": full["next"], "include_category": "false"}
    )
    assert all("category" not in r for r in override["indicators"])


async def test_gte_threatscore_drops_missing_and_low_ratings(
    session: aiohttp.ClientSession, mati: MatiSimulator
) -> None:
    params = from_start(limit=1000, gte_threatscore=60, include_threat_rating="true")
    _, body = await get_indicators(session, mati, params)
    expected = mati.feed.window(NOW - timedelta(days=31), NOW, gte_threatscore=60)
    assert {r["id"] for r in body["indicators"]} == {mati.feed.id(i) for i in expected}
    assert all(r["threat_rating"]["threat_score"] >= 60 for r in body["indicators"])
