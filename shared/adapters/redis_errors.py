"""How a Redis failure maps onto the pipeline's error tree, for every adapter that talks Redis.

Some error replies mean "this server cannot serve right now" (loading its AOF, a failover, out
of memory): retry later. Others mean "this can never work" (a key of the wrong type, a script
error, a missing permission): stop and alert. Connection failures are always "retry later".
Messages keep redis-py's text (host and port) but never a password from a URL.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from redis.exceptions import (
    ClusterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)

from shared.core.errors import FatalError, TransientError

TRANSIENT_RESPONSES: Final = (OutOfMemoryError, ReadOnlyError, TryAgainError, ClusterDownError)
#: The same, as error-reply prefixes: a Lua script relays them as plain errors.
TRANSIENT_REPLIES: Final = (
    "LOADING",
    "BUSY",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "MASTERDOWN",
    "READONLY",
    "NOREPLICAS",
    "MISCONF",
    "OOM",
)
MAX_MESSAGE_CHARS: Final = 200
_URL_CREDENTIALS: Final = re.compile(r"(rediss?|unix)://[^@/\s]*@", re.IGNORECASE)


def describe(what: str, operation: str, exc: BaseException) -> str:
    detail = _URL_CREDENTIALS.sub(r"\1://***@", str(exc))[:MAX_MESSAGE_CHARS]
    return f"{what} {operation} failed: {type(exc).__name__}: {detail}"


@contextmanager
def translated(
    what: str,
    operation: str,
    *,
    unavailable: type[TransientError],
    refused: type[FatalError],
) -> Iterator[None]:
    """Raise ``unavailable`` for what a retry may fix and ``refused`` for what it cannot."""
    try:
        yield
    except ResponseError as exc:
        message = describe(what, operation, exc)
        if isinstance(exc, TRANSIENT_RESPONSES) or str(exc).startswith(TRANSIENT_REPLIES):
            raise unavailable(message) from exc
        raise refused(message) from exc
    except (RedisError, RedisClusterException, OSError) as exc:
        raise unavailable(describe(what, operation, exc)) from exc
