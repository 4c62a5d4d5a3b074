"""The whole product on one machine against the simulators: what `make demo` and the
end-to-end tests both drive.

A ``Pipeline`` owns a private Redis (the embedded bus), the simulators, and the services as
real child processes started with the settings that point them at the simulators. It can
answer what the simulated workspace *should* hold, computed from the simulated feed, so the
demo and the tests check delivery against an expectation rather than against a count.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Self

import yaml
from redis.asyncio import Redis

from harness import oracle
from services.cli.redis_server import LocalRedis
from services.cli.supervisor import Child, ServiceProcesses
from services.configuration import settings_from
from shared.adapters.destination_state import DestinationState
from shared.adapters.feed_state import FeedState
from shared.adapters.redis_streams import RedisStreamsBus
from shared.contract.bus import Bus
from shared.contract.messages import revocation_queue, subscription, upload_queue
from shared.core.filters import evaluate
from shared.core.fingerprint import fingerprint
from shared.core.indicator import Indicator
from shared.core.parsing import parse_indicator
from shared.core.settings import Service, Settings, load_settings
from shared.core.stix import content, stix_id
from simulators.feed import Feed
from simulators.together import SimulatedWorkspace, Simulators

DESTINATION = "demo"
#: Filters that let every record through, so a feed of N indicators is N uploads: what the
#: crash tests need (volume in every queue, not a realistic funnel) and the benchmarks' worst
#: case (nothing is dropped early, so figures stay per indicator).
ACCEPT_ALL: Mapping[str, str] = {
    "MINIMUM_CONFIDENCE": "0",
    "MINIMUM_THREAT_SCORE": "0",
    "EXCLUDE_OSINT": "false",
}
#: The product's STIX property extension (MATI id, threat score, fingerprint), spelled out
#: rather than imported, so the checks notice if the product ever writes another one;
#: tests/simulators/test_together.py pins it to ``shared.core.fingerprint.EXTENSION_ID``.
MATI_EXTENSION: Final = "extension-definition--8b329901-f0cd-573b-8581-99c3f0668664"


def mati_properties(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The product's extension of an uploaded object (``mati_id``, ``threat_score``,
    ``fingerprint``), or ``{}`` when the object has none."""
    extensions = obj.get("extensions")
    found = extensions.get(MATI_EXTENSION) if isinstance(extensions, dict) else None
    return found if isinstance(found, dict) else {}


@dataclass(frozen=True)
class Expected:
    """What the workspace must hold: STIX id -> fingerprint of its content."""

    objects: dict[str, str]
    drops: dict[str, int] = field(default_factory=dict)


