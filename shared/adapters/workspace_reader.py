"""Reading back what the workspace holds under our source system, through Log Analytics
(DESIGN §5, reconciliation; specs/sentinel-and-entra.md §4.2–4.4), with the official
``azure.monitor.query.aio.LogsQueryClient``.

**What is read.** ``ThreatIntelIndicators`` is append-only: every upload, and Sentinel's
republish every 7–10 days, adds a row. ``arg_max(TimeGenerated, *) by Id`` keeps the latest
row per object; the default 14-day timespan covers a republish cycle, so every live object has
a row in it. Our fingerprint and MATI id travel in our property extension, so the query lifts
them out and ``shared.core.workspace_objects.parse_row`` turns each row into a
``WorkspaceObject`` keyed by its lineage.

**Partitions.** One answer is capped (500,000 rows / 64 MiB), and a capped answer is a partial
one. ``read`` counts first, then reads 16^k partitions by the hex digits after
``indicator--`` so that each holds about ``partition_target`` objects or fewer; memory is one
partition's answer at a time. An answer that still comes back partial
(``LogsQueryPartialResult``: HTTP 200 with a top-level ``error``) is **never** taken as
complete: its partition is split into 16 and those are read instead, a bounded number of times;
past that the read fails with ``MalformedResponse`` (saying "only partially"; errors are defined
in ``shared.core.errors`` alone), because a reconciliation that silently lost rows would report
them missing and re-upload them.

**Errors**, as the pipeline's tree (``shared.core.errors``): 401/403 → ``AuthenticationFailed``
(the identity needs Log Analytics Reader on the workspace); 404 → ``DestinationNotFound``;
429, 408, 5xx, timeouts and connection failures → ``UpstreamUnavailable`` after azure-core's own
few retries (a query is a POST: azure-core retries it on 500/503/504, on connection failures,
and on any answer with a ``Retry-After``, which it honours); a refused TLS handshake →
``TlsVerificationFailed``; a 400 (the query refused) → ``QueryRejected``; an answer that is not
the documented shape → ``MalformedResponse``.
Messages come from status codes and the service's error code and message, never from request
headers: no token can reach them (``shared.adapters.workspace_failures``).

**Bounds.** An answer is read within ``max_body_bytes`` (``LOGS_MAX_BODY``, counted
decompressed) and a redirect is never followed (``shared.adapters.http_limits``): the one is
``MalformedResponse``, the other ``UpstreamUnavailable``, both saying "Log Analytics"; so is an
answer nested too deep to decode (which raised ``RecursionError`` out of the client). Whichever
the token request met instead is Entra ID's ``UpstreamUnavailable``. The whole query, its
retries and token request included, ends within ``query_timeout_s`` (``UpstreamUnavailable``):
azure-core's own timeouts bound each read, which an answer trickling in never exceeds.

**The audience.** ``LogsQueryClient`` derives its token scope from ``endpoint`` unless told
otherwise, which against a sovereign cloud's alias or a simulator asks Entra for the wrong
resource; the audience is therefore always ``https://api.loganalytics.io``.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any, Final

import aiohttp
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError
from azure.core.pipeline.transport import AioHttpTransport
from azure.monitor.query import LogsQueryPartialResult, LogsTable
from azure.monitor.query.aio import LogsQueryClient

from shared.adapters.http_limits import MIB, body_limit
from shared.adapters.workspace_failures import QueryFailures, WatchedCredential, clip
from shared.core.errors import MalformedResponse, UpstreamUnavailable
from shared.core.events import get_logger
from shared.core.stix import check_source_system
from shared.core.workspace_objects import (
    COLUMNS,
    HEX_DIGITS,
    MAX_PREFIX_DIGITS,
    UnreadableRow,
    WorkspaceObject,
    count_query,
    objects_query,
    parse_row,
    prefix_digits,
    prefixes,
)

__all__ = [
    "DEFAULT_ENDPOINT",
    "LOG_ANALYTICS_AUDIENCE",
    "ReadProgress",
    "WorkspaceReader",
]

log = get_logger(__name__)

DEFAULT_ENDPOINT: Final = "https://api.loganalytics.io"
#: The token audience, whatever the endpoint (module docstring).
LOG_ANALYTICS_AUDIENCE: Final = "https://api.loganalytics.io"
DEFAULT_LOOKBACK: Final = timedelta(days=14)
DEFAULT_PARTITION_TARGET: Final = 100_000
#: How many times a partition whose answer came back partial is split again (16, then 256
#: sub-partitions) before the read gives up.
DEFAULT_MAX_SPLITS: Final = 2
#: The largest answer read: the service cuts a result at 64 MiB of rows (a partial answer,
#: which is split), so half again is a full answer however it counts, and anything larger is
#: not an answer to our query (``shared.adapters.http_limits``).
LOGS_MAX_BODY: Final = 96 * MIB
#: The longest one query may take, azure-core's retries and the token request included: the
#: service runs a query for at most 10 minutes. azure-core bounds each read of the answer
#: only, so without this an answer that trickles in would run until the body limit.
DEFAULT_QUERY_TIMEOUT_S: Final = 600.0


@dataclass(frozen=True, slots=True)
class ReadProgress:
    """Where a ``read`` stands; reported after each partition's answer has been read, before
    its objects are yielded. ``partitions_total`` grows when a partial answer splits one;
    ``objects_expected`` is the count taken before reading (ingestion may move it a little).
    """

    partitions_done: int
    partitions_total: int
    objects_read: int
    objects_expected: int


Progress = Callable[[ReadProgress], None]


class WorkspaceReader:
    """Reads one workspace's objects of one source system (module docstring).

    ``session`` is our aiohttp session (our TLS context, our pool), used through azure-core's
    ``AioHttpTransport`` without owning it. ``close`` closes the query client and, unless
    ``close_credential`` is false, the credential. ``unreadable`` counts rows ``parse_row``
    refused across reads.
    """

    def __init__(
        self,
        credential: AsyncTokenCredential,
        *,
        endpoint: str = DEFAULT_ENDPOINT,
        workspace_id: str,
        source_system: str,
        session: aiohttp.ClientSession | None = None,
        lookback: timedelta = DEFAULT_LOOKBACK,
        partition_target: int = DEFAULT_PARTITION_TARGET,
        max_splits: int = DEFAULT_MAX_SPLITS,
        retry_total: int = 3,
        retry_backoff_factor: float = 0.8,
        timeout_s: float = 180.0,
        query_timeout_s: float = DEFAULT_QUERY_TIMEOUT_S,
        max_body_bytes: int = LOGS_MAX_BODY,
        close_credential: bool = True,
    ) -> None:
        if not endpoint.startswith("https://"):
            raise ValueError("endpoint must be an https:// URL")
        if not workspace_id:
            raise ValueError("workspace_id is required")
        problem = check_source_system(source_system)
        if problem is None and any(ord(char) < 0x20 for char in source_system):
            problem = "source system must not contain control characters"
        if problem is not None:
            raise ValueError(problem)
        if partition_target < 1 or max_splits < 0 or lookback <= timedelta(0):
            raise ValueError("partition_target ≥ 1, max_splits ≥ 0 and a positive lookback")
        if not query_timeout_s > 0 or max_body_bytes < 1:
            raise ValueError("query_timeout_s and max_body_bytes must be positive")
        self.workspace_id = workspace_id
        self.source_system = source_system
        self.lookback = lookback
        self.partition_target = partition_target
        self.max_splits = max_splits
        self.unreadable = 0
        self.query_timeout_s = query_timeout_s
        self.max_body_bytes = max_body_bytes
        watched = WatchedCredential(credential)
        self._failures = QueryFailures(workspace_id, endpoint, watched)
        self._credential = credential
        self._close_credential = close_credential
        options: dict[str, Any] = {
            "retry_total": retry_total,
            "retry_backoff_factor": retry_backoff_factor,
        }
        if session is not None:
            options["transport"] = AioHttpTransport(
                session=session,
                session_owner=False,
                connection_timeout=min(timeout_s, 30.0),
                read_timeout=timeout_s,
            )
        self._client = LogsQueryClient(
            watched, endpoint=endpoint.rstrip("/"), audience=LOG_ANALYTICS_AUDIENCE, **options
        )

    def __repr__(self) -> str:
        return f"WorkspaceReader(workspace_id={self.workspace_id!r})"

    async def __aenter__(self) -> WorkspaceReader:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the query client (never the shared session) and, if owned, the credential."""
        await self._client.close()
        if self._close_credential:
            await self._credential.close()

    async def count(self) -> int:
        """How many objects of our source system the workspace holds within the lookback."""
        table = await self._complete(count_query(self.source_system), "the count")
        if table is None:
            raise MalformedResponse("Log Analytics answered the count query only partially")
        try:
            (row,) = table.rows
            (value,) = list(row)
        except ValueError:
            value = None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise MalformedResponse("Log Analytics answered the count query without a count")
        return value

    async def read(self, progress: Progress | None = None) -> AsyncIterator[WorkspaceObject]:
        """Every object of our source system, each once, partition by partition (the order
        within and across partitions is the service's). ``progress`` is told after each
        partition's answer is read, before its objects are yielded; a partial answer is split,
        never yielded. Rows that cannot be parsed are skipped and counted in ``unreadable``."""
        unreadable_before = self.unreadable
        expected = await self.count()
        digits = prefix_digits(expected, self.partition_target)
        pending = collections.deque((prefix, 0) for prefix in prefixes(digits))
        total, done, read = len(pending), 0, 0
        while pending:
            prefix, splits = pending.popleft()
            query = objects_query(self.source_system, prefix if prefix else None)
            table = await self._complete(query, f"partition {prefix or '(all)'}")
            if table is None:
                if splits >= self.max_splits or len(prefix) >= MAX_PREFIX_DIGITS:
                    raise MalformedResponse(
                        f"Log Analytics answered partition {prefix or '(all)'} only partially, "
                        f"even after splitting it {splits} times"
                    )
                log.info("workspace_reader.partial_split", prefix=prefix, splits=splits + 1)
                pending.extendleft((prefix + d, splits + 1) for d in reversed(HEX_DIGITS))
                total += len(HEX_DIGITS) - 1
                continue
            objects = self._objects(table)
            del table  # memory: one partition's objects, not also its raw answer
            done += 1
            read += len(objects)
            if progress is not None:
                progress(ReadProgress(done, total, read, expected))
            for obj in objects:
                yield obj
        if read + self.unreadable - unreadable_before < expected:
            log.info("workspace_reader.fewer_than_counted", read=read, expected=expected)

    def _objects(self, table: LogsTable) -> list[WorkspaceObject]:
        missing = [column for column in COLUMNS if column not in table.columns]
        if missing:
            raise MalformedResponse(
                f"Log Analytics answered without the column(s) {', '.join(missing)}"
            )
        objects: list[WorkspaceObject] = []
        for row in table.rows:
            parsed = parse_row(dict(zip(table.columns, row, strict=True)))
            if isinstance(parsed, UnreadableRow):
                self.unreadable += 1
                log.debug(
                    "workspace_reader.unreadable_row", reason=parsed.reason, id=parsed.stix_id
                )
            else:
                objects.append(parsed)
        return objects

    async def _complete(self, query: str, what: str) -> LogsTable | None:
        """The one table of a complete answer to ``query``; ``None`` for a partial answer.
        The answer is read within ``max_body_bytes``, the whole query (azure-core's retries
        and the token request included) within ``query_timeout_s``."""
        deadline = asyncio.timeout(self.query_timeout_s)
        try:
            with body_limit(self.max_body_bytes):
                async with deadline:
                    result = await self._client.query_workspace(
                        self.workspace_id, query, timespan=self.lookback
                    )
        except (MalformedResponse, UpstreamUnavailable, RecursionError) as exc:
            raise self._failures.refused(exc, what) from exc
        except TimeoutError as exc:
            if deadline.expired():  # ours, not a read's: azure-core turns those into its own
                raise UpstreamUnavailable(
                    f"Log Analytics did not answer {what} within {self.query_timeout_s:g} s"
                ) from exc
            raise self._failures.translate(exc, what) from exc
        except (AzureError, aiohttp.ClientError) as exc:
            raise self._failures.translate(exc, what) from exc
        if isinstance(result, LogsQueryPartialResult):
            error = result.partial_error
            log.info(
                "workspace_reader.partial_answer",
                what=what,
                code=getattr(error, "code", None),
                message=clip(getattr(error, "message", None) or ""),
            )
            return None
        if len(result.tables) != 1:
            raise MalformedResponse(f"Log Analytics answered {what} without exactly one table")
        return result.tables[0]
