"""The world every MATI client test runs in: the simulator over real TLS, a session, and a
client whose clock and sleep and the simulator's clock all read one ``FakeTime``."""

from __future__ import annotations

import contextlib
import random
import ssl
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, Final, TypeVar

import aiohttp
import pytest

from shared.adapters.http import open_session
from shared.adapters.mati_client import MatiClient
from shared.adapters.mati_paging import IndicatorQuery, RawPage
from shared.core.backoff import Backoff
from shared.core.secrets import Secret
from simulators.feed import Feed
from simulators.mati import MatiSimulator
from tests import helpers

KEY = "sim-mati-key"
SECRET = "sim-mati-secret"
NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
NOW_EPOCH = int(NOW.timestamp())
COUNT = 250
LIMIT = 100
SEED = 42
INCLUDE_FLAGS = {
    "include_threat_rating",
    "include_category",
    "include_misp",
    "include_campaigns",
    "include_reports",
}


class FakeTime(helpers.FakeTime):
    """One clock for client and simulator: the simulator reads it as an epoch from ``NOW``."""

    START: Final = 5000.0

    def __init__(self) -> None:
        super().__init__(self.START)

    def epoch(self) -> float:
        return NOW_EPOCH + (self.now - self.START)


def window(**overrides: Any) -> IndicatorQuery:
    values: dict[str, Any] = {
        "start_epoch": int((NOW - timedelta(days=31)).timestamp()),
        "end_epoch": NOW_EPOCH,
        "limit": LIMIT,
    }
    values.update(overrides)
    return IndicatorQuery(**values)


@contextlib.asynccontextmanager
async def world(
    server_ssl: ssl.SSLContext,
    client_ssl: ssl.SSLContext,
    *,
    timeout_s: float = 10.0,
    client: dict[str, Any] | None = None,
    **sim: Any,
) -> AsyncIterator[SimpleNamespace]:
    """A started simulator, an open session and a client wired to one fake time."""
    fake = FakeTime()
    feed = Feed(seed=7, count=sim.pop("count", COUNT), days=30, now=NOW)
    async with (
        MatiSimulator(server_ssl, feed=feed, clock=fake.epoch, **sim) as mati,
        open_session(client_ssl, timeout_s=timeout_s) as session,
    ):
        yield SimpleNamespace(
            sim=mati,
            feed=feed,
            fake=fake,
            session=session,
            client=fake_client(session, mati.url, fake, **(client or {})),
        )


def fake_client(
    session: aiohttp.ClientSession, base_url: str, fake: FakeTime, **options: Any
) -> MatiClient:
    """A client with the simulator's credentials, no pace, a seeded jitter and ``fake`` time,
    unless ``options`` say otherwise."""
    values: dict[str, Any] = {
        "api_key": Secret(KEY),
        "api_secret": Secret(SECRET),
        "requests_per_second": float("inf"),
        "sleep": fake.sleep,
        "clock": fake.clock,
        "rng": random.Random(SEED),
    }
    values.update(options)
    return MatiClient(session, base_url=base_url, **values)


async def collect(client: MatiClient, query: IndicatorQuery | None = None) -> list[RawPage]:
    return [page async for page in client.pages(query or window())]


async def recovers(w: SimpleNamespace, *, sleeps: list[float]) -> None:
    """The whole feed still arrives, after exactly the waits ``sleeps``: a retry that lost or
    repeated a page, or waited other than it chose to, fails here."""
    pages = await collect(w.client)
    assert len(ids(pages)) == COUNT
    assert w.fake.sleeps == sleeps


E = TypeVar("E", bound=BaseException)


async def gives_up(w: SimpleNamespace, error: type[E]) -> E:
    """The error collecting the feed ends in, for the test to examine."""
    with pytest.raises(error) as caught:
        await collect(w.client)
    return caught.value


def ids(pages: Iterable[RawPage]) -> list[str]:
    return [record["id"] for page in pages for record in page.indicators]


def statuses(sim: MatiSimulator, route: str = "indicator") -> list[int | None]:
    return [r.status for r in sim.recorder.of(route)]


def first_jitter(retry: int = 1, *, seed: int = SEED) -> float:
    """The wait the client's seeded RNG draws for its first back-off."""
    return Backoff().jittered(retry, random.Random(seed))


def assert_no_secret(exc: BaseException, *secrets: str | None) -> None:
    """Neither the error nor anything it chains to shows a secret in ``str`` or ``repr``."""
    seen: BaseException | None = exc
    while seen is not None:
        for text in (str(seen), repr(seen), repr(seen.args)):
            for secret in secrets:
                if secret:
                    assert secret not in text, f"secret leaked in {type(seen).__name__}"
        seen = seen.__cause__ or seen.__context__
