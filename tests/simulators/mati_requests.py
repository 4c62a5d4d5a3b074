"""How the MATI simulator tests talk to it: its made-up credentials, a clock they move by hand,
and the token, page and scroll requests a client makes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson

from simulators.mati import MatiSimulator

NOW = datetime(2025, 3, 9, 8, 0, 0, tzinfo=UTC)
KEY, SECRET = "sim-mati-key", "sim-mati-secret"
BASIC = aiohttp.encode_basic_auth(KEY, SECRET)
AUTH = {"Authorization": BASIC}
START = int((NOW - timedelta(days=31)).timestamp())


def from_start(**options: str | int) -> dict[str, str | int]:
    """Query parameters for a window from ``START``, so a test states only the options it is
    about."""
    return {"start_epoch": START, **options}


class Clock:
    """A clock the test moves by hand: token and cursor expiry without sleeping."""

    def __init__(self) -> None:
        self.now = NOW.timestamp()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


MakeMati = Callable[..., Awaitable[MatiSimulator]]


async def fetch_token(session: aiohttp.ClientSession, mati: MatiSimulator, **form: str) -> Any:
    data = {"grant_type": "client_credentials", **form}
    headers = {"Authorization": BASIC}
    async with session.post(f"{mati.url}/token", data=data, headers=headers) as response:
        assert response.status == 200
        return await response.json()


async def get_indicators(
    session: aiohttp.ClientSession,
    mati: MatiSimulator,
    params: Mapping[str, str | int],
    *,
    auth: str | None = BASIC,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    all_headers = {**({"Authorization": auth} if auth else {}), **(headers or {})}
    async with session.get(
        f"{mati.url}/v4/indicator", params=params, headers=all_headers
    ) as response:
        body = await response.read()
        return response.status, (orjson.loads(body) if body else None)


async def page_all(
    session: aiohttp.ClientSession, mati: MatiSimulator, params: Mapping[str, str | int]
) -> tuple[list[dict[str, Any]], list[tuple[int, Any]]]:
    """Follow ``next`` with the cursor as the only parameter; return records and raw answers."""
    answers = []
    status, body = await get_indicators(session, mati, params)
    answers.append((status, body))
    records: list[dict[str, Any]] = []
    while status == 200:
        records.extend(body["indicators"])
        if "next" not in body:
            break
        status, body = await get_indicators(session, mati, {"next": body["next"]})
        answers.append((status, body))
    return records, answers
