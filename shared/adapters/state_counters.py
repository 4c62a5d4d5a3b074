"""The counter hashes the fetcher and every destination keep in Redis, and the observers told
of every count they take.

Metrics mirror the counters through an observer (shared.telemetry.metrics), so no service needs
to know metrics exist and Redis and /metrics can never disagree on a name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeAlias

from redis.commands.core import AsyncScript

from shared.adapters.redis_connect import RedisClient
from shared.adapters.state_redis import as_text, run, translated
from shared.core.events import get_logger

log = get_logger(__name__)

#: Told of every count Redis has taken: ``(destination, counts)``, with ``""`` as the destination
#: for the fetcher's feed counters.
CountObserver: TypeAlias = Callable[[str, Mapping[str, int]], None]
_count_observers: list[CountObserver] = []


def observe_counts(observer: CountObserver) -> Callable[[], None]:
    """Call ``observer`` after every successful ``count`` of any ``FeedState`` or
    ``DestinationState`` in this process; returns the function that stops it."""
    _count_observers.append(observer)

    def remove() -> None:
        if observer in _count_observers:
            _count_observers.remove(observer)

    return remove


def counted(destination: str, counts: Mapping[str, int]) -> None:
    """Observers are telemetry: one that fails must never fail the count it was told of."""
    for observer in list(_count_observers):
        try:
            observer(destination, counts)
        except Exception:  # telemetry must not break the pipeline
            log.exception("state.observer_failed")


async def count(script: AsyncScript, key: str, counts: Mapping[str, int]) -> None:
    """One round trip (the ``COUNT`` script) for a whole batch's reasons; a batch that counted
    nothing costs none."""
    args: list[str | int] = []
    for name, amount in counts.items():
        if amount:
            args += (name, int(amount))
    if args:
        await run(script, [key], args, "count")


async def counters(client: RedisClient, key: str) -> dict[str, int]:
    """A value that is not a number (not ours) is left out rather than failing ``status``."""
    with translated("counters"):
        raw = await client.hgetall(key)
    values: dict[str, int] = {}
    for name, value in raw.items():
        try:
            values[as_text(name)] = int(value)
        except ValueError:
            continue
    return values
