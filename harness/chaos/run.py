"""One chaos run on one bus: set up, carry out the plan, go quiet, drain, check, report.

1. A feed of ``size.indicators`` with a few records planted broken; the simulators with
   random faults, gates and the upload ledger (``harness.chaos.faults``); Entra tokens that
   live two minutes; on Service Bus, the fake AMQP peer with the entities an operator creates
   (and its own chaos when it offers one).
2. The services as a Deployment would run them: one fetcher, two filters, two uploaders,
   each restarted when it dies (``harness.chaos.fleet``).
3. The plan (``harness.chaos.scheduler``), event by event (``harness.chaos.executor``).
4. Quiet: no more faults; the operator's full sync finishes; every restart is done; the
   queues drain. The time from the last fault to the drain is reported.
5. The checks (``harness.chaos.checks``) and the upload ledger's bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from harness.chaos import checks, faults
from harness.chaos.actions import Actions
from harness.chaos.executor import Executor
from harness.chaos.fleet import Fleet
from harness.chaos.ledger import Ledger
from harness.chaos.phases import Watcher
from harness.chaos.report import Outcome
from harness.chaos.scheduler import Plan, make_plan
from harness.chaos.variants import FEED_DAYS, PEER_FAULT_RATE, TOKEN_TTL_S, Variant
from harness.pipeline import DESTINATION, Pipeline
from shared.adapters.feed_state import FeedState
from shared.contract.bus import Source
from shared.contract.messages import INDICATORS, revocation_queue, subscription, upload_queue
from shared.core.errors import PipelineError
from simulators.feed import Feed

if TYPE_CHECKING:
    from tests.servicebus_peer import FakeServiceBus

#: How long the queues must stay empty to count as drained.
SETTLE_S = 3.0


def say(text: str) -> None:
    print(text, flush=True)


def planted_records(feed: Feed, count: int, rng: random.Random) -> dict[int, str]:
    """Feed index -> how it is broken, for ``count`` records spread over the feed."""
    indexes = sorted(rng.sample(range(len(feed)), count))
    return {i: checks.PLANTED_KINDS[n % len(checks.PLANTED_KINDS)] for n, i in enumerate(indexes)}


@contextmanager
def service_bus(bus: str) -> Iterator[tuple[dict[str, str], FakeServiceBus | None]]:
    """The bus's settings, and on Service Bus the fake peer (tests/servicebus_peer, imported
    only then) with the entities an operator creates (docs/servicebus.md)."""
    if bus != "servicebus":
        yield {"BUS": "redis"}, None
        return
    from shared.adapters.servicebus_messages import REPLAY_TO
    from tests.servicebus_peer import FakeServiceBus, ReplayRule

    with FakeServiceBus() as namespace:
        namespace.create_topic(INDICATORS.name)
        namespace.create_subscription(
            INDICATORS.name, DESTINATION, rule=ReplayRule(REPLAY_TO, DESTINATION)
        )
        namespace.create_queue(upload_queue(DESTINATION).name)
        namespace.create_queue(revocation_queue(DESTINATION).name)
        env = {"BUS": "servicebus", "SERVICEBUS_CONNECTION_STRING": namespace.connection_string}
        yield env, namespace


async def run(variant: Variant, state_dir: Path, command: str) -> Outcome:
    began = time.monotonic()
    shutil.rmtree(state_dir, ignore_errors=True)
    size = variant.size
    rng = random.Random(f"{variant.seed}:run")  # noqa: S311 - reproducible, not a secret
    feed = Feed(seed=variant.seed, count=size.indicators, days=FEED_DAYS)
    planted = planted_records(feed, variant.planted, rng)
    plan = make_plan(variant.seed, size)
    ledger = Ledger()
    with service_bus(variant.bus) as (bus_env, namespace):
        pipeline = Pipeline(
            state_dir,
            feed=feed,
            env={**variant.env, **bus_env},
            sentinel_requests_per_minute=variant.sentinel_requests,
            sentinel_window_s=variant.sentinel_window_s,
        )
        injection = faults.install(
            pipeline.sims, seed=variant.seed, rate=variant.fault_rate, ledger=ledger
        )
        pipeline.sims.entra.token_ttl_s = TOKEN_TTL_S
        pipeline.sims.mati.page_latency_s = variant.page_latency_s
        pipeline.sims.mati.planted = planted
        if namespace is not None:
            peer_rng = random.Random(f"{variant.seed}:servicebus")  # noqa: S311 - reproducible
            namespace.chaos(PEER_FAULT_RATE, peer_rng)
            injection.quieted.append(lambda: namespace.chaos(0.0, peer_rng))
        async with pipeline:
            say(f"chaos on {variant.bus}: seed {variant.seed}, {size.indicators:,} indicators, "
                f"{size.service_kills} service kills and {size.redis_kills} Redis kills within "
                f"{size.window_s:.0f} s; logs in {state_dir / 'logs'}")  # fmt: skip
            outcome = await _chaos(variant, pipeline, plan, ledger, injection, planted, feed)
        if namespace is not None:
            outcome.peer_faults = namespace.fault_counts()
            if namespace.failure is not None:
                failure = repr(namespace.failure)[:300]
                outcome.checks["the fake Service Bus kept serving"] = [failure]
    outcome.command = command
    outcome.duration_s = round(time.monotonic() - began, 1)
    outcome.logs = str(state_dir / "logs")
    return outcome


async def _chaos(
    variant: Variant,
    pipeline: Pipeline,
    plan: Plan,
    ledger: Ledger,
    injection: faults.Injection,
    planted: dict[int, str],
    feed: Feed,
) -> Outcome:
    size = variant.size
    fleet = Fleet(pipeline, size.replicas)
    sims = pipeline.sims
    sources: dict[str, Source] = {
        "subscription": subscription(DESTINATION),
        "upload": upload_queue(DESTINATION),
        "revoke": revocation_queue(DESTINATION),
    }
    assert pipeline.redis is not None
    watcher = Watcher(
        pipeline.redis,
        mati=injection.gates["mati"],
        mati_port=sims.mati.port,
        sentinel=injection.gates["sentinel"],
        sentinel_port=sims.sentinel.port,
        sources=sources if variant.bus == "redis" else None,
    )
    actions = Actions(
        pipeline, fleet, injection, ledger,
        rng=random.Random(f"{variant.seed}:operator"),  # noqa: S311 - reproducible
        suppressions=variant.suppressions,
        excluded={feed.id(i) for i in planted},
        cursor_wait_s=max(variant.phase_timeout_s, 20.0),
        full_sync_timeout_s=variant.drain_timeout_s,
    )  # fmt: skip
    stop = asyncio.Event()
    await fleet.start()
    supervisor = asyncio.create_task(fleet.supervise(stop))
    try:
        await _uploading(pipeline, fleet, variant.drain_timeout_s)
        lock_s = pipeline.settings.bus_lock_duration_seconds
        executor = Executor(
            pipeline, fleet, watcher, ledger, actions, variant.phase_timeouts, lock_s
        )
        say(f"  uploads are flowing: the plan starts now ({len(plan.events())} events)")
        await executor.execute(plan)
        say(f"  [{executor.now_s():6.0f} s] plan carried out; quiet from now on")
        injection.quiet()
        quiet_since = datetime.now(UTC)
        await actions.finish()
        await executor.restarted()
        last_fault = max(executor.last_disruption, injection.last_fault_at or 0.0)
        drained_at = await _drained(pipeline, variant.drain_timeout_s, quiet_since)
        say(f"  [{executor.now_s():6.0f} s] " + ("drained" if drained_at else "NOT drained"))
        drain_s = None if drained_at is None else round(drained_at - last_fault, 1)
        outcome = await _checked(variant, pipeline, fleet, executor, injection, ledger, feed,
                                 planted, actions, drain_s)  # fmt: skip
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor
    return outcome


async def _uploading(pipeline: Pipeline, fleet: Fleet, timeout_s: float) -> None:
    """Wait for the first object stored in Sentinel: the services started, the seen cache
    was born, the back-fill passed through the filters. The plan's clock starts then. A
    service that exits before (its settings refused, say) ends the run with its last lines."""
    deadline = time.monotonic() + timeout_s
    while not pipeline.sims.sentinel.store:
        if fleet.unplanned:
            exited = fleet.unplanned[0]
            raise RuntimeError(f"{exited.replica} exited (code {exited.code}): {exited.tail[-3:]}")
        if time.monotonic() > deadline:
            raise TimeoutError("nothing reached Sentinel: see the service logs")
        await asyncio.sleep(0.1)


async def _drained(pipeline: Pipeline, timeout_s: float, since: datetime) -> float | None:
    """When the queues were first seen empty for ``SETTLE_S`` (monotonic) after the fetcher
    completed a sync it started ``since`` (so the back-fill caught up, however often its
    fetcher was killed), None if not within ``timeout_s``; Redis errors count as not yet."""
    deadline = time.monotonic() + timeout_s
    empty_since: float | None = None
    feed = FeedState(pipeline.redis) if pipeline.redis is not None else None
    while time.monotonic() < deadline:
        try:
            empty = feed is not None and await _synced(feed, since)
            empty = empty and await pipeline.queues_empty()
        except (RedisError, OSError, PipelineError):
            empty = False
        if empty:
            empty_since = empty_since or time.monotonic()
            if time.monotonic() - empty_since >= SETTLE_S:
                return empty_since
        else:
            empty_since = None
        await asyncio.sleep(0.25)
    return None


async def _synced(feed: FeedState, since: datetime) -> bool:
    """The fetcher's last run is a normal sync, started after ``since``, that completed."""
    last = await feed.last_run()
    if not last or last.get("outcome") != "completed" or last.get("full"):
        return False
    return datetime.fromisoformat(str(last.get("started_at"))) >= since


