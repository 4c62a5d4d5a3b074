"""The Log Analytics query API over what the Sentinel simulator ingested (§4.3).

``POST /v1/workspaces/{ws}/query`` (and ``GET ?query=``) answers the ``tables`` shape the REST API
and ``azure-monitor-query`` use, over ``SentinelSimulator.rows`` (``ThreatIntelIndicators``) and
``object_rows`` (``ThreatIntelObjects``). Dynamic columns come back as JSON text and datetimes as
ISO 8601 text, as the real API sends them; ``Tags`` is a string column (the text of a JSON
array), as in the real table, not a dynamic one.

A row becomes visible ``ingestion_delay`` seconds after Sentinel ingested it (its
``TimeGenerated``, which the delay does not change), on the simulator's ``now`` clock: a
just-uploaded batch is not in the workspace yet (§4.3).

The KQL is a deliberately tiny, honest subset (what a reconciliation query needs): anything
outside it is a 400 ``BadArgumentError``, never a silently wrong answer. Supported, chained with
``|`` after a table name:

- ``where`` with ``and``-joined ``Col <op> literal`` (``== != =~ > >= < <=``), ``Col in (...)``,
  ``Col !in (...)``, ``Col startswith "text"``, ``Col !startswith "text"`` (string columns,
  case-insensitive as in KQL), ``isempty(Col)``, ``isnotempty(Col)`` or a bare boolean column;
  literals are strings (escapes ``\\ \" \' \n \t \r``), numbers, ``true``/``false`` and
  ``datetime(...)``. Comparisons with null are false, as in KQL.
- ``extend Name = tostring(Col[.path | ["key"]]...)``
- ``summarize arg_max(Col, *) by Col[, Col]``
- ``project a, b``, ``count``, ``take N`` / ``limit N``, ``order by`` / ``sort by Col [asc|desc]``

``timespan`` (ISO 8601 duration such as ``P8D``, or ``start/end``, or ``start/duration``) bounds
``TimeGenerated`` as the real API does before the query runs.

Limits (the query API's documented ones; §4.3 does not list them): a result over ``max_rows``
rows or ``max_bytes`` bytes (the rows rendered as JSON; 500 000 records and 64 MiB by default) is
cut to what fits and answered HTTP 200 with a top-level ``"error"`` beside the ``tables``, worded
as the API words it, which ``azure-monitor-query`` turns into ``LogsQueryPartialResult``.

Faults: the generic ones answer in the API's own ``{"error": {"code", "message"}}`` envelope.
``PARTIAL_ERRORS`` on the query route is the API's partial failure (§4.3): HTTP 200 with the
``tables`` *and* a top-level ``"error"`` beside them, the rows at the fault's ``record_indexes``
missing from the table — what a reconciliation that ignores ``error`` would silently lose.
"""

from __future__ import annotations

import re
import ssl
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson
from aiohttp import web

from simulators.faults import FAULT_ANSWERS, Fault, FaultAnswers, FaultKind, retry_after_header
from simulators.kql import KqlError, Table, load, parse_instant, run_query
from simulators.sentinel import SentinelSimulator
from simulators.server import SimServer, bearer_token, json_response
from simulators.tokens import TokenError, TokenMinter, TokenProblem

QUERY_ROUTE: Final = "query"
#: The query API's limits on one result: records, and bytes (64 MiB).
MAX_ROWS: Final = 500_000
MAX_BYTES: Final = 64 * 2**20
LOG_ANALYTICS_AUDIENCES: Final = frozenset(
    {"https://api.loganalytics.io", "https://api.loganalytics.io/"}
)

_INDICATOR_COLUMNS: Final = (
    ("TimeGenerated", "datetime"),
    ("Id", "string"),
    ("SourceSystem", "string"),
    ("Source", "string"),
    ("Created", "datetime"),
    ("Modified", "datetime"),
    ("ValidFrom", "datetime"),
    ("ValidUntil", "datetime"),
    ("IsActive", "bool"),
    ("IsDeleted", "bool"),
    ("Revoked", "bool"),
    ("Confidence", "int"),
    ("Pattern", "string"),
    ("ObservableKey", "string"),
    ("ObservableValue", "string"),
    ("Tags", "string"),
    ("Data", "dynamic"),
    ("AdditionalFields", "dynamic"),
    ("LastUpdateMethod", "string"),
    ("WorkspaceId", "string"),
    ("Type", "string"),
)
_OBJECT_COLUMNS: Final = (
    ("TimeGenerated", "datetime"),
    ("Id", "string"),
    ("StixType", "string"),
    ("Data", "dynamic"),
    ("Source", "string"),
    ("SourceSystem", "string"),
    ("IsDeleted", "bool"),
    ("LastUpdateMethod", "string"),
    ("WorkspaceId", "string"),
    ("Type", "string"),
)


