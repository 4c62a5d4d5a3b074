"""``mati2sentinel``: one command for operators; each subcommand is a thin composition root.

Service modules are imported only by the subcommand that runs them, so ``status`` never
loads the uploader's code and no service imports another.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from services import configuration, runtime
from shared.core.errors import ConfigError, OperatorRefused, PipelineError
from shared.core.settings import Service, Settings

if TYPE_CHECKING:  # the client's module is imported only by the commands that ask MATI
    import aiohttp

    from shared.adapters.mati_client import MatiClient


def check_config(args: argparse.Namespace) -> int:
    """Every destination's effective settings, one section each when there are several."""
    _, destinations = configuration.load(Service(args.service), args.destination)
    for name, settings in destinations.items():
        _header(name, destinations)
        rows = settings.effective()
        width = max(len(row) for row, _ in rows)
        for row, value in rows:
            print(f"{row.ljust(width)}  {value}")
    return 0


def _header(name: str, destinations: Mapping[str, Settings], *, json: bool = False) -> None:
    """The line that opens one destination's section, when an answer has several."""
    if len(destinations) > 1 and not json:
        print(f"== destination {name} ==")


async def _each(
    rt: runtime.Runtime,
    destinations: Mapping[str, Settings],
    work: Callable[[runtime.Runtime], object],
    *,
    json: bool = False,
) -> None:
    """``work`` once per destination, on the same connections, with that destination's
    settings; text answers get one section each, JSON answers one document each."""
    for name, settings in destinations.items():
        _header(name, destinations, json=json)
        result = work(replace(rt, settings=settings))
        if asyncio.iscoroutine(result):
            await result


def fetcher(args: argparse.Namespace) -> int:
    from services.fetcher.main import main

    return main()


def filter_(args: argparse.Namespace) -> int:
    from services.filter.main import main

    return main(args.destination)


def uploader(args: argparse.Namespace) -> int:
    from services.uploader.main import main

    return main(args.destination)


def sync(args: argparse.Namespace) -> int:
    from services.fetcher.main import sync_main

    return sync_main(full=args.full)


