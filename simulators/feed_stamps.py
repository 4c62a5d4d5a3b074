"""Epoch milliseconds, and the timestamp forms a MATI record carries (§5.1, §5.2).

Integer arithmetic, so a millisecond never rounds away, and look-up tables instead of a
``datetime`` per stamp. The ``sources[]`` form (``...+0000``) is spelled out from the same
tables in the record builder's hottest loop.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)  # only for formatting UTC stamps
DAY_MS = 86_400_000


def to_ms(moment: datetime) -> int:
    """A timezone-aware datetime as integer epoch milliseconds (exact: no float rounding)."""
    if moment.tzinfo is None:
        raise ValueError("datetimes must be timezone-aware")
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def from_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


@functools.lru_cache(maxsize=4096)
def day_prefix(day: int) -> str:
    """``YYYY-MM-DDT`` of a day since the epoch; a feed spans a few hundred days at most."""
    return (_EPOCH_NAIVE + timedelta(days=day)).strftime("%Y-%m-%dT")


# A record formats ~8 stamps: table look-ups instead of a datetime each (4x cheaper).
HH_MM = tuple(f"{m // 60:02d}:{m % 60:02d}:" for m in range(1440))
SS = tuple(f"{s:02d}" for s in range(60))
MSS = tuple(f".{m:03d}" for m in range(1000))


def _iso(ms: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS.mmm`` of epoch milliseconds, UTC (no suffix)."""
    day, rest = divmod(ms, DAY_MS)
    return day_prefix(day) + HH_MM[rest // 60_000] + SS[rest // 1000 % 60] + MSS[rest % 1000]


def iso_ms_z(ms: int) -> str:
    """``last_updated`` form: ``2023-01-26T08:19:05.976Z`` (real milliseconds)."""
    return _iso(ms) + "Z"


def iso_s_z(ms: int) -> str:
    """Top-level ``first_seen``/``last_seen`` form: seconds precision, ``.000Z``."""
    day, rest = divmod(ms, DAY_MS)
    return day_prefix(day) + HH_MM[rest // 60_000] + SS[rest // 1000 % 60] + ".000Z"
