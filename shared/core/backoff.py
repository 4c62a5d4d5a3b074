"""How long to wait before trying again: jittered exponential back-off and the server's own hints.

Pure functions and one frozen policy, no I/O and no clock of their own: callers pass the elapsed
time and a random source, so tests assert the exact waits a client chose without sleeping.

Back-off formula ("full jitter", AWS Architecture Blog, *Exponential Backoff And Jitter*)::

    ceiling(n) = min(cap_s, base_s * 2 ** (n - 1))      n = 1 for the first retry
    wait(n)    = uniform(0, ceiling(n))

Full jitter is chosen over a fixed exponential schedule because several replicas (and the other
connectors of the same tenant) that failed together must not retry together: spreading each wait
over the whole ``[0, ceiling]`` interval de-synchronises them best for the same total load.

A retry is allowed only while *both* bounds hold: fewer than ``max_attempts`` attempts made, and
the time already spent plus the next wait within ``budget_s``. Attempts alone would let a server
asking for long ``Retry-After`` waits hold a worker for hours; a budget alone would let a fast
failing peer be hammered hundreds of times.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Final

#: Sentinel's 429 body says "Rate limit is exceeded. Try again in 23 seconds."
_TRY_AGAIN: Final = re.compile(r"try\s+again\s+in\s+(\d+(?:\.\d+)?)\s*sec", re.IGNORECASE)
_DELTA_SECONDS: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*$")


@dataclass(frozen=True, slots=True)
class Backoff:
    """A retry policy: exponential ceiling, full jitter, bounded by attempts and a time budget.

    ``max_attempts`` counts every attempt including the first, so ``max_attempts=6`` means at
    most five waits.
    """

    base_s: float = 1.0
    cap_s: float = 60.0
    max_attempts: int = 6
    budget_s: float = 300.0

    def __post_init__(self) -> None:
        if not (self.base_s > 0 and math.isfinite(self.base_s)):
            raise ValueError("base_s must be a positive number of seconds")
        if not (self.cap_s >= self.base_s and math.isfinite(self.cap_s)):
            raise ValueError("cap_s must be finite and at least base_s")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not (self.budget_s >= 0 and math.isfinite(self.budget_s)):
            raise ValueError("budget_s must be a finite, non-negative number of seconds")

    def ceiling(self, retry: int) -> float:
        """The largest wait before retry number ``retry`` (1 = the first retry)."""
        if retry < 1:
            raise ValueError("retry numbers start at 1")
        # Clamp the exponent so 2**n never overflows a float for absurd retry numbers.
        exponent = min(retry - 1, 1023)
        return min(self.cap_s, self.base_s * 2.0**exponent)

    def jittered(self, retry: int, rng: random.Random) -> float:
        """A full-jitter wait before retry number ``retry``: uniform in ``[0, ceiling(retry)]``."""
        return rng.uniform(0.0, self.ceiling(retry))

    def next_wait(
        self,
        attempts_made: int,
        elapsed_s: float,
        rng: random.Random,
        *,
        server_wait_s: float | None = None,
    ) -> float | None:
        """The wait before the next attempt, or ``None`` when the policy says give up.

        ``attempts_made`` is how many attempts already failed (>= 1); ``elapsed_s`` is the time
        spent since the first one started. A wait the server asked for (``Retry-After``, or the
        seconds in a 429 message) is used as is rather than jittered: the server knows when its
        window reopens, and waiting less only earns another 429.
        """
        if attempts_made < 1:
            raise ValueError("next_wait is asked after at least one failed attempt")
        if attempts_made >= self.max_attempts:
            return None
        if server_wait_s is not None and server_wait_s >= 0 and math.isfinite(server_wait_s):
            wait = server_wait_s
        else:
            wait = self.jittered(attempts_made, rng)
        if max(elapsed_s, 0.0) + wait > self.budget_s:
            return None
        return wait


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (RFC 9110 §10.2.3), or ``None``.

    Both forms are accepted: delta-seconds (``120``; a fraction such as ``0.5`` too, which some
    gateways send) and an HTTP-date (``Wed, 21 Oct 2015 07:28:00 GMT``), measured from ``now``
    (default: the current UTC time). A date in the past means "now" (0). Anything unreadable is
    ``None`` so the caller falls back to its own back-off instead of trusting garbage.
    """
    if value is None:
        return None
    match = _DELTA_SECONDS.match(value)
    if match:
        seconds = float(match.group(1))
        return seconds if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # RFC 9110 dates are always GMT; email.utils gives naive datetimes for "-0000".
        when = when.replace(tzinfo=UTC)
    reference = now if now is not None else datetime.now(UTC)
    return max(0.0, (when - reference).total_seconds())


def parse_try_again_text(text: str | None) -> float | None:
    """Seconds from Sentinel's 429 message text "… Try again in N seconds.", or ``None``.

    Sentinel documents the wait only in its message body (a ``Retry-After`` header is probable
    but not documented), and real connectors parse the number out of that text.
    """
    if not text:
        return None
    match = _TRY_AGAIN.search(text)
    if match is None:
        return None
    seconds = float(match.group(1))
    return seconds if math.isfinite(seconds) else None
