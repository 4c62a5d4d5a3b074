"""``mati2sentinel``: one command for operators; each subcommand is a thin composition root."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from shared.errors import ConfigError
from shared.settings import Service, Settings, load_settings


def _load(service: Service) -> Settings:
    """Load settings or exit 2 with one line per problem, before anything connects."""
    try:
        settings = load_settings(os.environ, service)
    except ConfigError as exc:
        print("mati2sentinel: invalid settings:", file=sys.stderr)
        for line in exc.problems:
            print(f"  {line}", file=sys.stderr)
        raise SystemExit(2) from None
    for line in settings.warnings:
        print(f"mati2sentinel: warning: {line}", file=sys.stderr)
    return settings


def check_config(args: argparse.Namespace) -> int:
    settings = _load(Service(args.service))
    width = max(len(name) for name, _ in settings.effective())
    for name, value in settings.effective():
        print(f"{name.ljust(width)}  {value}")
    return 0


def simulate(args: argparse.Namespace) -> int:
    # Imported here: the simulators are a development tool, never loaded by a service.
    from simulators.__main__ import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mati2sentinel",
        description="Mandiant Advantage Threat Intelligence indicators into Microsoft Sentinel.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser(
        "check-config", help="validate the settings and print them, secrets masked"
    )
    check.add_argument(
        "--service",
        choices=[s.value for s in Service],
        default=Service.ALL.value,
        help="check only what this service needs (default: all)",
    )
    check.set_defaults(handler=check_config)

    sim = commands.add_parser(
        "simulate", help="run the MATI, Entra ID and Sentinel simulators in the foreground"
    )
    sim.add_argument("--indicators", type=int, default=20_000, help="size of the simulated feed")
    sim.add_argument("--days", type=float, default=30, help="days the feed spans")
    sim.add_argument("--seed", type=int, default=7, help="seed of the feed generator")
    sim.add_argument("--state-dir", default=".state/simulators", help="where the CA file goes")
    sim.add_argument(
        "--env-file", default=None, help="also write the settings that point at the simulators"
    )
    sim.set_defaults(handler=simulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