def run_local(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from services.cli.supervisor import run_local as run

    try:
        return asyncio.run(run(os.environ, Path(args.state_dir)))
    except PipelineError as exc:
        return _failed("run-local", exc)


def _admin(
    command: str,
    work: Callable[[runtime.Runtime], object],
    args: argparse.Namespace,
) -> int:
    """Run an operator command against the state and queues of every destination, or the one
    ``--destination`` names; it needs no credential and binds no port. Redis or the bus not
    answering is one line and exit 1, not a traceback."""
    settings, destinations = configuration.load(Service.ADMIN, args.destination)

    async def go() -> int:
        async with runtime.open_runtime(settings, Service.ADMIN, http=False) as rt:
            await _each(rt, destinations, work, json=getattr(args, "json", False))
        return 0

    try:
        return asyncio.run(go())
    except PipelineError as exc:
        return _failed(command, exc)


def _failed(command: str, exc: PipelineError) -> int:
    """One line per problem on stderr: 2 for a setting to fix, 1 for a peer that failed."""
    if isinstance(exc, ConfigError):
        for line in exc.problems:
            print(f"mati2sentinel {command}: {line}", file=sys.stderr)
        return 2
    if isinstance(exc, OperatorRefused):
        print(f"mati2sentinel {command}: {exc}", file=sys.stderr)
        return 1
    print(f"mati2sentinel {command}: {type(exc).__name__}: {exc}", file=sys.stderr)
    return 1


def status(args: argparse.Namespace) -> int:
    from services.cli import status as status_

    async def show(rt: runtime.Runtime) -> None:
        current = await status_.collect(rt)
        if args.json:
            sys.stdout.buffer.write(current.to_json() + b"\n")
        else:
            print(status_.render(current))

    return _admin("status", show, args)


def dlq(args: argparse.Namespace) -> int:
    from services.cli import dlq as dlq_

    async def work(rt: runtime.Runtime) -> None:
        if args.action == "replay":
            replayed = await dlq_.replay(rt, args.queue, args.limit)
            print(f"replayed {replayed} message(s) to {dlq_.source_of(rt, args.queue)}")
            return
        views = await dlq_.list_dead_letters(rt, args.queue, args.limit)
        if args.json:
            sys.stdout.buffer.write(dlq_.to_json(views) + b"\n")
        else:
            print(dlq_.render(views))

    return _admin("dlq", work, args)


def _with_mati(
    command: str,
    work: Callable[[runtime.Runtime, MatiClient], Awaitable[None]],
    args: argparse.Namespace,
) -> int:
    """Run an operator command that asks MATI (``explain``, ``suppress add|remove``): it loads
    the fetcher's settings for MATI's URL and credentials; otherwise like ``_admin``."""
    from services.fetcher.main import mati_client

    settings, destinations = configuration.load(
        Service.FETCHER, args.destination, each=Service.FILTER
    )

    async def go() -> int:
        async with runtime.open_runtime(settings, Service.ADMIN, http=True) as rt:
            if rt.http is None:
                raise RuntimeError(f"{command} needs an HTTP session")
            mati = mati_client(rt.http, settings, max_wait_s=30.0)
            await _each(rt, destinations, lambda each: work(each, mati), json=args.json)
        return 0

    try:
        return asyncio.run(go())
    except PipelineError as exc:
        return _failed(command, exc)


def explain(args: argparse.Namespace) -> int:
    """Asks MATI for the indicator as it is now; otherwise reads state and queues like
    ``status``."""
    from datetime import UTC, datetime

    from services.cli import explain as explain_
    from shared.adapters.destination_state import DestinationState
    from shared.adapters.feed_state import FeedState

    try:
        query = explain_.read_query(args.indicator)
        if args.scan < 1:
            raise ValueError(f"--scan must be at least 1, got {args.scan}")
    except ValueError as exc:
        print(f"mati2sentinel explain: {exc}", file=sys.stderr)
        return 2

    async def work(rt: runtime.Runtime, mati: MatiClient) -> None:
        settings = rt.settings
        facts = await explain_.gather(
            query,
            settings=settings,
            bus=rt.bus,
            state=DestinationState(rt.redis, settings.destination),
            feed=FeedState(rt.redis),
            mati=mati,
            now=datetime.now(UTC),
            scan_limit=args.scan,
        )
        answer = explain_.judge(
            query,
            facts,
            settings.filter_policy(),
            settings.stix_policy(),
            settings.validity_refresh_ratio,
        )
        if args.json:
            sys.stdout.buffer.write(answer.to_json() + b"\n")
        else:
            print(explain_.render(answer))

    return _with_mati("explain", work, args)


def suppress(args: argparse.Namespace) -> int:
    """``add`` and ``remove`` ask MATI for the record (``_with_mati``); ``list`` reads Redis
    only (``_admin``). A refusal (MATI does not know it, it is not suppressed) is one line and
    exit 1 (``OperatorRefused``); a usage error exit 2."""
    from datetime import UTC, datetime

    from services.cli import suppress as suppress_
    from services.cli.query import read_query
    from shared.adapters.destination_state import DestinationState

    command = f"suppress {args.action}"
    if args.action == "list":

        async def show(rt: runtime.Runtime) -> None:
            destination = rt.settings.destination
            current = await DestinationState(rt.redis, destination).suppressions.snapshot()
            listed = current.newest_first()
            if args.json:
                sys.stdout.buffer.write(suppress_.to_json(destination, listed) + b"\n")
            else:
                print(suppress_.render_list(destination, listed))

        return _admin(command, show, args)
    try:
        if args.indicator is None:
            raise ValueError("give an indicator value or a MATI id")
        query = read_query(args.indicator)
        reason = (args.reason or "").strip()
        if args.action == "add" and not reason:
            raise ValueError("--reason is required: say why it is kept out")
    except ValueError as exc:
        print(f"mati2sentinel {command}: {exc}", file=sys.stderr)
        return 2

    async def work(rt: runtime.Runtime, mati: MatiClient) -> None:
        settings = rt.settings
        state = DestinationState(rt.redis, settings.destination)
        if args.action == "add":
            now = datetime.now(UTC)
            added = await suppress_.add(
                query, reason, settings=settings, bus=rt.bus, state=state, mati=mati, now=now
            )
            print(suppress_.render_added(added, settings.destination))
        else:
            removed = await suppress_.remove(
                query, settings=settings, bus=rt.bus, state=state, mati=mati
            )
            print(suppress_.render_removed(removed, settings.destination))

    return _with_mati(command, work, args)


def reconcile(args: argparse.Namespace) -> int:
    """Reads the workspace with the uploader's identity; ``--repair`` also asks MATI (the
    fetcher's credentials) and publishes to the filter. Exit 0: no drift (or all of it
    repaired); 1: drift found (or some left unresolved); 2: it could not be checked."""
    from datetime import UTC, datetime

    from services.cli import reconcile as reconcile_
    from services.fetcher.main import mati_client
    from services.workspace import open_reader, workspace_state

    if args.max_lookups < 0:
        print("mati2sentinel reconcile: --max-lookups must be at least 0", file=sys.stderr)
        return 2
    # azure-identity logs each failed token request itself; the one line below says it.
    logging.getLogger("azure").setLevel(logging.CRITICAL)
    settings, destinations = configuration.load(
        Service.ALL if args.repair else Service.UPLOADER, args.destination, each=Service.UPLOADER
    )

    async def one(
        rt: runtime.Runtime, http: aiohttp.ClientSession, mati: MatiClient | None, target: Settings
    ) -> int:
        """Compare (and repair, with ``mati``) one destination's workspace; its exit code."""
        reader = open_reader(target, http)
        try:
            work = reconcile_.Reconciler(
                target,
                workspace_state(rt.redis, target.destination),
                reader,
                datetime.now(UTC),
                progress=None if args.quiet else reconcile_.progress_line,
            )
            outcome = await work.compare()
            if mati is not None:
                outcome.repair = await work.repair(
                    bus=rt.bus, mati=mati, max_lookups=args.max_lookups
                )
            await work.save(outcome)
        finally:
            await reader.close()
        if args.json:
            sys.stdout.buffer.write(outcome.to_json() + b"\n")
        else:
            print(reconcile_.render(outcome))
        if outcome.repair is not None:
            return 1 if outcome.repair.unresolved else 0
        return 1 if outcome.report.drifted else 0

    async def go() -> int:
        codes = [0]
        async with runtime.open_runtime(settings, Service.ADMIN, http=True) as rt:
            if rt.http is None:
                raise RuntimeError("reconcile needs an HTTP session")
            # One MATI client for every destination: one token, one pace.
            mati = mati_client(rt.http, settings, max_wait_s=30.0) if args.repair else None
            for name, target in destinations.items():
                _header(name, destinations, json=args.json)
                codes.append(await one(rt, rt.http, mati, target))
        return max(codes)

    try:
        return asyncio.run(go())
    except PipelineError as exc:
        _failed("reconcile", exc)
        return 2


def _destination_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--destination",
        help="only this destination (default: every destination, one section each; without "
        "DESTINATIONS_FILE, DESTINATION)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mati2sentinel",
        description="Mandiant Advantage Threat Intelligence indicators into Microsoft Sentinel.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser(
        "fetcher", help="run the fetcher: page MATI every SYNC_SCHEDULE hours, for all destinations"
    ).set_defaults(handler=fetcher)
    for name, handler, text in (
        ("filter", filter_, "run the filter: apply the filters and the seen cache"),
        ("uploader", uploader, "run the uploader: send accepted indicators to Sentinel"),
    ):
        service = commands.add_parser(name, help=text)
        service.add_argument(
            "--destination",
            help="the destination this process serves (default: DESTINATION); with "
            "DESTINATIONS_FILE, one of the file's names",
        )
        service.set_defaults(handler=handler)

    sync_ = commands.add_parser("sync", help="run one sync now and exit when it is published")
    sync_.add_argument("--once", action="store_true", required=True, help="(required) one sync")
    sync_.add_argument(
        "--full",
        action="store_true",
        help="re-page every indicator that can still be live (the longest expiration), not "
        "only what changed since the checkpoint: run it after changing a filter or STIX setting",
    )
    sync_.set_defaults(handler=sync)

    stat = commands.add_parser("status", help="checkpoint, queues, counters by reason, circuit")
    stat.add_argument("--json", action="store_true", help="machine-readable output")
    _destination_option(stat)
    stat.set_defaults(handler=status)

    dead = commands.add_parser("dlq", help="list or replay dead-lettered messages")
    dead.add_argument("action", choices=["list", "replay"])
    dead.add_argument(
        "--queue",
        choices=["upload", "revoke", "indicators"],
        default="upload",
        help="upload: records Sentinel rejected; revoke: revocations Sentinel rejected; "
        "indicators: MATI records the filter refused",
    )
    dead.add_argument("--limit", type=int, default=100, help="at most this many")
    dead.add_argument("--json", action="store_true", help="machine-readable output (list)")
    _destination_option(dead)
    dead.set_defaults(handler=dlq)

    why = commands.add_parser(
        "explain",
        help="where one indicator is: dropped, queued, in flight, uploaded or rejected, and why",
    )
    why.add_argument("indicator", help="a MATI id (ipv4--<uuid>) or a value (ip, domain, url, md5)")
    why.add_argument("--json", action="store_true", help="machine-readable output")
    why.add_argument(
        "--scan",
        type=int,
        default=1000,
        help="read at most this many messages of each queue and dead-letter queue",
    )
    _destination_option(why)
    why.set_defaults(handler=explain)

    keep = commands.add_parser(
        "suppress",
        help="keep an indicator out of the workspace now (revoked) until removed; or list them",
    )
    keep.add_argument("action", choices=["add", "remove", "list"])
    keep.add_argument(
        "indicator",
        nargs="?",
        help="add/remove: a MATI id (ipv4--<uuid>) or a value (ip, domain, url, md5)",
    )
    keep.add_argument("--reason", help="add: why it is kept out (required, shown by explain)")
    keep.add_argument("--json", action="store_true", help="list: machine-readable output")
    _destination_option(keep)
    keep.set_defaults(handler=suppress)

    check_ws = commands.add_parser(
        "reconcile",
        help="compare the workspace (Log Analytics) with the seen cache; --repair fixes drift",
    )
    check_ws.add_argument("--json", action="store_true", help="machine-readable output")
    check_ws.add_argument(
        "--repair",
        action="store_true",
        help="set the seen cache to what the workspace holds and hand drifted records to the "
        "filter again (needs the MATI credentials too)",
    )
    check_ws.add_argument(
        "--max-lookups",
        type=int,
        default=1000,
        help="--repair: ask MATI for at most this many unknown objects' records (the rest are "
        "rebuilt only; a full sync re-judges them)",
    )
    check_ws.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    _destination_option(check_ws)
    check_ws.set_defaults(handler=reconcile)

    local = commands.add_parser(
        "run-local",
        help="a private Redis and the three services on this machine, until Ctrl-C",
    )
    local.add_argument("--state-dir", default=".state", help="where Redis keeps its AOF")
    local.set_defaults(handler=run_local)

    check = commands.add_parser(
        "check-config", help="validate the settings and print them, secrets masked"
    )
    check.add_argument(
        "--service",
        choices=[s.value for s in Service],
        default=Service.ALL.value,
        help="check only what this service needs (default: all)",
    )
    _destination_option(check)
    check.set_defaults(handler=check_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))