class LogAnalyticsSimulator(SimServer):
    """One workspace's query endpoint, reading the Sentinel simulator's tables."""

    name = "loganalytics"

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        *,
        minter: TokenMinter,
        sentinel: SentinelSimulator,
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        self.minter = minter
        self.sentinel = sentinel
        #: Wall clock the timespan is measured back from (replaceable in tests).
        self.now: Callable[[], datetime] = lambda: datetime.now(UTC)
        #: Seconds between a row's ingestion and its being visible to queries (0: at once).
        self.ingestion_delay = 0.0
        #: The API's caps on one result: rows, and bytes of the rows rendered as JSON.
        self.max_rows = MAX_ROWS
        self.max_bytes = MAX_BYTES
        super().__init__(ssl_context, host=host, port=port)
        self.app[FAULT_ANSWERS] = _LogAnalyticsFaultAnswers()

    def routes(self, router: web.UrlDispatcher) -> None:
        router.add_route("*", "/v1/workspaces/{workspaceId}/query", self._query, name=QUERY_ROUTE)

    async def _query(self, request: web.Request) -> web.Response:
        if request.method not in ("GET", "POST"):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST"])
        denied = self._authorize(request)
        if denied is not None:
            return denied
        workspace = request.match_info["workspaceId"]
        if workspace.lower() != self.sentinel.workspace_id.lower():
            return _error(
                404,
                "WorkspaceNotFoundError",
                f"The workspace {workspace} could not be found",
            )
        try:
            query, timespan = await _read_request(request)
            now = self.now()
            window = _parse_timespan(timespan, now)
            table = run_query(query, self._tables(now), window)
        except KqlError as exc:
            return _error(
                400,
                "BadArgumentError",
                "The request had some invalid properties",
                inner={"code": exc.code, "message": str(exc)},
            )
        rendered = _render(table)
        partial = self.faults.take(QUERY_ROUTE, frozenset({FaultKind.PARTIAL_ERRORS}))
        if partial is not None:
            lost = set(partial.record_indexes)
            rendered["rows"] = [row for i, row in enumerate(rendered["rows"]) if i not in lost]
            return _partial(rendered, [_FAULT_LIMIT_MESSAGE])
        exceeded = _enforce_limits(rendered, self.max_rows, self.max_bytes)
        if exceeded:
            return _partial(rendered, exceeded)
        return json_response({"tables": [rendered]})

    def _authorize(self, request: web.Request) -> web.Response | None:
        token = bearer_token(request)
        if token is None:
            return _error(
                401, "AuthorizationRequiredError", "Valid authentication was not provided"
            )
        try:
            self.minter.validate(token, LOG_ANALYTICS_AUDIENCES)
        except TokenError as exc:
            if exc.problem in (TokenProblem.EXPIRED, TokenProblem.REVOKED):
                return _error(401, "InvalidTokenError", "The provided authentication has expired")
            return _error(
                401,
                "InvalidTokenError",
                "The provided authentication is not valid for this resource",
            )
        if self.faults.take(QUERY_ROUTE, frozenset({FaultKind.EXPIRED_TOKEN})) is not None:
            self.minter.revoke(token)
            return _error(401, "InvalidTokenError", "The provided authentication has expired")
        return None

    def _tables(self, now: datetime) -> dict[str, Table]:
        """The rows ingested at least ``ingestion_delay`` seconds before ``now``."""
        cutoff = now.timestamp() - self.ingestion_delay if self.ingestion_delay > 0 else None
        return {
            "ThreatIntelIndicators": load(
                _INDICATOR_COLUMNS, self.sentinel.rows_ingested_by(cutoff)
            ),
            "ThreatIntelObjects": load(
                _OBJECT_COLUMNS, self.sentinel.object_rows_ingested_by(cutoff)
            ),
        }


# -- request -----------------------------------------------------------------------------------


async def _read_request(request: web.Request) -> tuple[str, str | None]:
    if request.method == "GET":
        query: Any = request.query.get("query")
        timespan: Any = request.query.get("timespan")
    else:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            raise KqlError("The request body is not valid JSON", code="InvalidBody") from exc
        if not isinstance(body, dict):
            raise KqlError("The request body must be a JSON object", code="InvalidBody")
        query, timespan = body.get("query"), body.get("timespan")
        workspaces = body.get("workspaces")
        if workspaces is not None and not (
            isinstance(workspaces, list) and all(isinstance(w, str) for w in workspaces)
        ):
            raise KqlError("workspaces must be an array of strings", code="InvalidBody")
    if not isinstance(query, str) or not query.strip():
        raise KqlError("The query property is required", code="MissingQuery")
    if timespan is not None and not isinstance(timespan, str):
        raise KqlError("timespan must be an ISO 8601 string", code="InvalidTimespan")
    return query, timespan


