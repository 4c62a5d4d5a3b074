"""What happens to a chaos run besides kills: the identity provider, MATI and an operator.

- **revoke_token**: the newest access token Entra issued is revoked (``TokenMinter.revoke``);
  the next upload carrying it is refused 401, as when a token is cut short by policy.
- **expire_cursors**: the next ``/v4/indicator`` request that continues a scroll finds every
  cursor expired (MATI's cursors live about ten minutes; a slow sync outlives one).
- **suppress** / **unsuppress**: ``mati2sentinel suppress add`` a few indicators the
  workspace holds live, and later ``suppress remove`` some of them, as an analyst does.
- **change_setting**: ``MINIMUM_CONFIDENCE`` raised for every service started from then on, a
  rollout of the filters (SIGTERM, start), then ``mati2sentinel sync --once --full``.

Operator commands run as their own processes and, when one fails (MATI faulted past its
retries, Redis down), run again, as the README tells an operator to; the attempts are
reported. The long ones run in the background while the kills go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from harness.chaos.faults import Injection
from harness.chaos.fleet import Fleet
from harness.chaos.ledger import Disruption, DisruptionKind, Ledger
from harness.chaos.phases import PAGE_ROUTE
from harness.chaos.scheduler import Action, ActionKind
from harness.pipeline import DESTINATION, Pipeline
from shared.adapters.destination_state import DestinationState
from shared.core.errors import PipelineError
from shared.core.indicator import HashType
from shared.core.stix import stix_id
from simulators.feed import Feed
from simulators.gates import Passing

#: What the setting change sets (from the accept-everything start): about 5 % of the feed
#: falls below it, so the full sync revokes that many.
RAISED_SETTING: Final = {"MINIMUM_CONFIDENCE": "10"}
#: Tries of an operator command before the run gives up on it.
ATTEMPTS: Final = 5
#: How long a release waits for the suppression's revocation to be in Sentinel.
REVOKED_WAIT_S: Final = 60.0


@dataclass
class ActionLog:
    suppressed: list[str] = field(default_factory=list)
    unsuppressed: list[str] = field(default_factory=list)
    setting: dict[str, str] = field(default_factory=dict)
    attempts: Counter[str] = field(default_factory=Counter)
    failed: list[str] = field(default_factory=list)
    tokens_revoked: int = 0
    cursors_expired: int = 0
    done: list[tuple[float, str]] = field(default_factory=list)


class Actions:
    def __init__(
        self,
        pipeline: Pipeline,
        fleet: Fleet,
        injection: Injection,
        ledger: Ledger,
        *,
        rng: random.Random,
        suppressions: int,
        excluded: set[str],
        cursor_wait_s: float,
        full_sync_timeout_s: float,
    ) -> None:
        self._pipeline, self._fleet = pipeline, fleet
        self._injection, self._ledger = injection, ledger
        self._rng = rng
        self._suppressions = suppressions
        self._excluded = excluded
        self._cursor_wait_s = cursor_wait_s
        self._full_sync_timeout_s = full_sync_timeout_s
        self.log = ActionLog()
        self._background: list[asyncio.Task[None]] = []
        self._suppressing: asyncio.Task[None] | None = None

    async def run(self, action: Action) -> None:
        if action.kind is ActionKind.REVOKE_ACCESS:
            self.revoke_token()
        elif action.kind is ActionKind.EXPIRE_CURSORS:
            await self.expire_cursors()
        elif action.kind is ActionKind.SUPPRESS:
            self._suppressing = self._spawn(self.suppress())
        elif action.kind is ActionKind.UNSUPPRESS:
            self._spawn(self.unsuppress())
        else:
            self._spawn(self.change_setting())

    async def finish(self) -> None:
        """Wait for the background actions (the full sync above all)."""
        await asyncio.gather(*self._background)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._background.append(task)
        return task

    def _done(self, what: str) -> None:
        self.log.done.append((time.monotonic(), what))

    # -- identity and MATI ----------------------------------------------------------------

    def revoke_token(self) -> None:
        issued = self._pipeline.sims.entra.tokens_issued
        if not issued:
            return
        self._pipeline.sims.minter.revoke(issued[-1].access_token)
        at = time.monotonic()
        self._ledger.disrupt(Disruption(DisruptionKind.ACCESS_REVOKED, at, at))
        self.log.tokens_revoked += 1
        self._done("revoke_token")

    async def expire_cursors(self) -> None:
        """At the next page request that continues a scroll (else after the wait, at once)."""
        mati = self._pipeline.sims.mati
        gates = self._injection.gates["mati"]
        seen = asyncio.Event()

        async def hook(passing: Passing) -> None:
            if not seen.is_set() and passing.query.get("next"):
                mati.expire_cursors()
                seen.set()

        gates.on_arrival.setdefault(PAGE_ROUTE, hook)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(seen.wait(), self._cursor_wait_s)
        finally:
            if gates.on_arrival.get(PAGE_ROUTE) is hook:
                del gates.on_arrival[PAGE_ROUTE]
        if not seen.is_set():
            mati.expire_cursors()
        self.log.cursors_expired += 1
        self._done("expire_cursors" + ("" if seen.is_set() else " (no scroll under way)"))

    # -- the operator ---------------------------------------------------------------------

    async def suppress(self) -> None:
        """Suppress a few indicators live in the workspace whose upload the product has
        committed (its seen entry is live): an analyst suppresses what they have seen there.
        One whose upload Sentinel stored but whose uploader died before committing is left
        out on purpose: ``suppress add`` then only supersedes the redelivered upload and the
        object stays live (a finding of this harness, reported, not a flake to meet)."""
        store, feed = self._pipeline.sims.sentinel.store, self._pipeline.feed
        assert self._pipeline.redis is not None
        seen = DestinationState(self._pipeline.redis, DESTINATION)
        order = list(range(len(feed)))
        self._rng.shuffle(order)
        chosen: list[str] = []
        for i in order:
            mati_id = feed.id(i)
            key = lineage(feed, mati_id)
            live = key in store and store[key].get("revoked") is not True
            if not live or mati_id in self._excluded:
                continue
            with contextlib.suppress(PipelineError):
                (entry,) = await seen.seen([key])
                if entry is not None and entry.live(datetime.now(UTC)):
                    chosen.append(mati_id)
            if len(chosen) == self._suppressions:
                break
        for mati_id in chosen:
            reason = "chaos: an analyst's false positive"
            if await self._operator("suppress", "add", mati_id, "--reason", reason):
                self.log.suppressed.append(mati_id)
        self._done("suppress")

    async def unsuppress(self) -> None:
        """Release half the suppressions, once their revocations are in Sentinel (at most
        ``REVOKED_WAIT_S`` later): an analyst lifts what was suppressed a while ago."""
        if self._suppressing is not None:  # what is not suppressed yet cannot be released
            await self._suppressing
        chosen = self.log.suppressed[: max(1, len(self.log.suppressed) // 2)]
        store, feed = self._pipeline.sims.sentinel.store, self._pipeline.feed
        firsts = [lineage(feed, mati_id) for mati_id in chosen]
        deadline = time.monotonic() + REVOKED_WAIT_S
        for _ in range(int(REVOKED_WAIT_S)):
            if time.monotonic() > deadline or all(
                key in store and store[key].get("revoked") is True for key in firsts
            ):
                break
            await asyncio.sleep(1.0)
        for mati_id in list(chosen):
            if await self._operator("suppress", "remove", mati_id):
                self.log.unsuppressed.append(mati_id)
        self._done("unsuppress")

    async def change_setting(self) -> None:
        self._pipeline.change_settings(RAISED_SETTING)
        self.log.setting = dict(RAISED_SETTING)
        await self._fleet.rolling_restart("filter")
        self._done("change_setting (filters restarted)")
        if await self._operator("sync", "--once", "--full", timeout_s=self._full_sync_timeout_s):
            self._done("full sync completed")

    async def _operator(self, *args: str, timeout_s: float = 180.0) -> bool:
        """``mati2sentinel args``, again until it exits 0 (at most ``ATTEMPTS`` times)."""
        processes = self._pipeline.processes
        assert processes is not None
        what = " ".join(args[:2])
        for attempt in range(1, ATTEMPTS + 1):
            self.log.attempts[what] += 1
            label = f"cli-{args[0]}-{args[1].lstrip('-')}-{self.log.attempts[what]}"
            child = await processes.start("cli", *args, label=label)
            try:
                code = await processes.wait(child, timeout_s)
            except TimeoutError:
                code = await processes.stop(child, grace_s=10)
            if code == 0:
                return True
            await asyncio.sleep(2.0 * attempt)
        self.log.failed.append(" ".join(args))
        return False


def lineage(feed: Feed, mati_id: str) -> str:
    """The first STIX id of an indicator (md5 indicators upload their md5 by default)."""
    hash_type = HashType.MD5 if feed.type_of(feed.index_of(mati_id)) == "md5" else None
    return stix_id(mati_id, hash_type)
