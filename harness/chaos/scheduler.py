"""The chaos run's plan, drawn from one seed before anything starts: which service process is
killed when, in which phase of its work, how long it stays down; when Redis dies and for how
long; when the operator and the identity provider act. Pure: the same seed and size give the
same plan, whatever the machine, so a failing run is replayed with ``--seed``.

Kills are spread evenly over the chaos window: it is cut into as many slots as there are
kills, one kill at a random point of each, so no stretch of the back-fill is spared and none
is crowded. Each service gets its share of the kills (:data:`SHARES`, never fewer than it has
phases), spread evenly over its phases and its replicas, and the order is shuffled.

What the plan cannot fix is the moment a phase occurs: a kill planned at ``at_s`` waits there
for its phase (``harness.chaos.phases``) and falls back to an unobserved kill when the phase
does not come.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Final


class Phase(StrEnum):
    """What the process was doing when it was killed (harness.chaos.phases says how each is
    seen from outside)."""

    MID_PAGE = "mid-page"
    MID_PUBLISH = "mid-publish"
    MID_BATCH = "mid-batch"
    MID_UPLOAD = "mid-upload"
    MID_COMMIT = "mid-commit"


#: The phases of each service's work.
PHASES: Final[Mapping[str, tuple[Phase, ...]]] = MappingProxyType(
    {
        "fetcher": (Phase.MID_PAGE, Phase.MID_PUBLISH),
        "filter": (Phase.MID_BATCH, Phase.MID_PUBLISH),
        "uploader": (Phase.MID_BATCH, Phase.MID_UPLOAD, Phase.MID_COMMIT),
    }
)
#: Each service's share of the kills. The fetcher's is the smallest: a killed fetcher leaves
#: its lease to expire (30 s) and its successor waits a sync schedule on top, so each of its
#: kills stops the back-fill's fetch for most of a minute.
SHARES: Final[Mapping[str, float]] = MappingProxyType(
    {"fetcher": 0.08, "filter": 0.42, "uploader": 0.50}
)
#: The first kill comes after this share of the window: the services have started.
LEAD: Final = 0.03


class ActionKind(StrEnum):
    """What happens to the pipeline besides kills: the identity provider, MATI and an
    operator acting while it runs."""

    EXPIRE_CURSORS = "expire_cursors"
    REVOKE_ACCESS = "revoke_token"
    SUPPRESS = "suppress"
    UNSUPPRESS = "unsuppress"
    CHANGE_SETTING = "change_setting"


#: Where in the window each action falls (shares of it): cursors expire while the back-fill
#: pages; the suppression is lifted after it landed; the setting changes late enough that
#: the back-fill is under way, early enough that the full sync it asks for has time to run.
ACTION_SPANS: Final[Mapping[ActionKind, tuple[float, float]]] = MappingProxyType(
    {
        ActionKind.EXPIRE_CURSORS: (0.02, 0.08),
        ActionKind.REVOKE_ACCESS: (0.25, 0.35),
        ActionKind.SUPPRESS: (0.28, 0.36),
        ActionKind.UNSUPPRESS: (0.42, 0.48),
        ActionKind.CHANGE_SETTING: (0.52, 0.58),
    }
)
#: Where Redis kills fall (shares of the window), and how long Redis stays down.
REDIS_SPAN: Final = (0.10, 0.90)
REDIS_DOWN_S: Final = (0.5, 3.0)
#: A killed process is restarted at once half the time, else after up to this long.
MAX_RESTART_DELAY_S: Final = 2.0


@dataclass(frozen=True)
class Size:
    """How big a run is: the feed, the kills, the window they fall in, the replicas."""

    indicators: int
    service_kills: int
    redis_kills: int
    window_s: float
    replicas: Mapping[str, int] = field(
        default_factory=lambda: MappingProxyType({"fetcher": 1, "filter": 2, "uploader": 2})
    )

    def __post_init__(self) -> None:
        if self.service_kills < 0 or self.redis_kills < 0 or self.window_s <= 0:
            raise ValueError("kills must not be negative and the window must be positive")
        if set(self.replicas) != set(PHASES) or min(self.replicas.values()) < 1:
            raise ValueError(f"replicas must name each of {sorted(PHASES)} at least once")


@dataclass(frozen=True, slots=True)
class Kill:
    """SIGKILL one replica of a service at ``at_s`` (seconds into the window), in ``phase``;
    restart it ``restart_after_s`` after it died."""

    at_s: float
    service: str
    replica: int
    phase: Phase
    restart_after_s: float


@dataclass(frozen=True, slots=True)
class RedisKill:
    """SIGKILL redis-server at ``at_s``; start it again on its AOF ``down_s`` later."""

    at_s: float
    down_s: float


@dataclass(frozen=True, slots=True)
class Action:
    at_s: float
    kind: ActionKind


Event = Kill | RedisKill | Action


@dataclass(frozen=True)
class Plan:
    seed: int
    size: Size
    kills: tuple[Kill, ...]
    redis_kills: tuple[RedisKill, ...]
    actions: tuple[Action, ...]

    def events(self) -> list[Event]:
        """Every event, in time order (kills first among equals: none are equal in practice)."""
        everything: list[Event] = [*self.kills, *self.redis_kills, *self.actions]
        return sorted(everything, key=lambda e: e.at_s)

    def kills_by(self) -> Counter[tuple[str, Phase]]:
        return Counter((k.service, k.phase) for k in self.kills)


def make_plan(seed: int, size: Size) -> Plan:
    """The plan of one run (module docstring)."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible plan, not a secret
    specs = _kill_specs(rng, size)
    slots = _spread(rng, len(specs), size.window_s * LEAD, size.window_s)
    kills = tuple(
        Kill(at, service, replica, phase, _restart_delay(rng))
        for at, (service, replica, phase) in zip(slots, specs, strict=True)
    )
    low, high = (size.window_s * share for share in REDIS_SPAN)
    redis_kills = tuple(
        RedisKill(at, round(rng.uniform(*REDIS_DOWN_S), 2))
        for at in _spread(rng, size.redis_kills, low, high)
    )
    actions = tuple(
        Action(round(rng.uniform(a * size.window_s, b * size.window_s), 2), kind)
        for kind, (a, b) in ACTION_SPANS.items()
    )
    return Plan(seed, size, kills, redis_kills, actions)


