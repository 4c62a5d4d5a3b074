"""Time as the services use it: one name per meaning, and one way to wait that a stop ends.

Two clocks, because they answer different questions: a ``Monotonic`` measures how long
something took or how long to wait (it never jumps with the wall clock); a ``UtcClock`` stamps
what happened (a checkpoint, an upload's ``modified``), which the workspace and MATI compare
across machines. Both are injected, so tests move time instead of waiting for it.

``sleep_unless_stopped`` races the sleep against the stop event with ``asyncio.wait`` rather
than ``asyncio.wait_for(stop.wait(), timeout)``: the sleep stays injectable (a test's fake sleep
decides), and on Python 3.11 ``wait_for`` can swallow a cancellation that arrives as its
timeout fires.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

#: Seconds on a clock that only moves forward (``time.monotonic``).
Monotonic = Callable[[], float]
#: The current time, timezone-aware, in UTC.
UtcClock = Callable[[], datetime]
#: ``asyncio.sleep``, or a test's stand-in.
Sleep = Callable[[float], Awaitable[None]]


def utc_now() -> datetime:
    return datetime.now(UTC)


async def sleep_unless_stopped(
    stop: asyncio.Event, seconds: float, *, sleep: Sleep = asyncio.sleep
) -> bool:
    """Sleep ``seconds`` unless ``stop`` is set first; True when the whole time passed.

    Returns at once when already stopped, and after no sleep at all for ``seconds <= 0``. A
    cancellation of the caller cancels both waits and propagates."""
    if stop.is_set():
        return False
    if seconds <= 0:
        return True
    sleeper = asyncio.ensure_future(sleep(seconds))
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((sleeper, stopper), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sleeper, stopper):
            task.cancel()
        for task in (sleeper, stopper):
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return not stop.is_set()


def aware_timestamp(value: object) -> datetime | None:
    """An ISO 8601 text with its UTC offset as an aware datetime; ``None`` for anything else
    (a run summary read back from Redis may be missing a time, or hold a naive one, and a
    naive time cannot be compared with now)."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None