class Pipeline:
    """Redis, simulators and service processes; ``settings`` is what every service runs with."""

    def __init__(
        self,
        state_dir: Path,
        *,
        feed: Feed,
        env: Mapping[str, str] | None = None,
        sentinel_requests_per_minute: int = 100,
        sentinel_window_s: float = 60.0,
    ) -> None:
        self.state_dir = state_dir
        self.feed = feed
        self.redis_server = LocalRedis(state_dir / "redis")
        self.sims = Simulators(
            state_dir / "simulators",
            feed=feed,
            sentinel_requests_per_minute=sentinel_requests_per_minute,
            sentinel_window_s=sentinel_window_s,
        )
        self._extra_env = dict(env or {})
        self.env: dict[str, str] = {}
        self.processes: ServiceProcesses | None = None
        self.redis: Redis | None = None
        self._observer: Bus | None = None
        #: Destinations of the destinations file (``add_destination``), by name.
        self.destinations: dict[str, dict[str, Any]] = {}

    async def start(self) -> None:
        await asyncio.to_thread(self.redis_server.start)
        await self.sims.start()
        self.env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "DESTINATION": DESTINATION,
            "LOG_FORMAT": "json",
            "MATI_REQUESTS_PER_SECOND": "20",
            "HEALTH_PORT": "0",
            **self.sims.environment(),
            "REDIS_URL": self.redis_server.url,
            **self._extra_env,
        }
        self.processes = ServiceProcesses(self.env, log_dir=self.state_dir / "logs")
        self.redis = Redis.from_url(self.redis_server.url)
        self._observer = self._observer_bus(self.redis)

    def _observer_bus(self, redis: Redis) -> Bus:
        """A bus client of our own, to watch the queues the services work on."""
        if self.env.get("BUS") == "servicebus":
            from shared.adapters.servicebus import ServiceBusBus

            return ServiceBusBus.from_connection_string(
                self.env["SERVICEBUS_CONNECTION_STRING"], consumer="observer"
            )
        return RedisStreamsBus(redis, consumer="observer")

    async def redis_server_stop(self) -> None:
        await asyncio.to_thread(self.redis_server.stop)

    async def redis_server_start(self) -> None:
        await asyncio.to_thread(self.redis_server.start)

    async def stop(self) -> None:
        if self.processes is not None:
            await self.processes.stop_all(grace_s=30)
        if self._observer is not None:
            await self._observer.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        await self.sims.stop()
        await asyncio.to_thread(self.redis_server.stop)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def settings(self) -> Settings:
        return load_settings(self.env, Service.ALL)

    def _processes(self) -> ServiceProcesses:
        if self.processes is None:
            raise RuntimeError("pipeline is not started")
        return self.processes

    async def start_service(
        self, name: str, *, label: str | None = None, destination: str | None = None
    ) -> Child:
        """``python -m services.<name>``; ``destination``: the one of the destinations file it
        serves (``DESTINATION``)."""
        env = None if destination is None else {"DESTINATION": destination}
        return await self._processes().start(name, label=label, env=env)

    async def add_destination(
        self,
        name: str,
        settings: Mapping[str, Any] | None = None,
        **workspace: Any,
    ) -> SimulatedWorkspace:
        """One more destination in the destinations file (written to the state directory and
        named by ``DESTINATIONS_FILE`` for every service started from now on): a simulated
        workspace of its own (``workspace``: ``Simulators.add_workspace``'s options) and
        ``settings`` (its filters, expirations…) over the simulator's endpoints."""
        created = await self.sims.add_workspace(name, **workspace)
        self.destinations[name] = {**created.block(), **(settings or {})}
        path = self.state_dir / "destinations.yaml"
        path.write_text(yaml.safe_dump({"destinations": self.destinations}), encoding="utf-8")
        self.change_settings(
            {
                "DESTINATIONS_FILE": str(path),
                created.secret_variable: created.credentials.client_secret,
            }
        )
        return created

    def settings_of(self, destination: str) -> Settings:
        """A destination's effective settings, as its uploader reads them."""
        settings, _ = settings_from(self.env, Service.UPLOADER, destination)
        return settings

    async def first_sync(self, *, timeout_s: float = 90) -> Child:
        """A filter and an uploader started, one sync, and everything it published uploaded;
        returns the filter, for a test that restarts it with new settings."""
        filter_ = await self.start_service("filter")
        await self.start_service("uploader")
        if await self.sync_once() != 0:
            raise AssertionError("the first sync failed")
        await self.wait_drained(timeout_s=timeout_s)
        return filter_

    async def stop_service(self, child: Child) -> int:
        """SIGTERM, as a rollout stops a pod; its exit code."""
        return await self._processes().stop(child)

    def change_settings(self, changes: Mapping[str, str]) -> None:
        """New setting values for every service started from now on (and for ``expected``),
        as an operator's redeploy gives them; running services keep theirs until restarted."""
        self.env.update(changes)
        self._processes().env.update(changes)

    async def sync_once(self, *, timeout_s: float = 300, full: bool = False) -> int:
        """``mati2sentinel sync --once [--full]`` as its own process; returns its exit code."""
        args = ("sync", "--once", "--full") if full else ("sync", "--once")
        return await self.command(*args, label="sync", timeout_s=timeout_s)

    async def command(self, *args: str, label: str, timeout_s: float = 60) -> int:
        """``mati2sentinel args`` as its own process, as an operator runs it (its output goes
        to ``<label>.log``); returns its exit code."""
        child = await self._processes().start("cli", *args, label=label)
        return await self._processes().wait(child, timeout_s)

    @property
    def observer(self) -> Bus:
        """A bus client of the harness's own, on the bus the services use."""
        if self._observer is None:
            raise RuntimeError("pipeline is not started")
        return self._observer

    async def queued_uploads(self, destination: str = DESTINATION) -> int:
        """Messages waiting or held in the destination's upload queue (not its lane)."""
        counts = await self.observer.counts(upload_queue(destination))
        return counts.depth + counts.in_flight

    async def queues_empty(self, destination: str = DESTINATION) -> bool:
        """Nothing waiting or locked on the destination's subscription, upload queue and
        priority lane."""
        for source in (
            subscription(destination),
            upload_queue(destination),
            revocation_queue(destination),
        ):
            counts = await self.observer.counts(source)
            if counts.depth or counts.in_flight:
                return False
        return True

    async def wait_drained(
        self, *, timeout_s: float = 300, settle_s: float = 1.0, destination: str = DESTINATION
    ) -> None:
        """Poll until both queues stay empty for ``settle_s``; raise ``TimeoutError`` if not."""
        deadline = time.monotonic() + timeout_s
        empty_since: float | None = None
        while time.monotonic() < deadline:
            if await self.queues_empty(destination):
                empty_since = empty_since or time.monotonic()
                if time.monotonic() - empty_since >= settle_s:
                    return
            else:
                empty_since = None
            await asyncio.sleep(0.2)
        raise TimeoutError("the pipeline did not drain in time")

    async def counters(
        self, destination: str = DESTINATION
    ) -> tuple[dict[str, int], dict[str, int]]:
        """(fetcher counters, destination counters) as ``status`` shows them."""
        if self.redis is None:
            raise RuntimeError("pipeline is not started")
        feed = await FeedState(self.redis).counters()
        counted = await DestinationState(self.redis, destination).counters()
        return feed, counted

    def expected(
        self,
        records: Iterable[Mapping[str, Any]] | None = None,
        *,
        settings: Settings | None = None,
    ) -> Expected:
        """The objects the filters accept from ``records`` (default: the whole feed now).

        Computed with the product's parse, filter and mapping (the ids and fingerprints the
        workspace must hold), then checked against ``harness.oracle``, which decides from the
        feed's own truth: a parser or filter bug fails here instead of agreeing with itself.
        ``settings``: a destination's (``settings_of``); default: the environment's."""
        settings = settings or self.settings
        policy, stix_policy = settings.filter_policy(), settings.stix_policy()
        objects: dict[str, str] = {}
        drops: Counter[str] = Counter()
        product: set[oracle.Accepted] = set()
        current = records is None
        source = list(self.feed.records(range(len(self.feed))) if records is None else records)
        for record in source:
            indicator = parse_indicator(record)
            if not isinstance(indicator, Indicator):
                drops[f"rejected_{indicator.reason}"] += 1
                continue
            verdict = evaluate(indicator, policy)
            if not isinstance(verdict, tuple):
                drops[f"dropped_{verdict}"] += 1
                continue
            for observable in verdict:
                key = stix_id(indicator.id, observable.hash_type)
                objects[key] = fingerprint(content(observable, stix_policy))
                hash_type = observable.hash_type.value if observable.hash_type else None
                product.add((indicator.id, hash_type))
        truth, judged = oracle.accepted(self.feed, source, policy, current=current)
        mine = {entry for entry in product if entry[0] in judged}
        if mine != truth:
            raise AssertionError(
                "the product's parse and filters disagree with the feed's truth: "
                f"accepted but not true {sorted(mine - truth)[:5]}, "
                f"true but not accepted {sorted(truth - mine)[:5]}"
            )
        return Expected(objects, dict(drops))
