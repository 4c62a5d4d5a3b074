"""``make demo``: the whole pipeline on one machine, against the simulators, checked.

It starts a private Redis, the MATI, Entra ID and Sentinel simulators and the three services,
syncs a realistic feed (20,000 indicators over 29 days by default) with live progress, prints
the funnel, and checks that the simulated workspace holds exactly the indicators the filters
accept, each uploaded once. Then the feed changes 5 % of its indicators and a second sync must
upload exactly those whose upload would change and revoke those that no longer pass. A third
sync carries a back-fill (every live indicator changed, thousands more newly rated high) that
outlasts a quota window, MATI downgrades some indicators, and an analyst suppresses one while
the back-fill is queued: the revocations must not wait behind it, and the workspace must end
up holding exactly what passes and is not suppressed. Last, Redis loses everything (a
failover of a cache without persistence): the services restart, the uploader rebuilds the seen
cache and the suppression from the workspace while the filter holds, a sync of the whole
look-back uploads next to nothing, and ``reconcile`` proves the workspace matches. Exit code 0
only if every check holds. Everything it starts, it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from harness.pipeline import DESTINATION, Expected, Pipeline, mati_properties
from services.cli.supervisor import Child
from shared.adapters.destination_state import DestinationState
from shared.adapters.workspace_state import WorkspaceState
from simulators.feed import Feed


def say(text: str = "") -> None:
    print(text, flush=True)


async def progress(pipeline: Pipeline, sync: asyncio.Task[int], expected: int, mark: int) -> None:
    """One line every two seconds until the sync finished and the queues drained."""
    started = time.monotonic()
    while True:
        feed, dest = await pipeline.counters()
        uploaded = len(pipeline.sims.sentinel.rows) - mark
        say(
            f"  {time.monotonic() - started:6.0f}s  fetched {feed.get('fetched', 0):>6}"
            f"  forwarded {dest.get('forwarded', 0):>6}  uploaded {uploaded:>6}/{expected}"
            f"  throttled {dest.get('throttled', 0)}"
        )
        if sync.done() and await pipeline.queues_empty():
            return
        await asyncio.sleep(2)


async def run_sync(pipeline: Pipeline, expected: int, mark: int) -> int:
    sync = asyncio.create_task(pipeline.sync_once(timeout_s=900))
    await progress(pipeline, sync, expected, mark)
    code = await sync
    await pipeline.wait_drained(timeout_s=600)
    return code


def funnel(feed: dict[str, int], dest: dict[str, int]) -> None:
    say("  funnel")
    say(f"    fetched from MATI        {feed.get('fetched', 0):>8}")
    for name in sorted(k for k in dest if k.startswith(("dropped_", "rejected_", "revoked_"))):
        say(f"    {name:<25}{dest[name]:>8}")
    for name in ("forwarded", "uploaded", "rejected", "dead_lettered", "throttled", "retried"):
        say(f"    {name:<25}{dest.get(name, 0):>8}")


def check_workspace(pipeline: Pipeline, expected: Expected) -> list[str]:
    """Problems with what the simulated workspace holds, against ``expected``."""
    store = pipeline.sims.sentinel.store
    problems = []
    missing = expected.objects.keys() - store.keys()
    wrong = [k for k in expected.objects.keys() & store.keys()
             if mati_properties(store[k]).get("fingerprint") != expected.objects[k]]  # fmt: skip
    if missing:
        problems.append(f"{len(missing)} accepted indicators are missing, e.g. {min(missing)}")
    if wrong:
        problems.append(f"{len(wrong)} indicators hold stale content, e.g. {min(wrong)}")
    return problems


async def demo(count: int, days: float, state_dir: Path) -> int:
    shutil.rmtree(state_dir, ignore_errors=True)
    feed = Feed(seed=7, count=count, days=days)
    failures: list[str] = []
    async with Pipeline(state_dir, feed=feed) as pipeline:
        sims = pipeline.sims
        say("mati2sentinel demo: everything on this machine, nothing leaves it")
        say(f"  MATI simulator      {sims.mati.url}  ({count} indicators over {days:g} days)")
        say(f"  Sentinel simulator  {sims.sentinel.url}  (100 requests/minute, like Sentinel)")
        say(f"  Redis (embedded)    {pipeline.redis_server.url}")
        say(f"  service logs        {state_dir / 'logs'}")
        services = [
            await pipeline.start_service("filter"),
            await pipeline.start_service("uploader"),
        ]

        first = pipeline.expected()
        say(f"\nsync 1: backfill, the filters accept {len(first.objects)} indicators")
        code = await run_sync(pipeline, len(first.objects), 0)
        feed_counters, dest = await pipeline.counters()
        funnel(feed_counters, dest)
        problems = check_workspace(pipeline, first)
        extra = sims.sentinel.store.keys() - first.objects.keys()
        if extra:
            problems.append(f"{len(extra)} indicators in the workspace the filters refuse")
        repeated = [k for k in first.objects if sims.sentinel.uploads_for(k) != 1]
        if repeated:
            problems.append(f"{len(repeated)} indicators uploaded more than once")
        if code != 0:
            problems.append(f"sync exited with {code}")
        say("  check: " + ("the workspace holds exactly the accepted set, each once"
                           if not problems else "; ".join(problems)))  # fmt: skip
        failures += problems

        mark = len(sims.sentinel.rows)
        changed = feed.mutate(0.05, seed=11, now=datetime.now(UTC))
        second = pipeline.expected()
        should_upload = {k for k, fp in second.objects.items() if first.objects.get(k) != fp}
        # What MATI reported again and the filters no longer take is revoked under its id.
        gone = first.objects.keys() - second.objects.keys()
        due = should_upload | gone
        say(
            f"\nsync 2: MATI changed {len(changed)} indicators; {len(should_upload)} uploads "
            f"and {len(gone)} revocations due"
        )
        code = await run_sync(pipeline, len(due), mark)
        uploaded = {str(row["Data"]["id"]) for row in sims.sentinel.rows[mark:]}
        problems = check_workspace(pipeline, second)
        if uploaded != due:
            problems.append(
                f"uploaded {len(uploaded)}: {len(uploaded - due)} needlessly, "
                f"{len(due - uploaded)} missing"
            )
        revoked = sims.sentinel.revoked
        live = [k for k in gone if k in sims.sentinel.store and k not in revoked]
        if live:
            problems.append(f"{len(live)} indicators that no longer pass are not revoked")
        if code != 0:
            problems.append(f"sync exited with {code}")
        say("  check: " + (f"uploaded exactly the {len(should_upload)} changed indicators and "
                           f"revoked the {len(gone)} that no longer pass"
                           if not problems else "; ".join(problems)))  # fmt: skip
        say("  note: after upgrading from a version with top-level x_ properties, each "
            "indicator is uploaded once more when MATI next reports it")  # fmt: skip
        failures += problems
        problems, holds = await third_sync(pipeline, feed, second)
        failures += problems
        failures += await lost_redis(pipeline, services, holds, len(first.objects))
    say("\ndemo " + ("passed" if not failures else "FAILED"))
    return 0 if not failures else 1


async def until(condition: Callable[[], Awaitable[bool]], timeout_s: float) -> bool:
    """Poll ``condition`` until it holds or ``timeout_s`` passed; whether it held."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await condition():
            return True
        await asyncio.sleep(0.1)
    return False


