"""Helpers any test may import: the one poll with a deadline, the one fake clock, a valid
environment to break one setting of, and Prometheus text read into comparable samples. Fixtures
live in conftest.py; this module holds plain values and functions, so no test module needs to
import another."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from redis.exceptions import RedisError

from shared.telemetry.metrics import Metrics
from tests.commands import CliResult

# ---- polling -------------------------------------------------------------------------------


async def wait_for(
    predicate: Callable[[], Any],
    timeout_s: float = 10.0,
    *,
    what: str = "condition",
    interval: float = 0.05,
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy; return that.

    Tests wait this way, never by sleeping a guessed time: a slow machine only makes them
    slower, not wrong. A Redis or socket error counts as "not yet" (tests that restart Redis or
    a server poll through the outage); on timeout, ``AssertionError`` names ``what`` and the
    last value or error seen. Any other exception, an assertion inside ``predicate`` included,
    ends the wait at once.
    """
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
        except (RedisError, OSError) as exc:
            value, last = None, exc
        else:
            last = value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last: {last!r}")
        await asyncio.sleep(interval)


# ---- fake time -----------------------------------------------------------------------------


class FakeTime:
    """A monotonic clock that moves only when the code under test sleeps (or the test moves
    ``now``), so back-offs and pacing cost no wall time and every wait asked for can be
    asserted exactly from ``sleeps``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)  # yield as a real sleep would, so other tasks get to run


# ---- settings ------------------------------------------------------------------------------

#: The secrets of ``VALID_ENV``, each unlike anything else a command prints: found in any
#: output, it leaked.
SECRETS: Mapping[str, str] = {
    "MATI_API_KEY": "mati-key-7f3e9a",
    "MATI_API_SECRET": "mati-secret-Zq81xP",
    "AZURE_CLIENT_SECRET": "azure-secret-Yw92kL",
}
#: Every setting each service requires, valid: a test adds or breaks the one it is about.
VALID_ENV: Mapping[str, str] = {
    **SECRETS,
    "AZURE_WORKSPACE_ID": "6f2a3c4d-1b2e-4f60-9a7b-0c1d2e3f4a5b",
    "AZURE_CLIENT_ID": "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
    "AZURE_TENANT_ID": "11111111-2222-4333-8444-555555555555",
}
#: A destinations file of two: contoso (its own minimum, its secret by reference) and
#: fabrikam-gov (another cloud's authority, OSINT taken, hashes for 30 days).
TWO_DESTINATIONS = """\
destinations:
  contoso:
    MINIMUM_CONFIDENCE: 90
    AZURE_CLIENT_SECRET: {env: CONTOSO_CLIENT_SECRET}
  fabrikam-gov:
    AZURE_AUTHORITY_HOST: https://login.microsoftonline.us
    EXCLUDE_OSINT: false
    HASH_INDICATOR_EXPIRATION: 30
"""
#: The secret contoso's block refers to.
CONTOSO_SECRET = "contoso-secret-Vb83Qw"


def destinations_env(directory: Path, text: str = TWO_DESTINATIONS, **more: str) -> dict[str, str]:
    """``VALID_ENV`` with ``text`` written as the destinations file it names."""
    path = directory / "destinations.yaml"
    path.write_text(text, encoding="utf-8")
    return {
        **VALID_ENV,
        "CONTOSO_CLIENT_SECRET": CONTOSO_SECRET,
        "DESTINATIONS_FILE": str(path),
        **more,
    }


#: A password for ``REDIS_URL``, for the checks that it is never printed either.
REDIS_PASSWORD = "redis-Pw-91xQ"


# ---- Prometheus samples --------------------------------------------------------------------

Labels = frozenset[tuple[str, str]]
Samples = dict[tuple[str, Labels], float]


def samples(text: str) -> Samples:
    """``{(sample name, labels): value}`` of a Prometheus text exposition, so a test compares
    values without caring about the order or formatting of the lines."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def labels(**values: str) -> Labels:
    return frozenset(values.items())


async def scrape(metrics: Metrics) -> Samples:
    """What ``/metrics`` would serve from ``metrics`` now, without a server."""
    body, content_type = await metrics.scrape()
    assert content_type.startswith("text/plain")
    return samples(body.decode())


# ---- start-up failures ---------------------------------------------------------------------


def assert_one_line(result: CliResult, *needles: str) -> str:
    """A start-up failure as a user meets it: stated once, on stderr, with every needle in it,
    and no traceback explaining it instead."""
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]
