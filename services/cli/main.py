"""``mati2sentinel``: one command for operators; each subcommand is a thin composition root.

Service modules are imported only by the subcommand that runs them, so ``status`` never
loads the uploader's code and no service imports another.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from services import runtime
from shared.core.errors import ConfigError, OperatorRefused, PipelineError
from shared.core.settings import Service

if TYPE_CHECKING:  # the client's module is imported only by the commands that ask MATI
    from shared.adapters.mati_client import MatiClient


def check_config(args: argparse.Namespace) -> int:
    settings = runtime.load(Service(args.service))
    rows = settings.effective()
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")
    return 0


def fetcher(args: argparse.Namespace) -> int:
    from services.fetcher.main import main

    return main()


def filter_(args: argparse.Namespace) -> int:
    from services.filter.main import main

    return main()


def uploader(args: argparse.Namespace) -> int:
    from services.uploader.main import main

    return main()


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


def _admin(command: str, work: Callable[[runtime.Runtime], object]) -> int:
    """Run an operator command against the state and queues; it needs no credential and
    binds no port. Redis or the bus not answering is one line and exit 1, not a traceback."""
    settings = runtime.load(Service.ADMIN)

    async def go() -> int:
        async with runtime.open_runtime(settings, Service.ADMIN, http=False) as rt:
            result = work(rt)
            if asyncio.iscoroutine(result):
                await result
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

    return _admin("status", show)


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

    return _admin("dlq", work)


def _with_mati(command: str, work: Callable[[runtime.Runtime, MatiClient], Awaitable[None]]) -> int:
    """Run an operator command that asks MATI (``explain``, ``suppress add|remove``): it loads
    the fetcher's settings for MATI's URL and credentials; otherwise like ``_admin``."""
    from services.fetcher.main import mati_client

    settings = runtime.load(Service.FETCHER)

    async def go() -> int:
        async with runtime.open_runtime(settings, Service.ADMIN, http=True) as rt:
            if rt.http is None:
                raise RuntimeError(f"{command} needs an HTTP session")
            await work(rt, mati_client(rt.http, settings, max_wait_s=30.0))
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

    return _with_mati("explain", work)


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

        return _admin(command, show)
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

    return _with_mati(command, work)


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
    try:
        settings = runtime.load(Service.ALL if args.repair else Service.UPLOADER)
    except ConfigError as exc:
        return _failed("reconcile", exc)

    async def go() -> int:
        async with runtime.open_runtime(settings, Service.ADMIN, http=True) as rt:
            if rt.http is None:
                raise RuntimeError("reconcile needs an HTTP session")
            reader = open_reader(settings, rt.http)
            try:
                work = reconcile_.Reconciler(
                    settings,
                    workspace_state(rt.redis, settings.destination),
                    reader,
                    datetime.now(UTC),
                    progress=None if args.quiet else reconcile_.progress_line,
                )
                outcome = await work.compare()
                if args.repair:
                    mati = mati_client(rt.http, settings, max_wait_s=30.0)
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

    try:
        return asyncio.run(go())
    except PipelineError as exc:
        _failed("reconcile", exc)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mati2sentinel",
        description="Mandiant Advantage Threat Intelligence indicators into Microsoft Sentinel.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, handler, text in (
        ("fetcher", fetcher, "run the fetcher: page MATI every SYNC_SCHEDULE hours"),
        ("filter", filter_, "run the filter: apply the filters and the seen cache"),
        ("uploader", uploader, "run the uploader: send accepted indicators to Sentinel"),
    ):
        commands.add_parser(name, help=text).set_defaults(handler=handler)

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
    check.set_defaults(handler=check_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))
