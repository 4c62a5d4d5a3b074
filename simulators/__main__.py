"""``python -m simulators`` (``make simulate``): the simulators in the foreground.

A development command, not one of ``mati2sentinel``'s: the simulators stay in the development
tree, and neither the installed package nor the image carries them.

Prints each simulator's URL and the CA file to trust, optionally writes the settings that
point the product at them to an env file, and runs until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

from simulators.feed import Feed
from simulators.together import Simulators


async def serve(args: argparse.Namespace) -> None:
    feed = Feed(seed=args.seed, count=args.indicators, days=args.days)
    async with Simulators(Path(args.state_dir), feed=feed) as sims:
        sims.log_analytics.ingestion_delay = args.ingestion_delay
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulators",
        description="Run the MATI, Entra ID, Sentinel and Log Analytics simulators until Ctrl-C.",
    )
    parser.add_argument("--indicators", type=int, default=20_000, help="size of the feed")
    parser.add_argument("--days", type=float, default=30, help="days the feed spans")
    parser.add_argument("--seed", type=int, default=7, help="seed of the feed generator")
    parser.add_argument("--state-dir", default=".state/simulators", help="where the CA file goes")
    parser.add_argument(
        "--ingestion-delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="how long an uploaded indicator takes to show up in Log Analytics queries",
    )
    parser.add_argument(
        "--env-file", default=None, help="also write the settings that point at the simulators"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    asyncio.run(serve(build_parser().parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
