"""``make chaos``: ``python -m harness.chaos [--quick] [--seed N] [--bus redis|servicebus|both]``.

Without ``--bus`` it runs the Redis Streams variant, then the Service Bus one. It prints a table
per run, writes ``chaos-results.json`` and exits 0 only if every check of every run held; on
a failure it says which check failed and where the logs are.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shlex
import sys
from pathlib import Path

from harness.chaos.report import RESULTS, Outcome, table, write
from harness.chaos.run import run
from harness.chaos.variants import variant

DEFAULT_SEED = 16


async def main(buses: list[str], quick: bool, seed: int, state_dir: Path, command: str) -> int:
    outcomes: list[Outcome] = []
    for bus in buses:
        outcome = await run(variant(bus, quick=quick, seed=seed), state_dir / bus, command)
        outcomes.append(outcome)
        print(f"\n{table(outcome)}\n", flush=True)
        write(outcomes)
        for name, problems in outcome.checks.items():
            for problem in problems:
                print(f"FAILED ({bus}) {name}: {problem}", flush=True)
        if not outcome.passed:
            print(f"logs: {outcome.logs}", flush=True)
    print(f"results: {RESULTS}")
    return 0 if all(o.passed for o in outcomes) else 1


def cli() -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.chaos", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small run: checks the harness")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="the plan's seed")
    parser.add_argument("--bus", choices=("redis", "servicebus", "both"), default="both")
    parser.add_argument("--state-dir", type=Path, default=Path(".state/chaos"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # The simulators' resets and stalls are faults on purpose; aiohttp logs each as an error.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    buses = ["redis", "servicebus"] if args.bus == "both" else [args.bus]
    command = "python -m harness.chaos " + shlex.join(sys.argv[1:])
    return asyncio.run(main(buses, args.quick, args.seed, args.state_dir, command.strip()))


if __name__ == "__main__":
    sys.exit(cli())
