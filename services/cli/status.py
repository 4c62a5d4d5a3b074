"""``mati2sentinel status``: what the pipeline is doing, from the state it keeps in Redis and
the bus, without reading a log: how fresh the checkpoint is, what waits where, what was
dropped and why, whether the destination's circuit is open, what analysts suppressed, and
whether Redis would evict keys when it fills up (``shared.adapters.redis_memory``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from services.runtime import Runtime
from shared.adapters.destination_state import DestinationState
from shared.adapters.feed_state import FeedState
from shared.adapters.rate_budget import RateBudget
from shared.adapters.redis_memory import RedisMemory, read_memory
from shared.adapters.suppressions import describe
from shared.adapters.workspace_state import WorkspaceState, when
from shared.contract.bus import Bus, EntityCounts, Source
from shared.contract.messages import revocation_queue, subscription, upload_queue
from shared.core.settings import Settings
from shared.telemetry.gauges import entity_name

#: How many of the newest suppressions ``status`` shows (``suppress list`` shows them all).
RECENT_SUPPRESSIONS: Final = 5


@dataclass(frozen=True)
class EntityStatus:
    entity: str
    depth: int
    in_flight: int
    dead_letter: int
    oldest_age_s: float | None


@dataclass(frozen=True)
class Status:
    destination: str
    checkpoint: str | None
    checkpoint_age_s: float | None
    last_run: dict[str, Any] | None
    entities: list[EntityStatus]
    feed_counters: dict[str, int]
    counters: dict[str, int]
    circuit: str
    circuit_reason: str
    circuit_since: str | None
    rate_in_window: int
    rate_limit: int
    paused_for_s: float
    #: How many indicators are suppressed, and the newest few (``Suppression.to_dict()``).
    suppressed: int
    recent_suppressions: list[dict[str, str]]
    #: The seen cache's birth record (``how``, ``at`` ms, ``objects``), ``None`` when the state
    #: is empty (new or lost): the uploader rebuilds it from the workspace.
    seen_cache: dict[str, Any] | None
    #: The last rebuild's progress (``WorkspaceState.rebuild_status``), and the last
    #: reconcile's result (``at`` ms, ``streak``, counts by kind), both empty when none.
    rebuild: dict[str, str]
    reconcile: dict[str, str]
    #: Redis's eviction policy and memory (``RedisMemory.to_dict()``): ``maxmemory_policy``,
    #: ``evicting``, ``maxmemory``, ``used_memory``, ``used_ratio``; ``None`` where unknown.
    redis: dict[str, Any]

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2)


async def _entity(bus: Bus, source: Source) -> EntityStatus:
    counts: EntityCounts = await bus.counts(source)
    return EntityStatus(
        entity=entity_name(source),
        depth=counts.depth,
        in_flight=counts.in_flight,
        dead_letter=counts.dead_letter,
        oldest_age_s=counts.oldest_age_s,
    )


async def collect(runtime: Runtime, *, now: datetime | None = None) -> Status:
    settings: Settings = runtime.settings
    now = now or datetime.now(UTC)
    feed = FeedState(runtime.redis)
    destination = DestinationState(runtime.redis, settings.destination)
    budget = RateBudget(
        runtime.redis,
        settings.destination,
        limit=settings.sentinel_requests_per_minute,
        window_s=settings.sentinel_rate_window_seconds,
    )
    checkpoint = await feed.checkpoint()
    circuit, reason, since = await destination.circuit()
    suppressions = (await destination.suppressions.snapshot()).newest_first()
    workspace = WorkspaceState(runtime.redis, destination)
    return Status(
        destination=settings.destination,
        checkpoint=checkpoint.last_updated.isoformat() if checkpoint else None,
        checkpoint_age_s=(now - checkpoint.last_updated).total_seconds() if checkpoint else None,
        last_run=await feed.last_run(),
        entities=[
            await _entity(runtime.bus, subscription(settings.destination)),
            await _entity(runtime.bus, upload_queue(settings.destination)),
            await _entity(runtime.bus, revocation_queue(settings.destination)),
        ],
        feed_counters=await feed.counters(),
        counters=await destination.counters(),
        circuit=circuit.value,
        circuit_reason=reason,
        circuit_since=since.isoformat() if since else None,
        rate_in_window=await budget.in_window(),
        rate_limit=settings.sentinel_requests_per_minute,
        paused_for_s=round(await budget.paused_for(), 3),
        suppressed=len(suppressions),
        recent_suppressions=[s.to_dict() for s in suppressions[:RECENT_SUPPRESSIONS]],
        seen_cache=await workspace.born(),
        rebuild=await workspace.rebuild_status(),
        reconcile=await workspace.last_reconcile(),
        redis=(await read_memory(runtime.redis)).to_dict(),
    )


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def _workspace_lines(status: Status) -> list[str]:
    """The seen cache's origin, a rebuild under way, and the last reconcile."""
    born, rebuild = status.seen_cache, status.rebuild
    if born is None:
        progress = ""
        if rebuild.get("state") in ("running", "retrying"):
            progress = (
                f": rebuild {rebuild['state']}, partition {rebuild.get('partitions_done', 0)}/"
                f"{rebuild.get('partitions_total', '?')}, {rebuild.get('written', 0)} written"
            )
        line = f"seen cache   empty, the filter holds until it is rebuilt{progress}"
    else:
        at = when(str(born.get("at")))
        line = f"seen cache   {born.get('how', '?')} {at.isoformat() if at else '?'}"
        line += f" ({born.get('objects', 0)} entries from the workspace)"
        if born.get("how") == "skipped":
            line += f"; the workspace could not be read: {rebuild.get('error', '?')}"
    lines = [line]
    done = status.reconcile
    if not done:
        lines.append("reconcile    never run (`mati2sentinel reconcile`)")
        return lines
    at = when(done.get("at"))
    kinds = ", ".join(
        f"{kind}={done[kind]}"
        for kind in ("agreeing", "missing", "stale", "unknown", "revoked_mismatch", "in_flight")
        if done.get(kind, "0") != "0"
    )
    lines.append(
        f"reconcile    {at.isoformat() if at else '?'} ({done.get('mode', 'report')}): "
        f"{kinds or 'nothing compared'}; drift streak {done.get('streak', '0')}"
    )
    return lines