_DURATION_RE = re.compile(
    r"^P(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)


def _parse_duration(text: str) -> timedelta | None:
    match = _DURATION_RE.match(text)
    if match is None or text in ("P", "PT") or text.endswith("T"):
        return None
    parts = {k: float(v) for k, v in match.groupdict().items() if v is not None}
    return timedelta(**parts)


def _parse_timespan(timespan: str | None, now: datetime) -> tuple[datetime, datetime] | None:
    """``[start, end)`` on ``TimeGenerated``, or ``None`` when the query alone decides."""
    if timespan is None:
        return None
    first, sep, second = timespan.partition("/")
    if not sep:
        duration = _parse_duration(first)
        if duration is None:
            raise KqlError(f"Invalid timespan '{timespan}'", code="InvalidTimespan")
        return now - duration, now
    start, end = parse_instant(first), parse_instant(second)
    if start is not None and end is None and (duration := _parse_duration(second)):
        end = start + duration
    elif start is None and end is not None and (duration := _parse_duration(first)):
        start = end - duration
    if start is None or end is None:
        raise KqlError(f"Invalid timespan '{timespan}'", code="InvalidTimespan")
    return start, end


# -- answers -----------------------------------------------------------------------------------


def _render(table: Table) -> dict[str, Any]:
    readers = [(table.getter(name), kind == "dynamic") for name, kind in table.columns]

    def cell(value: Any, dynamic: bool) -> Any:
        return orjson.dumps(value).decode() if dynamic and value is not None else value

    return {
        "name": "PrimaryResult",
        "columns": [{"name": name, "type": kind} for name, kind in table.columns],
        "rows": [[cell(get(row), dynamic) for get, dynamic in readers] for row in table.rows],
    }


#: What the ``PARTIAL_ERRORS`` fault says went wrong (a limit of the API's older days).
_FAULT_LIMIT_MESSAGE: Final = (
    "Query result set has exceeded the internal data size limit 8388608 bytes"
)


def _enforce_limits(rendered: dict[str, Any], max_rows: int, max_bytes: int) -> list[str]:
    """Cut ``rendered``'s rows to the limits, as the API does; what was exceeded, worded as
    the API words it (none: the result is whole)."""
    rows: list[Any] = rendered["rows"]
    exceeded = []
    if len(rows) > max_rows:
        rows = rows[:max_rows]
        exceeded.append(
            f"Query result set has exceeded the internal record count limit {max_rows} records"
        )
    if len(orjson.dumps(rows)) > max_bytes:
        size, fits = 2, 0  # "[" and "]", then each row and the comma before it
        for row in rows:
            size += len(orjson.dumps(row)) + (1 if fits else 0)
            if size > max_bytes:
                break
            fits += 1
        rows = rows[:fits]
        exceeded.append(
            f"Query result set has exceeded the internal data size limit {max_bytes} bytes"
        )
    rendered["rows"] = rows
    return exceeded


def _partial(rendered: dict[str, Any], messages: list[str]) -> web.Response:
    """HTTP 200, the rows the engine still returned, and the error that says some are missing.

    Shaped like the API's answer when a query hits a server-side limit (what
    ``azure-monitor-query`` turns into ``LogsQueryPartialResult``).
    """
    error = {
        "code": "PartialError",
        "message": "There were some errors when processing your query.",
        "details": [
            {
                "code": "EngineError",
                "message": "Something went wrong processing your query on the server.",
                "innererror": {
                    "code": "-2133196797",  # E_QUERY_RESULT_SET_TOO_LARGE
                    "message": message,
                    "severity": 2,
                    "severityName": "Error",
                },
            }
            for message in messages
        ],
    }
    return json_response({"tables": [rendered], "error": error})


class _LogAnalyticsFaultAnswers(FaultAnswers):
    """The query API's ``{"error": {"message", "code", "correlationId"}}`` for 429 and 5xx."""

    _CODES: Final = {
        500: "InternalServerError",
        502: "BadGateway",
        503: "ServiceUnavailableError",
        504: "GatewayTimeout",
    }

    def __init__(self) -> None:
        # The start of a real answer, cut inside the first column.
        super().__init__(b'{"tables": [{"name": "PrimaryResult", "columns": [{"name": "TimeGen')

    def rate_limited(self, request: web.Request, fault: Fault) -> web.StreamResponse:
        response = _error(
            429,
            "ThrottledError",
            "Your request was throttled: too many requests. Please try again later.",
        )
        response.headers.update(retry_after_header(fault))
        return response

    def server_error(self, request: web.Request, fault: Fault) -> web.StreamResponse:
        return _error(
            fault.status,
            self._CODES.get(fault.status, "ServiceError"),
            "An unexpected error occurred while processing the query. Please try again.",
        )


def _error(
    status: int, code: str, message: str, *, inner: dict[str, Any] | None = None
) -> web.Response:
    error: dict[str, Any] = {"message": message, "code": code, "correlationId": str(uuid.uuid4())}
    if inner is not None:
        error["innererror"] = inner
    response = json_response({"error": error}, status=status)
    if status == 401:
        response.headers["WWW-Authenticate"] = (
            'Bearer authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", '
            'error="invalid_token", error_description="' + message + '"'
        )
    return response
