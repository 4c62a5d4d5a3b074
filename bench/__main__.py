"""``make bench``: every figure on this machine, the table, ``bench-results.json``.

``python -m bench [--quick] [--skip-profile]``. ``--quick`` shrinks every run (a smoke test
of the bench itself; its numbers are not the figures).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
import tempfile
import time
from typing import Any

from bench import fetch, filter, memory, quota
from bench.common import Figure
from bench.profile import profile_services, summarize_cprofile
from bench.report import RESULTS, profile_lines, table, write


async def main(quick: bool, skip_profile: bool) -> int:
    started = time.monotonic()
    figures: list[Figure] = []
    profiles: dict[str, Any] = {}

    def step(name: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {name}", file=sys.stderr, flush=True)

    step("1. filter steady state")
    with tempfile.NamedTemporaryFile(suffix=".prof") as dump:
        filter_figure, _ = await filter.run(
            5_000 if quick else 30_000, profile=not skip_profile, dump=dump.name
        )
        if not skip_profile:
            profiles["filter_steady_state_cprofile"] = summarize_cprofile(dump.name, "handle")
    figures.append(filter_figure)

    # The in-process figures first: the memory runs leave this process's heap large, and
    # the fetch figure shares this process with the simulated MATI.
    gc.collect()
    step("4. fetch pace")
    fetch_figure = await fetch.run(5 if quick else 30)

    gc.collect()
    step("3. quota use with 1, 2, 4 uploaders")
    quota_figure = await (
        quota.run((1, 2), window_s=3, periods=1) if quick else quota.run((1, 2, 4))
    )

    gc.collect()
    step("2 + 5. end to end and memory at growing backlogs")
    backlogs = (2_000, 6_000) if quick else (10_000, 100_000, 300_000)
    memory_results = await memory.run(backlogs)
    step("2. end to end: two more runs at the same backlog, for the median of three")
    more = [await memory.measure(backlogs[1]) for _ in range(2)]
    e2e_figure, memory_figure = memory.figures(
        memory_results, e2e_backlog=backlogs[1], more_e2e_runs=more
    )
    figures += [e2e_figure, quota_figure, fetch_figure, memory_figure]
    gc.collect()

    if not skip_profile:
        step("profile: py-spy on the filter and uploader processes")
        profiles["services_py_spy"] = await profile_services(
            10_000 if quick else 40_000, duration_s=4 if quick else 10
        )

    write(figures, profiles, {"quick": quick, "memory_runs": memory_results})
    print()
    print(table(figures))
    if profiles:
        print()
        print(profile_lines(profiles))
    print(f"\nresults: {RESULTS} ({time.monotonic() - started:.0f} s)")
    return 0


def cli() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small runs: test the bench only")
    parser.add_argument("--skip-profile", action="store_true", help="no cProfile, no py-spy")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    return asyncio.run(main(args.quick, args.skip_profile))


if __name__ == "__main__":
    sys.exit(cli())
