"""The rig of test_workspace_follows_mati.py: one destination's real filter and uploader,
in-process, on the suite's Redis and the uploader rig's simulators (``World``: Entra ID and
Sentinel over TLS), and the simulated workspace read back as MATI's indicators.

Why a rig of its own: the filter rig plays the uploader's half by hand and the uploader rig
plays the filter's, while the property needs both services' real decisions in a row (what
the filter revokes depends on what the uploader committed). Both run side by side in their
``run`` loops, as replicas do, so the rig keeps working whichever queues the uploader reads
(``upload_queue`` and the priority lane ``revocation_queue``): a drain waits for both.

One ``Workspace`` on the one ``World`` of a test serves all its Hypothesis examples; each
example opens it (``async with``) and so starts from an empty Redis (queues, seen cache,
claims, counters, rate budget) and an empty workspace.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Self

from harness.pipeline import mati_properties
from services.filter.config import FilterConfig
from services.filter.worker import FilterWorker
from shared.adapters.credentials import TokenProvider
from shared.adapters.destination_state import CircuitState, DestinationState
from shared.adapters.redis_streams import RedisStreamsBus
from shared.adapters.workspace_state import Born, WorkspaceState
from shared.contract.messages import (
    raw_message,
    revocation_queue,
    subscription,
    upload_queue,
)
from shared.core.filters import evaluate
from shared.core.indicator import HashType, Indicator
from shared.core.parsing import parse_indicator, parse_timestamp
from shared.core.settings import Service, Settings, load_settings
from shared.core.stix import Draft, stix_id
from simulators.sentinel import STIX_ROUTE
from tests.helpers import wait_for
from tests.services.filter_rig import publish
from tests.services.uploader_rig import DEST, World

SOURCE = subscription(DEST)
#: Every queue the uploader takes from: a drain waits for both.
UPLOAD_LANES = (upload_queue(DEST), revocation_queue(DEST))
#: Generations looked for when reading an object's id back (each one follows a revocation;
#: an example of a few steps revokes a lineage a few times at most).
GENERATIONS = range(16)
#: A lineage: MATI's id and, for an md5 indicator's observables, the hash type.
Lineage = tuple[str, HashType | None]


@dataclass(frozen=True)
class Held:
    """The newest object of one lineage in the workspace."""

    generation: int
    obj: dict[str, Any]

    def live(self, now: datetime) -> bool:
        until = parse_timestamp(self.obj["valid_until"])
        return self.obj.get("revoked") is not True and until is not None and until > now


class Workspace:
    """The filter and uploader of ``DEST`` on ``World``'s Redis and simulators, restarted on
    each settings change, and what the simulated workspace holds. Used as ``async with``: it
    starts from an empty Redis and workspace, and stops the services it started."""

    def __init__(self, w: World) -> None:
        self.w = w
        self.bus = RedisStreamsBus(w.redis, consumer="filter-1", lock_duration_s=5.0)
        self.state = DestinationState(w.redis, DEST)
        self.settings = load_settings({"DESTINATION": DEST}, Service.FILTER)
        self._stop = asyncio.Event()
        self._running: list[asyncio.Task[None]] = []
        self._providers: list[TokenProvider] = []
        self._runs = 0

    def __repr__(self) -> str:
        # Short: Hypothesis prints it with every failing example.
        return f"Workspace({DEST!r})"

    async def __aenter__(self) -> Self:
        """An empty Redis and workspace, the bus's entities made again (a flush forgets the
        subscription's registration with its topic: publishes would reach no one)."""
        await self.w.redis.flushdb()
        self.w.sentinel.reset()
        # What the uploader's cache guard does on a new deployment: an empty workspace read,
        # the state born, and the filter (CACHE_REBUILD=auto) stops holding.
        await WorkspaceState(self.w.redis, self.state).mark_born(
            Born.REBUILT, at=datetime.now(UTC), objects=0
        )
        for source in (SOURCE, *UPLOAD_LANES):
            await self.bus.ensure(source)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def restart(self, env: Mapping[str, str]) -> Settings:
        """Both services stopped and started again on ``env``, as a redeploy does: a new
        ``FilterWorker`` and ``Uploader``, configured from the settings as their mains do,
        each in its ``run`` loop. Receives wait briefly, so a stop is quick."""
        await self.stop()
        self.settings = load_settings({**env, "DESTINATION": DEST}, Service.FILTER)
        config = replace(FilterConfig.from_settings(self.settings), receive_wait_s=0.02)
        filter_ = FilterWorker(config, bus=self.bus, state=self.state, rng=random.Random(1))
        known = len(self.w.providers)
        uploader = self.w.uploader(
            refresh_ratio=self.settings.validity_refresh_ratio,
            skip_uploaded=self.settings.enable_deduplication,
            receive_wait_s=0.02,
            linger_s=0.01,
        )
        self._providers += self.w.providers[known:]
        self._stop = asyncio.Event()
        self._running = [
            asyncio.create_task(filter_.run(self._stop)),
            asyncio.create_task(uploader.run(self._stop)),
        ]
        return self.settings

    async def stop(self) -> None:
        """Stop the services, and close the credentials of the stopped uploader here rather
        than when the test ends: an example restarts it a few times, a test runs dozens."""
        self._stop.set()
        running, self._running = self._running, []
        await asyncio.gather(*running)
        providers, self._providers = self._providers, []
        for provider in providers:
            await provider.aclose()
            self.w.providers.remove(provider)

    async def sync(self, records: Iterable[Mapping[str, Any]], *, full: bool = False) -> None:
        """What a fetcher's sync publishes: each record as a raw message, ``full`` marked as
        ``sync --once --full`` marks them (its run in the message id, so the bus takes a
        re-judging of a record it already carried)."""
        self._runs += 1
        run_id = f"run-{self._runs}"
        messages = [raw_message(record, run_id=run_id, full=full) for record in records]
        await publish(self.bus, *messages)

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Wait until everything published is decided, uploaded and committed."""
        await wait_for(self._settled, timeout_s, what="the queues settled", interval=0.01)

    async def _settled(self) -> bool:
        """Nothing waits or is locked on the subscription, then on either upload queue. In
        this order: the filter publishes a record's uploads before completing it, and the
        uploader commits before completing, so empty in this order means done."""
        for task in self._running:
            if task.done():
                task.result()  # a service that stopped on its own fails the wait with its error
                raise AssertionError("a service stopped on its own")
        # An open circuit holds the backlog until Sentinel takes it: a refusal, said at once.
        circuit, reason, _ = await self.state.circuit()
        assert circuit is CircuitState.CLOSED, f"the uploader's circuit is {circuit}: {reason}"
        for source in (SOURCE, *UPLOAD_LANES):
            counts = await self.bus.counts(source)
            if counts.depth or counts.in_flight:
                return False
        return True

    def newest(self) -> dict[Lineage, Held]:
        """Per lineage, the object last uploaded (by ``modified``, then generation), mapped
        back through the product's extension (MATI's id) and the derived ids (hash type,
        generation). An object that maps back to no lineage fails here."""
        newest: dict[Lineage, Held] = {}
        for object_id, obj in self.w.sentinel.store.items():
            mati_id = mati_properties(obj).get("mati_id")
            assert isinstance(mati_id, str), f"{object_id} carries no MATI id"
            found = _lineage_of(object_id, mati_id)
            assert found is not None, f"{object_id} is no id of {mati_id}"
            lineage, generation = found
            held = Held(generation, obj)
            current = newest.get(lineage)
            if current is None or _order(held) > _order(current):
                newest[lineage] = held
        return newest

    def live(self, now: datetime) -> dict[Lineage, Held]:
        return {lineage: held for lineage, held in self.newest().items() if held.live(now)}

    async def refusals(self) -> list[str]:
        """Whatever Sentinel refused or the services set aside: answers other than 200,
        dead letters on any of the destination's queues, records counted rejected."""
        found = [
            f"HTTP {r.status}"
            for r in self.w.sentinel.request_log
            if r.route == STIX_ROUTE and r.status != 200
        ]
        for source in (SOURCE, *UPLOAD_LANES):
            dead = (await self.bus.counts(source)).dead_letter
            if dead:
                found.append(f"{dead} dead letters on {source}")
        counters = await self.state.counters()
        found += [f"{k}={v}" for k, v in counters.items() if k.startswith("rejected") and v]
        return found


def accepted(records: Iterable[Mapping[str, Any]], settings: Settings) -> dict[Lineage, Draft]:
    """What the pure filters accept of ``records`` under ``settings``: each lineage and the
    draft its object must carry (under the lineage's own id; ``Draft.reissued`` moves it to a
    later generation's)."""
    policy, stix_policy = settings.filter_policy(), settings.stix_policy()
    found: dict[Lineage, Draft] = {}
    for record in records:
        indicator = parse_indicator(record)
        assert isinstance(indicator, Indicator), indicator
        verdict = evaluate(indicator, policy)
        for observable in verdict if isinstance(verdict, tuple) else ():
            found[(indicator.id, observable.hash_type)] = Draft.of(observable, stix_policy)
    return found


def _lineage_of(object_id: str, mati_id: str) -> tuple[Lineage, int] | None:
    for hash_type in (None, *HashType):
        for generation in GENERATIONS:
            if stix_id(mati_id, hash_type, generation) == object_id:
                return (mati_id, hash_type), generation
    return None


def _order(held: Held) -> tuple[datetime, int]:
    modified = parse_timestamp(held.obj["modified"])
    assert modified is not None, held.obj["modified"]
    return modified, held.generation
