"""``make bench``: every figure on this machine, the table, ``bench-results.json``.

``python -m bench [--quick] [--skip-profile] [--only NAME ...]``. ``--quick`` shrinks every
run (a smoke test of the bench itself; its numbers are not the figures). ``--only`` runs the
figures named (``filter``, ``fetch``, ``quota``, ``memory`` for 2 and 5, ``fanout``, and
``profile`` for the py-spy profiles) and nothing else.
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

from bench import fanout, fetch, filter, memory, quota
from bench.common import Figure
from bench.profile import profile_services, summarize_cprofile
from bench.report import RESULTS, profile_lines, table, write

#: What ``--only`` can name, in the order they run.
PARTS = ("filter", "fetch", "quota", "memory", "fanout", "profile")


async def main(quick: bool, skip_profile: bool, only: frozenset[str] = frozenset(PARTS)) -> int:
    started = time.monotonic()
    figures: list[Figure] = []
    profiles: dict[str, Any] = {}
    extra: dict[str, Any] = {"quick": quick}
    if only != frozenset(PARTS):
        extra["only"] = sorted(only)

    def step(name: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {name}", file=sys.stderr, flush=True)

    if "filter" in only:
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
    fetch_figure = quota_figure = None
    if "fetch" in only:
        step("4. fetch pace")
        fetch_figure = await fetch.run(5 if quick else 30)

    gc.collect()
    if "quota" in only:
        step("3. quota use with 1, 2, 4 uploaders")
        quota_figure = await (
            quota.run((1, 2), window_s=3, periods=1) if quick else quota.run((1, 2, 4))
        )

    gc.collect()
    e2e_memory: list[Figure] = []
    if "memory" in only:
        step("2 + 5. end to end and memory at growing backlogs")
        backlogs = (2_000, 6_000) if quick else (10_000, 100_000, 300_000)
        memory_results = await memory.run(backlogs)
        step("2. end to end: two more runs at the same backlog, for the median of three")
        more = [await memory.measure(backlogs[1]) for _ in range(2)]
        e2e_memory = memory.figures(memory_results, e2e_backlog=backlogs[1], more_e2e_runs=more)
        extra["memory_runs"] = memory_results
    # The table's order: 1, 2, 3, 4, 5.
    figures += e2e_memory[:1]
    figures += [f for f in (quota_figure, fetch_figure) if f is not None]
    figures += e2e_memory[1:]
    gc.collect()

    if "fanout" in only:
        step("6. fan-out: one destination, five, one again (twice without --quick)")
        fanout_figure, extra["fan_out_runs"] = await (
            fanout.run(3_000, rounds=1) if quick else fanout.run(10_000, rounds=2)
        )
        figures.append(fanout_figure)
        gc.collect()

    if not skip_profile and "profile" in only:
        step("profile: py-spy on the filter and uploader processes")
        profiles["services_py_spy"] = await profile_services(
            10_000 if quick else 40_000, duration_s=4 if quick else 10
        )

    write(figures, profiles, extra)
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
    parser.add_argument(
        "--only",
        nargs="+",
        choices=PARTS,
        metavar="NAME",
        help=f"run only these ({', '.join(PARTS)})",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    only = frozenset(args.only or PARTS)
    return asyncio.run(main(args.quick, args.skip_profile, only))


if __name__ == "__main__":
    sys.exit(cli())
