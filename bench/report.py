"""The table on stdout and the machine-readable results in ``bench-results.json``."""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import Figure, cpu_count

RESULTS = Path("bench-results.json")


def _absolute(figure: Figure) -> str:
    """The few absolute numbers a reader needs beside the ratio."""
    a = figure.absolute
    if figure.key == "filter_steady_state":
        return (
            f"{a['indicators_per_s']:,}/s over {a['indicators']:,}; "
            f"{a['round_trips_per_indicator']} RT/indicator ({a['redis_round_trips']} RT)"
        )
    if figure.key == "end_to_end_unthrottled":
        return (
            f"{a['indicators_per_s']:,}/s ({a['indicators']:,} in {a['seconds']} s); "
            f"budget cap {a['product_budget_cap_per_s']:,.0f}/s"
        )
    if figure.key == "quota_use":
        parts = [
            f"{r['replicas']}x: {r['quota_use']} ({r['requests_per_window']} req/window, "
            f"429 {r['share_429']:.1%})"
            for r in a["by_replicas"]
        ]
        return "; ".join(parts)
    if figure.key == "fetch_pace":
        return (
            f"{a['pages_per_s']} pages/s of {a['ceiling_requests_per_s']:g}; "
            f"{a['indicators_per_s']:,} indicators/s"
        )
    if figure.key == "memory":
        rss = ", ".join(f"{k} {v:+.1%}" for k, v in a["rss_growth_by_service"].items())
        return f"RSS {rss}; Redis {a['redis_bytes_per_seen_key_worst']} B/seen key"
    if figure.key == "fan_out":
        if a["problems"]:
            return f"wrong result: {a['problems'][0]}"
        if a["worst_destination"] is None:
            return "no filter CPU measured"
        return (
            f"filter {a['filter_cpu_us_per_indicator'][a['worst_destination']]} µs/indicator "
            f"({a['worst_destination']}) vs {a['solo_filter_cpu_us_per_indicator']} alone; "
            f"Redis {a['redis_bytes_per_remembered_indicator']} B per remembered indicator "
            f"({a['seen_keys']:,} over {len(a['seen_keys_by_destination'])})"
        )
    return json.dumps(a)[:80]


def table(figures: Sequence[Figure]) -> str:
    rows = [("figure", "ratio", "target", "pass", "absolute")]
    for f in figures:
        passed = "n/a" if f.passed is None else ("PASS" if f.passed else "FAIL")
        ratio = "n/a" if f.ratio is None else f"{f.ratio:g}"
        rows.append((f.title, ratio, f.target, passed, _absolute(f)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[i].ljust(widths[i]) for i in range(4)] + [row[4]]
        lines.append("| " + " | ".join(cells) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|---|")
    return "\n".join(lines)


def write(
    figures: Sequence[Figure], profiles: dict[str, Any], extra: dict[str, Any], path: Path = RESULTS
) -> None:
    document = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "figures": [f.to_json() for f in figures],
        "profiles": profiles,
        **extra,
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")


def profile_lines(profiles: dict[str, Any], top: int = 6) -> str:
    lines = []
    filter_cprofile = profiles.get("filter_steady_state_cprofile")
    if filter_cprofile:
        lines.append("filter steady state (cProfile, cumulative share of FilterWorker.handle):")
        for row in filter_cprofile["top"][:top]:
            lines.append(f"  {row['cumulative_share']:6.1%}  {row['function']}")
    for label, summary in profiles.get("services_py_spy", {}).items():
        if "skipped" in summary:
            lines.append(f"{label} (py-spy): skipped: {summary['skipped']}")
            continue
        lines.append(f"{label} process (py-spy, {summary['samples']} samples), inclusive:")
        for row in summary["inclusive_project"][:top]:
            lines.append(f"  {row['share']:6.1%}  {row['function']}")
        lines.append(f"{label} process, self time:")
        for row in summary["self_any"][:top]:
            lines.append(f"  {row['share']:6.1%}  {row['function']}")
    return "\n".join(lines)
