"""Where the time goes: py-spy on the filter and uploader processes of a running pipeline, and
cProfile of the filter's steady state in process (``bench.filter``).

py-spy is installed into the project's virtualenv on first use (``pip install py-spy``); when
that is not possible the process profile is skipped and says so. Samples are taken with
``--nonblocking`` so the profiled services are not paused.
"""

from __future__ import annotations

import asyncio
import pstats
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import PIPELINE_ENV
from bench.runs import first_page, pipeline_run, sync_in_background

ROOT = Path(__file__).resolve().parent.parent
_PROJECT_DIRS = ("shared/", "services/")


def py_spy() -> str | None:
    """The py-spy binary next to our interpreter, installed there if missing."""
    binary = Path(sys.executable).parent / "py-spy"
    if not binary.exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "py-spy"],
            check=False,
            capture_output=True,
        )
    if binary.exists():
        return str(binary)
    return shutil.which("py-spy")


def _project(frame: str) -> bool:
    return any(part in frame for part in _PROJECT_DIRS) and ".venv" not in frame


def _short(frame: str) -> str:
    """``function (shared/core/parsing.py:155)`` from py-spy's ``function (/abs/path.py:155)``."""
    return frame.replace(str(ROOT) + "/", "")


def summarize_collapsed(text: str, top: int = 12) -> dict[str, Any]:
    """Self and inclusive shares per function from py-spy's collapsed stacks."""
    inclusive: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";")]
        # Drop py-spy's "process ..." / "thread ..." header frames if present.
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        self_time[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count

    def share(counter: Counter[str], project_only: bool) -> list[dict[str, Any]]:
        # The entry points and the service loop hold (nearly) every sample: not a hot spot.
        rows = [
            {"function": name, "share": round(n / total, 3)}
            for name, n in counter.most_common()
            if not project_only or (_project(name) and n / total < 0.85)
        ]
        return rows[:top]

    return {
        "samples": total,
        "inclusive_project": share(inclusive, project_only=True),
        "self_any": share(self_time, project_only=False),
    }


def summarize_cprofile(path: str, root_function: str, top: int = 12) -> dict[str, Any]:
    """Cumulative share of ``root_function`` per project function, from a cProfile dump."""
    stats = pstats.Stats(path)
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    root_total = max(
        (ct for (file, _, name), (_, _, _, ct, _) in table.items() if name == root_function),
        default=0.0,
    )
    rows = []
    for (file, line, name), (_, calls, tottime, cumtime, _) in table.items():
        if not any(part in file for part in _PROJECT_DIRS) or ".venv" in file:
            continue
        rows.append(
            {
                "function": f"{name} ({_short(file)}:{line})",
                "calls": calls,
                "cumulative_share": round(cumtime / root_total, 3) if root_total else None,
                "self_share": round(tottime / root_total, 3) if root_total else None,
            }
        )
    rows.sort(key=lambda r: r["cumulative_share"] or 0, reverse=True)
    return {"root": root_function, "root_seconds": round(root_total, 3), "top": rows[:top]}


async def profile_services(count: int = 40_000, duration_s: int = 10) -> dict[str, Any]:
    """py-spy on the filter and the uploader while a backfill runs through them."""
    binary = py_spy()
    if binary is None:
        return {"skipped": "py-spy is not installable here"}
    wide_open = {"SENTINEL_REQUESTS_PER_MINUTE": "100", "SENTINEL_RATE_WINDOW_SECONDS": "1"}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="m2s-bench-prof-") as directory:
        async with pipeline_run(count=count, env={**PIPELINE_ENV, **wide_open}) as run:
            sync = await sync_in_background(run.pipeline, timeout_s=600)
            await first_page(run.pipeline)
            await asyncio.sleep(1.0)  # past start-up: the filter and uploader are busy now
            recorders = {}
            for label in ("filter", "uploader"):
                out = Path(directory) / f"{label}.txt"
                pid = run.services[label].process.pid
                recorders[label] = (
                    out,
                    await asyncio.create_subprocess_exec(
                        binary, "record", "--pid", str(pid), "--duration", str(duration_s),
                        "--rate", "200", "--nonblocking", "--function", "--format", "raw",
                        "--output", str(out),
                        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
                    ),
                )  # fmt: skip
            for label, (out, process) in recorders.items():
                _, err = await process.communicate()
                if process.returncode != 0 or not out.exists():
                    results[label] = {"skipped": err.decode(errors="replace")[-300:]}
                else:
                    results[label] = summarize_collapsed(out.read_text())
            await sync
    return results


if __name__ == "__main__":
    import json

    print(json.dumps(asyncio.run(profile_services(30_000, 8)), indent=1))