def kill_counts(total: int) -> dict[str, int]:
    """Kills per service: :data:`SHARES` of ``total`` by largest remainder, then topped up
    from the largest to at least as many as a service has phases, while ``total`` allows it
    (every phase gets hit)."""
    exact = {s: total * share for s, share in SHARES.items()}
    counts = {s: math.floor(v) for s, v in exact.items()}
    by_remainder = sorted(SHARES, key=lambda s: exact[s] - counts[s], reverse=True)
    for n in range(total - sum(counts.values())):
        counts[by_remainder[n % len(by_remainder)]] += 1
    if total >= sum(len(p) for p in PHASES.values()):
        for service, phases in PHASES.items():
            while counts[service] < len(phases):
                richest = max(counts, key=lambda s: counts[s] - len(PHASES[s]))
                counts[richest] -= 1
                counts[service] += 1
    return counts


def _kill_specs(rng: random.Random, size: Size) -> list[tuple[str, int, Phase]]:
    specs: list[tuple[str, int, Phase]] = []
    for service, count in kill_counts(size.service_kills).items():
        phases = list(PHASES[service])
        rng.shuffle(phases)
        replicas = list(range(size.replicas[service]))
        rng.shuffle(replicas)
        specs += [
            (service, replicas[n % len(replicas)], phases[n % len(phases)]) for n in range(count)
        ]
    rng.shuffle(specs)
    return specs


def _spread(rng: random.Random, n: int, low: float, high: float) -> list[float]:
    """``n`` times in ``[low, high)``, one at a random point of each of ``n`` equal slots."""
    width = (high - low) / n if n else 0.0
    return [round(low + width * (i + rng.random()), 2) for i in range(n)]


def _restart_delay(rng: random.Random) -> float:
    return 0.0 if rng.random() < 0.5 else round(rng.uniform(0.2, MAX_RESTART_DELAY_S), 2)