def _bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def redis_line(redis: dict[str, Any]) -> str:
    """The policy, what it does at ``maxmemory`` (the fix when it evicts), and memory use:
    an operator sees here why a full Redis dropped keys, or why the services stopped."""
    memory = RedisMemory(redis.get("maxmemory_policy"), redis.get("maxmemory"),
                         redis.get("used_memory"))  # fmt: skip
    line = f"redis        maxmemory-policy {memory.policy or 'unknown'} ({memory.what_evicts()})"
    if memory.evicting:
        line += "; set maxmemory-policy noeviction"
    elif memory.evicting is None:
        line += "; make sure it is noeviction"
    if memory.used is not None:
        line += f"; memory {_bytes(memory.used)}"
        ratio = memory.used_ratio
        if ratio is not None and memory.maxmemory:
            line += f" of {_bytes(memory.maxmemory)} ({ratio:.0%})"
        elif memory.maxmemory == 0:
            line += " (no maxmemory)"
    return line


def render(status: Status) -> str:
    """The status as a person reads it in a terminal."""
    lines = [f"destination  {status.destination}"]
    lines.append(
        f"checkpoint   {status.checkpoint or 'none (first sync not done)'}"
        + (f"  (age {_age(status.checkpoint_age_s)})" if status.checkpoint else "")
    )
    if status.last_run:
        run = status.last_run
        funnel = ", ".join(
            f"{key}={run[key]}"
            for key in ("outcome", "pages", "fetched", "published")
            if key in run
        )
        kind = " (full)" if run.get("full") else ""
        lines.append(f"last sync    {run.get('run_id', '?')}{kind}: {funnel}")
    lines.append(
        f"circuit      {status.circuit}"
        + (f" ({status.circuit_reason})" if status.circuit_reason else "")
    )
    lines.append(
        f"rate budget  {status.rate_in_window}/{status.rate_limit} in window"
        + (f", paused {status.paused_for_s:g}s" if status.paused_for_s else "")
    )
    lines.append(redis_line(status.redis))
    lines += _workspace_lines(status)
    lines.append(
        f"suppressed   {status.suppressed}" + (" (newest first)" if status.suppressed else "")
    )
    for listed in status.recent_suppressions:
        lines.append(f"  {describe(listed)}")
    if status.suppressed > len(status.recent_suppressions):
        lines.append("  … `mati2sentinel suppress list` shows them all")
    lines.append("")
    lines.append(f"{'entity':<28}{'depth':>9}{'in_flight':>11}{'dead_letter':>13}{'oldest':>9}")
    for e in status.entities:
        lines.append(
            f"{e.entity:<28}{e.depth:>9}{e.in_flight:>11}{e.dead_letter:>13}"
            f"{_age(e.oldest_age_s):>9}"
        )
    for title, counters in (("fetcher", status.feed_counters), ("destination", status.counters)):
        lines.append("")
        lines.append(f"{title} counters")
        if not counters:
            lines.append("  (none yet)")
        for name in sorted(counters):
            lines.append(f"  {name:<32}{counters[name]:>12}")
    return "\n".join(lines)