async def _checked(
    variant: Variant,
    pipeline: Pipeline,
    fleet: Fleet,
    executor: Executor,
    injection: faults.Injection,
    ledger: Ledger,
    feed: Feed,
    planted: dict[int, str],
    actions: Actions,
    drain_s: float | None,
) -> Outcome:
    size = variant.size
    log = actions.log
    still = [m for m in log.suppressed if m not in log.unsuppressed]
    live = checks.expected_live(pipeline, checks.served(feed, planted), still, log.unsuppressed)
    workspace, revoked = checks.workspace_problems(pipeline, live, log.suppressed)
    try:
        letters, dead = await checks.dead_letter_problems(pipeline, feed, planted)
    except PipelineError as exc:
        letters, dead = [f"the dead-letter queues could not be read: {exc}"], {}
    health = await checks.health_problems(fleet)
    verdict = ledger.verdict()
    kills = [k.__dict__ for k in executor.kills]
    disruptions = len(kills) + len(executor.redis)
    worst = verdict.worst
    plan_problems = []
    if len(kills) < size.service_kills:
        plan_problems.append(f"{len(kills)} service kills of {size.service_kills} planned")
    if len(executor.redis) < size.redis_kills:
        plan_problems.append(f"{len(executor.redis)} Redis kills of {size.redis_kills}")
    if log.failed:
        plan_problems.append(f"operator commands that never succeeded: {log.failed}")
    if drain_s is None:
        plan_problems.append(f"the queues did not drain within {variant.drain_timeout_s:.0f} s")
    bound = [
        f"{e.version[0]} fingerprint {e.version[1][:12]}: {e.uploads} uploads, {e.hits} hits"
        + (f" ({ledger.story(e.version, executor.started)})" if n < 3 else "")
        for n, e in enumerate(verdict.excess)
    ]
    if verdict.over_bound > len(bound):
        bound.append(f"and {verdict.over_bound - len(bound)} more")
    return Outcome(
        bus=variant.bus,
        seed=variant.seed,
        command="",
        indicators=size.indicators,
        planted=len(planted),
        duration_s=0.0,
        window_s=size.window_s,
        kills=kills,
        redis_kills=[r.__dict__ for r in executor.redis],
        faults=injection.fired(),
        peer_faults=None,
        tokens={
            f"minted (life {TOKEN_TTL_S} s)": len(pipeline.sims.entra.tokens_issued),
            "revoked": log.tokens_revoked,
        },
        cursor_expiries=log.cursors_expired,
        operator={
            "suppressed": len(log.suppressed),
            "released": len(log.unsuppressed),
            "setting": log.setting,
            "attempts": dict(log.attempts),
            "live objects expected": len(live),
            "revoked objects held": revoked,
        },
        ledger={
            "versions": verdict.versions,
            "uploads": verdict.uploads,
            "duplicates": verdict.duplicates,
            "duplicates_per_kill": verdict.duplicates / disruptions if disruptions else 0.0,
            "worst": list(worst) if worst else None,
            "explained_by": verdict.explained_by,
            "disruptions": len(ledger.disruptions),
        },
        dead_letters=dead,
        drain_after_last_fault_s=drain_s,
        checks={
            "workspace equals what the filters accept": workspace,
            "uploads within 1 + disruptions in flight": bound,
            "dead letters are the planted records": letters,
            "no process needed a hand": health,
            "the plan was carried out": plan_problems,
        },
    )
