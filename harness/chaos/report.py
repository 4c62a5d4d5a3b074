"""The chaos run's figures: a table on stdout (the README's Reliability section shows one) and
``chaos-results.json`` (ignored by git) with everything, each run under its bus."""

from __future__ import annotations

import json
import platform
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path("chaos-results.json")


@dataclass
class Outcome:
    """One run (one bus): what was done to it, what it did, and the checks."""

    bus: str
    seed: int
    command: str
    indicators: int
    planted: int
    duration_s: float
    window_s: float
    kills: list[dict[str, Any]]
    redis_kills: list[dict[str, Any]]
    faults: dict[str, dict[str, int]]
    peer_faults: dict[str, int] | None
    tokens: dict[str, int]
    cursor_expiries: int
    operator: dict[str, Any]
    ledger: dict[str, Any]
    dead_letters: dict[str, int]
    drain_after_last_fault_s: float | None
    checks: dict[str, list[str]] = field(default_factory=dict)
    logs: str = ""

    @property
    def passed(self) -> bool:
        return all(not problems for problems in self.checks.values())

    def to_json(self) -> dict[str, Any]:
        body = dict(self.__dict__)
        body["passed"] = self.passed
        return body


def kills_by_phase(kills: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """``service phase`` -> ``killed (observed)``."""
    total: Counter[str] = Counter()
    observed: Counter[str] = Counter()
    for kill in kills:
        key = f"{kill['service']} {kill['phase']}"
        total[key] += 1
        observed[key] += bool(kill["observed"])
    return {key: f"{total[key]} ({observed[key]} seen)" for key in sorted(total)}


def rows(outcome: Outcome) -> list[tuple[str, str]]:
    kills = outcome.kills
    observed = sum(bool(k["observed"]) for k in kills)
    by_service = Counter(str(k["service"]) for k in kills)
    ledger = outcome.ledger
    worst = ledger.get("worst") or ["", 0, 0]
    downs = [r["down_s"] for r in outcome.redis_kills]
    faults = "; ".join(
        f"{name} {sum(kinds.values())} (" + ", ".join(f"{k} {n}" for k, n in kinds.items()) + ")"
        for name, kinds in outcome.faults.items()
    )
    operator = outcome.operator
    drain = outcome.drain_after_last_fault_s
    peer = outcome.peer_faults
    table = [
        ("command", outcome.command),
        ("seed", str(outcome.seed)),
        ("bus", outcome.bus),
        ("back-fill", f"{outcome.indicators:,} indicators, {outcome.planted} planted bad records"),
        ("duration", f"{outcome.duration_s:.0f} s (kills within {outcome.window_s:.0f} s)"),
        (
            "service kills",
            f"{len(kills)}: " + ", ".join(f"{s} {n}" for s, n in sorted(by_service.items()))
            + f"; phase seen {observed}, random {len(kills) - observed}",
        ),
        ("kills by phase", "; ".join(f"{k} {v}" for k, v in kills_by_phase(kills).items())),
        ("Redis kills", f"{len(downs)}" + (f", down {min(downs)}-{max(downs)} s" if downs else "")),
        ("faults fired", faults or "none"),
        ("Service Bus peer faults", "n/a" if peer is None else json.dumps(peer)),
        ("tokens", ", ".join(f"{k} {v}" for k, v in outcome.tokens.items())),
        ("MATI cursors expired", str(outcome.cursor_expiries)),
        ("operator", "; ".join(f"{k}: {v}" for k, v in operator.items())),
        ("uploads", f"{ledger['uploads']:,} of {ledger['versions']:,} object versions"),
        (
            "duplicates",
            f"{ledger['duplicates']:,} ({ledger['duplicates_per_kill']:.2f} per kill); "
            f"explained by {ledger['explained_by']}",
        ),
        ("most uploads of one version", f"{worst[1]} (bound {worst[2]}): {worst[0]}"),
        ("dead letters", ", ".join(f"{q} {n}" for q, n in outcome.dead_letters.items())
         + f" (planted {outcome.planted})"),
        ("drain after the last fault", "n/a" if drain is None else f"{drain:.0f} s"),
    ]  # fmt: skip
    for name, problems in outcome.checks.items():
        table.append((f"check: {name}", "pass" if not problems else "FAIL: " + "; ".join(problems)))
    return table


def table(outcome: Outcome) -> str:
    lines = ["| figure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows(outcome)]
    return "\n".join(lines)


def write(outcomes: Sequence[Outcome], path: Path = RESULTS) -> None:
    document = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "runs": {outcome.bus: outcome.to_json() for outcome in outcomes},
        "passed": all(outcome.passed for outcome in outcomes),
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
