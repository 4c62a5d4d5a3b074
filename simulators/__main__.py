"""``mati2sentinel simulate`` / ``python -m simulators``: the simulators in the foreground.

Prints each simulator's URL and the CA file to trust, optionally writes the settings that
point the product at them to an env file, and runs until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from simulators.feed import Feed
from simulators.harness import Simulators


async def serve(args: argparse.Namespace) -> None:
    feed = Feed(seed=args.seed, count=args.indicators, days=args.days)
    async with Simulators(Path(args.state_dir), feed=feed) as sims:
        print(f"MATI          {sims.mati.url}", flush=True)
        print(f"Entra ID      {sims.entra.url}", flush=True)
        print(f"Sentinel      {sims.sentinel.url}", flush=True)
        print(f"Log Analytics {sims.log_analytics.url}", flush=True)
        print(f"CA file       {sims.ca.ca_path}", flush=True)
        if args.env_file:
            lines = [f"{name}={value}\n" for name, value in sims.environment().items()]
            await asyncio.to_thread(Path(args.env_file).write_text, "".join(lines))
            print(f"Settings      {args.env_file}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        print("ready", flush=True)
        await stop.wait()


def run(args: argparse.Namespace) -> int:
    asyncio.run(serve(args))
    return 0


def main() -> int:
    # The options live with the `mati2sentinel simulate` command, so both spellings agree.
    from services.cli import main as cli

    return cli(["simulate", *sys.argv[1:]])


if __name__ == "__main__":
    raise SystemExit(main())
