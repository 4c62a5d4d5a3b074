"""The one way to try again: ``retry`` runs an attempt until it succeeds, waiting as a
``Backoff`` policy says between failures, and a stop event ends the waiting.

Two kinds of caller share it. A client call (MATI, the token endpoint) is *bounded*: it gives
up after the policy's attempts or time budget and lets the last error speak. A service loop
waiting out an outage (Redis failing over, the bus not up yet) is *unbounded*: giving up would
only crash the pod into a restart loop, so it keeps trying, with jittered waits that never
exceed the policy's cap, until the peer answers or the service is asked to stop.

The wait is always full-jitter from the policy (replicas that failed together must not retry
together), or the server's own hint when it gave one.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from shared.core.backoff import Backoff
from shared.core.timing import Monotonic, Sleep, sleep_unless_stopped

T = TypeVar("T")


class Stopped(Exception):
    """``retry`` was asked to stop while it waited; the last failure is its ``__cause__``."""


@dataclass(slots=True)
class Retrier:
    """One caller's failures in a row under ``policy``: the next wait, or None to give up.

    ``bounded`` callers give up when the policy does (attempts or budget, counted from
    ``begin``); the others only take the policy's jittered waits."""

    policy: Backoff
    rng: random.Random = field(default_factory=random.Random)
    clock: Monotonic = time.monotonic
    bounded: bool = True
    failures: int = 0
    _began_at: float | None = None

    def begin(self) -> None:
        """The first attempt starts now: the policy's time budget counts from here."""
        self.failures = 0
        self._began_at = self.clock()

    def next_wait(self, *, server_wait_s: float | None = None) -> float | None:
        """Count one failure; the wait before the next attempt, or None to give up."""
        self.failures += 1
        if self._began_at is None:
            self._began_at = self.clock()
        if not self.bounded:
            if server_wait_s is not None and server_wait_s >= 0:
                return server_wait_s
            return self.policy.jittered(self.failures, self.rng)
        return self.policy.next_wait(
            self.failures, self.clock() - self._began_at, self.rng, server_wait_s=server_wait_s
        )

    def reset(self) -> None:
        """A success: the next failure is a first one again."""
        self.failures = 0
        self._began_at = None


async def retry(
    attempt: Callable[[], Awaitable[T]],
    *,
    on: type[BaseException] | tuple[type[BaseException], ...],
    retrier: Retrier,
    stop: asyncio.Event | None = None,
    sleep: Sleep = asyncio.sleep,
    server_wait: Callable[[BaseException], float | None] | None = None,
    on_retry: Callable[[BaseException, float], None] | None = None,
) -> T:
    """``await attempt()`` until it returns; an exception of type ``on`` is retried after the
    retrier's wait, anything else propagates at once.

    When the retrier gives up, the last exception propagates. When ``stop`` is set during a
    wait, ``Stopped`` is raised from it. ``on_retry(exc, wait)`` is called before each wait (a
    log line); ``server_wait(exc)`` reads a server's hint (``Retry-After``) from the failure.
    """
    retrier.begin()
    while True:
        try:
            result = await attempt()
        except on as exc:
            wait = retrier.next_wait(server_wait_s=server_wait(exc) if server_wait else None)
            if wait is None:
                raise
            if on_retry is not None:
                on_retry(exc, wait)
            if stop is None:
                await sleep(wait)
            elif not await sleep_unless_stopped(stop, wait, sleep=sleep):
                raise Stopped from exc
        else:
            retrier.reset()
            return result
