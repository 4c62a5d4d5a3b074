"""Carries out a chaos plan against a running pipeline, event by event, at the planned times.

A kill waits until its replica runs (it may still be restarting from the previous kill), then
for its phase (``harness.chaos.phases``), at most its service's ``phase_timeout_s`` (the
fetcher's spans a sync schedule: between syncs it has no page to be killed in); without the
phase it is killed there and then, and recorded as unobserved. Each replica's kills run in a
sequence of their own, so one waiting for its phase delays no other. Kills are SIGKILL; the
replica's next incarnation starts after the planned delay, in the background, as the kubelet
would start it.
A killed uploader is a disruption in the upload ledger, scoped to its connections to Sentinel.

Redis is killed (SIGKILL) and started again on the same directory and port, so it replays its
AOF; the services must find it again by themselves. Its outage is a disruption of every upload.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from harness.chaos.actions import Actions
from harness.chaos.fleet import Fleet, Replica
from harness.chaos.ledger import Disruption, DisruptionKind, Ledger
from harness.chaos.phases import Watcher
from harness.chaos.scheduler import Action, Event, Kill, Plan, RedisKill
from harness.pipeline import Pipeline

#: Tries of one planned kill whose replica was stopped by a rollout under it.
TRIES = 3
#: The shortest wait for a phase, even for a kill that is late already.
MIN_PHASE_WAIT_S = 3.0
#: How long a kill waits for its replica to be running again.
UP_TIMEOUT_S = 90.0
#: After a killed filter's locks ran out, how long its messages may take to be handled again.
REDELIVERY_MARGIN_S = 30.0


@dataclass(frozen=True)
class KillRecord:
    service: str
    replica: int
    phase: str
    planned_s: float
    at_s: float
    observed: bool
    restart_after_s: float


@dataclass(frozen=True)
class RedisRecord:
    at_s: float
    down_s: float
    back_after_s: float


@dataclass
class Executor:
    pipeline: Pipeline
    fleet: Fleet
    watcher: Watcher
    ledger: Ledger
    actions: Actions
    #: How long a kill of each service waits for its phase.
    phase_timeout_s: dict[str, float]
    #: The bus's lock duration: a killed filter's messages come back after it.
    lock_duration_s: float
    started: float = field(default_factory=time.monotonic)
    kills: list[KillRecord] = field(default_factory=list)
    skipped: list[Kill] = field(default_factory=list)
    redis: list[RedisRecord] = field(default_factory=list)
    #: The last kill, Redis restart or action (monotonic), for the drain time.
    last_disruption: float = 0.0
    _restarts: list[asyncio.Task[None]] = field(default_factory=list)

    def now_s(self) -> float:
        return round(time.monotonic() - self.started, 2)

    async def execute(self, plan: Plan) -> None:
        """Redis kills and actions in one sequence; each replica's kills in a sequence of
        its own, so a kill waiting for its phase holds up no other replica's."""
        by_replica: dict[tuple[str, int], list[Kill]] = {}
        for kill in plan.kills:
            by_replica.setdefault((kill.service, kill.replica), []).append(kill)
        others = [e for e in plan.events() if not isinstance(e, Kill)]
        sequences = [self._sequence(others), *(self._sequence(k) for k in by_replica.values())]
        await asyncio.gather(*sequences)

    async def _sequence(self, events: Sequence[Event]) -> None:
        """The events in time order; a kill waits for its phase no later than the next
        event's time (at least ``MIN_PHASE_WAIT_S``), so a late one does not push the rest."""
        ordered = sorted(events, key=lambda e: e.at_s)
        for event, following in zip(ordered, [*ordered[1:], None], strict=True):
            delay = self.started + event.at_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if isinstance(event, Kill):
                until = None if following is None else self.started + following.at_s
                await self._kill(event, until)
            elif isinstance(event, RedisKill):
                await self._kill_redis(event)
            else:
                await self._act(event)

    async def restarted(self) -> None:
        """Wait for every restart still pending."""
        await asyncio.gather(*self._restarts)

    async def _act(self, action: Action) -> None:
        await self.actions.run(action)
        self.last_disruption = time.monotonic()

    async def _kill(self, kill: Kill, until: float | None) -> None:
        replica = self.fleet.of(kill.service, kill.replica)
        for _ in range(TRIES):
            if not await self._up(replica):
                break
            wait = self.phase_timeout_s[kill.service]
            if until is not None:
                wait = max(MIN_PHASE_WAIT_S, min(wait, until - time.monotonic()))
            done = await self._kill_once(kill, replica, wait)
            if done is not None:
                at, observed = done
                self.last_disruption = at
                at_s = round(at - self.started, 2)
                self.kills.append(
                    KillRecord(kill.service, kill.replica, kill.phase.value, kill.at_s, at_s,
                               observed, kill.restart_after_s)
                )  # fmt: skip
                restart = self.fleet.restart(replica, kill.restart_after_s)
                self._restarts.append(asyncio.create_task(restart))
                return
        self.skipped.append(kill)

    async def _kill_once(
        self, kill: Kill, replica: Replica, wait_s: float
    ) -> tuple[float, bool] | None:
        """Kill the replica's current incarnation in the planned phase, or at once when the
        phase does not come: (when, whether the phase was seen); None when that incarnation
        was stopped meanwhile (by a rollout)."""
        incarnation, pid, consumer = replica.incarnation, replica.pid, replica.consumer
        if pid is None or consumer is None:
            return None
        sentinel_port = self.pipeline.sims.sentinel.port if kill.service == "uploader" else None
        killed: list[float] = []

        async def strike() -> None:
            ports = await self.fleet.kill(replica, incarnation, sentinel_port)
            if ports is None:
                return
            at = time.monotonic()
            killed.append(at)
            if kill.service == "uploader":
                self.ledger.disrupt(Disruption(DisruptionKind.UPLOADER_KILL, at, at, ports))
            elif kill.service == "filter":
                held = await self.watcher.held_by(consumer)
                back = at + self.lock_duration_s + REDELIVERY_MARGIN_S
                kind = DisruptionKind.FILTER_KILL
                self.ledger.disrupt(Disruption(kind, at, back, indicators=held))

        observed = await self.watcher.strike(
            kill.service, pid, consumer, kill.phase, strike, wait_s
        )
        if not killed:
            observed = False
            await strike()
        return (killed[0], observed) if killed else None

    async def _up(self, replica: Replica) -> bool:
        """Wait until the replica runs and has logged its start."""
        deadline = time.monotonic() + UP_TIMEOUT_S
        while time.monotonic() < deadline:
            if replica.running and self.fleet.started(replica) is not None:
                return True
            await asyncio.sleep(0.1)
        return False

    async def _kill_redis(self, event: RedisKill) -> None:
        server = self.pipeline.redis_server
        killed = time.monotonic()
        await asyncio.to_thread(server.kill)
        await asyncio.sleep(event.down_s)
        await asyncio.to_thread(server.start)  # same directory and port: the AOF is replayed
        back = time.monotonic()
        self.ledger.disrupt(Disruption(DisruptionKind.REDIS_KILL, killed, back))
        self.last_disruption = back
        self.redis.append(
            RedisRecord(round(killed - self.started, 2), event.down_s, round(back - killed, 2))
        )