async def third_sync(
    pipeline: Pipeline, feed: Feed, before: Expected
) -> tuple[list[str], Expected]:
    """A back-fill, downgrades and a suppression at once; returns the problems found and
    what the workspace must hold live."""
    sims = pipeline.sims
    store = sims.sentinel.store
    held = {mati_properties(store[key])["mati_id"]: key for key in before.objects}
    ids = sorted(held)
    picker = random.Random(13)  # noqa: S311 - which indicators the demo changes, not a secret
    downgraded = set(picker.sample(ids, min(20, len(ids) // 4)))
    rest = [m for m in ids if m not in downgraded]
    suppressed = next(m for m in rest if feed.type_of(feed.index_of(m)) != "md5")
    changes: dict[str, dict[str, int]] = {m: {"mscore": 10} for m in downgraded}
    for m in rest:
        if m != suppressed:  # changed and still passing: the back-fill
            changes[m] = {"mscore": 99 if feed.mscore(feed.index_of(m)) != 99 else 98}
    # MATI raises thousands it rated low before (never uploaded, so never revoked): with the
    # changes above, more uploads than one quota window takes, queued ahead of the analyst.
    ever_up = {mati_properties(obj)["mati_id"] for obj in store.values()}
    unrated = [m for m in map(feed.id, range(len(feed))) if m not in ever_up]
    for m in picker.sample(unrated, min(8_000, len(unrated))):
        changes[m] = {"mscore": 99, "threat_score": 99}
    feed.revise(changes, datetime.now(UTC))
    after = pipeline.expected()
    key = held[suppressed]
    live = {k: fp for k, fp in after.objects.items() if k != key}
    backfill = {k for k, fp in live.items() if before.objects.get(k) != fp}
    gone = before.objects.keys() - after.objects.keys()
    say(
        f"\nsync 3: a back-fill of {len(backfill)} new and changed indicators; MATI downgrades "
        f"{len(gone)}; an analyst suppresses {suppressed} while the back-fill is queued"
    )
    mark = len(sims.sentinel.rows)
    _, counted = await pipeline.counters()
    sync = asyncio.create_task(pipeline.sync_once(timeout_s=900))
    shown = asyncio.create_task(progress(pipeline, sync, len(backfill) + len(gone) + 1, mark))

    async def backlog() -> bool:
        return sync.done() or await pipeline.queued_uploads() >= len(backfill) // 2

    async def revoked_now() -> bool:
        return store[key].get("revoked") is True

    await until(backlog, 600)
    started = time.monotonic()
    reason = "demo: an analyst's false positive"
    problems = []
    if await pipeline.command("suppress", "add", suppressed, "--reason", reason, label="suppress"):
        problems.append("suppress add failed (see its log)")
    await until(revoked_now, 180)
    took, ahead = time.monotonic() - started, await pipeline.queued_uploads()
    say(f"  suppression revoked in Sentinel {took:.1f}s after the command, with "
        f"{ahead} ordinary uploads still queued")  # fmt: skip
    await shown
    code = await sync
    await pipeline.wait_drained(timeout_s=600)
    feed_counters, dest = await pipeline.counters()
    funnel(feed_counters, dest)
    problems += check_workspace(pipeline, Expected(live))
    revoked = gone | {key}
    uploaded = [str(row["Data"]["id"]) for row in sims.sentinel.rows[mark:]]
    if sorted(uploaded) != sorted(backfill | revoked):
        extra, missing = set(uploaded) - backfill - revoked, backfill | revoked - set(uploaded)
        problems.append(f"uploaded {len(extra)} needlessly, {len(missing)} missing, "
                        f"{len(uploaded) - len(set(uploaded))} twice")  # fmt: skip
    if not revoked <= sims.sentinel.revoked or live.keys() & sims.sentinel.revoked:
        problems.append("the revoked set is not exactly the downgraded and the suppressed")
    if dest.get("revoked_suppressed", 0) - counted.get("revoked_suppressed", 0) != 1:
        problems.append("the suppression was not counted once")
    if code != 0:
        problems.append(f"sync exited with {code}")
    say("  check: " + (f"uploaded the {len(backfill)} new and changed, revoked the "
                       f"{len(gone)} downgraded and the suppressed one"
                       if not problems else "; ".join(problems)))  # fmt: skip
    return problems, Expected(live)


async def lost_redis(
    pipeline: Pipeline, services: list[Child], live: Expected, backfilled: int
) -> list[str]:
    """FLUSHALL, the services restarted, a sync: the seen cache and the suppression come back
    from the workspace, next to nothing is uploaded, and ``reconcile`` finds no drift."""
    sims, redis = pipeline.sims, pipeline.redis
    assert redis is not None
    say("\nRedis loses everything (seen cache, checkpoint, suppressions, queues); the services "
        "restart and sync the whole look-back again")  # fmt: skip
    for child in services:
        await pipeline.stop_service(child)
    await redis.flushall()
    services[:] = [await pipeline.start_service(name) for name in ("filter", "uploader")]
    mark = len(sims.sentinel.rows)
    code = await pipeline.sync_once(timeout_s=900)
    await pipeline.wait_drained(timeout_s=600)
    workspace = WorkspaceState(redis, DestinationState(redis, DESTINATION))
    born, rebuild = await workspace.born(), await workspace.rebuild_status()
    uploaded = len(sims.sentinel.rows) - mark
    say(f"  the uploader rebuilt the seen cache from the workspace ({rebuild.get('written')} "
        f"entries, {rebuild.get('suppressions')} suppression, {rebuild.get('seconds')} s) "
        f"while the filter held; the sync uploaded {uploaded}")  # fmt: skip
    problems = check_workspace(pipeline, live)
    if born is None or born.get("how") != "rebuilt":
        problems.append(f"the seen cache was not rebuilt ({born})")
    if uploaded > backfilled // 100:
        problems.append(f"{uploaded} uploads after losing Redis, over 1% of {backfilled}")
    if code != 0:
        problems.append(f"sync exited with {code}")
    answer = await pipeline.command("reconcile", "--quiet", label="reconcile", timeout_s=300)
    report = (pipeline.state_dir / "logs" / "reconcile.log").read_text().splitlines()
    shown = [line for line in report if line.startswith(("reconcile of", "  "))]
    for line in shown[:7]:
        say(f"  {line}")
    if answer != 0:
        problems.append(f"reconcile found drift or failed (exit {answer})")
    say("  check: " + ("nothing lost, nothing uploaded twice, the workspace matches"
                       if not problems else "; ".join(problems)))  # fmt: skip
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.demo", description=__doc__)
    parser.add_argument("--indicators", type=int, default=20_000)
    parser.add_argument("--days", type=float, default=29)
    parser.add_argument("--state-dir", type=Path, default=Path(".state/demo"))
    args = parser.parse_args()
    return asyncio.run(demo(args.indicators, args.days, args.state_dir))


if __name__ == "__main__":
    sys.exit(main())
