"""The Log Analytics query API over what the Sentinel simulator ingested (§4.3).

``POST /v1/workspaces/{ws}/query`` (and ``GET ?query=``) answers the ``tables`` shape the REST API
and ``azure-monitor-query`` use, over ``SentinelSimulator.rows`` (``ThreatIntelIndicators``) and
``object_rows`` (``ThreatIntelObjects``). Dynamic columns come back as JSON text and datetimes as
ISO 8601 text, as the real API sends them.

The KQL is a deliberately tiny, honest subset (what a reconciliation query needs): anything
outside it is a 400 ``BadArgumentError``, never a silently wrong answer. Supported, chained with
``|`` after a table name:

- ``where`` with ``and``-joined ``Col <op> literal`` (``== != =~ > >= < <=``), ``Col in (...)``,
  ``Col !in (...)``, ``isempty(Col)``, ``isnotempty(Col)`` or a bare boolean column; literals are
  strings, numbers, ``true``/``false`` and ``datetime(...)``. Comparisons with null are false, as
  in KQL.
- ``extend Name = tostring(Col[.path | ["key"]]...)``
- ``summarize arg_max(Col, *) by Col[, Col]``
- ``project a, b``, ``count``, ``take N`` / ``limit N``, ``order by`` / ``sort by Col [asc|desc]``

``timespan`` (ISO 8601 duration such as ``P8D``, or ``start/end``, or ``start/duration``) bounds
``TimeGenerated`` as the real API does before the query runs.

Faults: the generic ones answer in the API's own ``{"error": {"code", "message"}}`` envelope.
``PARTIAL_ERRORS`` on the query route is the API's partial failure (§4.3): HTTP 200 with the
``tables`` *and* a top-level ``"error"`` beside them, the rows at the fault's ``record_indexes``
missing from the table — what a reconciliation that ignores ``error`` would silently lose.
"""

from __future__ import annotations

import operator
import re
import ssl
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson
from aiohttp import web

from simulators.faults import FAULT_ANSWERS, Fault, FaultAnswers, FaultKind, retry_after_header
from simulators.sentinel import SentinelSimulator
from simulators.server import SimServer
from simulators.tokens import TokenError, TokenMinter, TokenProblem

QUERY_ROUTE: Final = "query"
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
    ("Tags", "dynamic"),
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


class KqlError(Exception):
    """A query outside the supported subset, or one that refers to what does not exist."""

    def __init__(self, message: str, *, code: str = "SyntaxError"):
        super().__init__(message)
        self.code = code


@dataclass
class Table:
    """An intermediate result: ordered, typed columns and rows as dicts."""

    columns: list[tuple[str, str]]
    rows: list[dict[str, Any]]

    def type_of(self, name: str) -> str:
        for column, kind in self.columns:
            if column == name:
                return kind
        raise KqlError(f"Failed to resolve scalar expression named '{name}'", code="SemanticError")


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
            window = _parse_timespan(timespan, self.now())
            table = run_query(query, self._tables(), window)
        except KqlError as exc:
            return _error(
                400,
                "BadArgumentError",
                "The request had some invalid properties",
                inner={"code": exc.code, "message": str(exc)},
            )
        partial = self.faults.take(QUERY_ROUTE, frozenset({FaultKind.PARTIAL_ERRORS}))
        if partial is not None:
            return _partial(table, partial)
        return _json({"tables": [_render(table)]})

    def _authorize(self, request: web.Request) -> web.Response | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _error(
                401, "AuthorizationRequiredError", "Valid authentication was not provided"
            )
        try:
            self.minter.validate(token.strip(), LOG_ANALYTICS_AUDIENCES)
        except TokenError as exc:
            if exc.problem in (TokenProblem.EXPIRED, TokenProblem.REVOKED):
                return _error(401, "InvalidTokenError", "The provided authentication has expired")
            return _error(
                401,
                "InvalidTokenError",
                "The provided authentication is not valid for this resource",
            )
        if self.faults.take(QUERY_ROUTE, frozenset({FaultKind.EXPIRED_TOKEN})) is not None:
            self.minter.revoke(token.strip())
            return _error(401, "InvalidTokenError", "The provided authentication has expired")
        return None

    def _tables(self) -> dict[str, Table]:
        return {
            "ThreatIntelIndicators": _load(_INDICATOR_COLUMNS, self.sentinel.rows),
            "ThreatIntelObjects": _load(_OBJECT_COLUMNS, self.sentinel.object_rows),
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


def _parse_instant(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


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
    start, end = _parse_instant(first), _parse_instant(second)
    if start is not None and end is None and (duration := _parse_duration(second)):
        end = start + duration
    elif start is None and end is not None and (duration := _parse_duration(first)):
        start = end - duration
    if start is None or end is None:
        raise KqlError(f"Invalid timespan '{timespan}'", code="InvalidTimespan")
    return start, end


# -- query engine ------------------------------------------------------------------------------


def _load(columns: Sequence[tuple[str, str]], rows: list[dict[str, Any]]) -> Table:
    """A snapshot: string columns are never null in KQL, they are empty."""
    loaded = []
    for row in rows:
        copy = dict(row)
        for name, kind in columns:
            value = copy.get(name)
            copy[name] = "" if kind == "string" and value is None else value
        loaded.append(copy)
    return Table(list(columns), loaded)


def _split_pipes(query: str) -> list[str]:
    stages, current, quote = [], [], ""
    escaped = False
    for char in query:
        if quote:
            current.append(char)
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
            current.append(char)
        elif char == "|":
            stages.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    if quote:
        raise KqlError("Unterminated string literal")
    stages.append("".join(current).strip())
    return stages


def run_query(
    query: str, tables: dict[str, Table], window: tuple[datetime, datetime] | None
) -> Table:
    """Evaluate ``query`` (the supported subset) against ``tables``."""
    stages = _split_pipes(query.strip().rstrip(";"))
    source = stages[0]
    if source not in tables:
        raise KqlError(f"Failed to resolve table expression named '{source}'", code="SemanticError")
    table = tables[source]
    if window is not None:
        table = Table(table.columns, [r for r in table.rows if _within(r, window)])
    for stage in stages[1:]:
        tokens = _Tokens(stage)
        operator = tokens.ident()
        if operator in ("order", "sort"):
            tokens.keyword("by")
            operator = "order"
        handler = _OPERATORS.get(operator)
        if handler is None:
            raise KqlError(f"Unsupported query operator '{operator}'")
        table = handler(table, tokens)
        tokens.end()
    return table


def _within(row: dict[str, Any], window: tuple[datetime, datetime]) -> bool:
    generated = _parse_instant(str(row.get("TimeGenerated", "")).replace("Z", "+00:00"))
    return generated is not None and window[0] <= generated < window[1]


_TOKEN_RE = re.compile(
    r"""\s*(?:
      (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
     |(?P<datetime>datetime\(\s*[^)]*\))
     |(?P<number>-?\d+(?:\.\d+)?)
     |(?P<op>==|!=|=~|>=|<=|!in(?=[\s(])|[><=(),*.\[\]])
     |(?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str


class _Tokens:
    """A cursor over one stage's tokens; every read either matches or raises ``KqlError``."""

    def __init__(self, stage: str):
        self.items: list[_Token] = []
        position = 0
        stage = stage.rstrip()
        while position < len(stage):
            match = _TOKEN_RE.match(stage, position)
            if match is None or match.end() == position:
                raise KqlError(f"Query could not be parsed at '{stage[position:].strip()}'")
            kind = match.lastgroup or ""
            self.items.append(_Token(kind, match.group(kind)))
            position = match.end()
        self.position = 0

    def peek(self) -> _Token | None:
        return self.items[self.position] if self.position < len(self.items) else None

    def take(self) -> _Token:
        token = self.peek()
        if token is None:
            raise KqlError("Query ended unexpectedly")
        self.position += 1
        return token

    def ident(self) -> str:
        token = self.take()
        if token.kind != "ident":
            raise KqlError(f"Expected a name, found '{token.text}'")
        return token.text

    def keyword(self, word: str) -> None:
        token = self.take()
        if token.text != word:
            raise KqlError(f"Expected '{word}', found '{token.text}'")

    def accept(self, text: str) -> bool:
        token = self.peek()
        if token is not None and token.text == text:
            self.position += 1
            return True
        return False

    def end(self) -> None:
        token = self.peek()
        if token is not None:
            raise KqlError(f"Query could not be parsed at '{token.text}'")

    def names(self) -> Iterator[str]:
        yield self.ident()
        while self.accept(","):
            yield self.ident()


# where ---------------------------------------------------------------------------------------

_Predicate = Callable[[dict[str, Any]], bool]
_COMPARATORS = ("==", "!=", "=~", ">", ">=", "<", "<=")


def _literal(token: _Token) -> Any:
    if token.kind == "string":
        return re.sub(r"\\(.)", r"\1", token.text[1:-1])
    if token.kind == "number":
        return float(token.text) if "." in token.text else int(token.text)
    if token.kind == "ident" and token.text in ("true", "false"):
        return token.text == "true"
    if token.kind == "datetime":
        inner = token.text[len("datetime(") : -1].strip()
        moment = _parse_instant(inner.replace("Z", "+00:00"))
        if moment is None:
            raise KqlError(f"Invalid datetime literal '{token.text}'")
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    raise KqlError(f"Expected a literal, found '{token.text}'")


def _compare(left: Any, op: str, right: Any) -> bool:
    if left is None:
        return False
    if op == "==":
        return bool(left == right)
    if op == "!=":
        return bool(left != right)
    if op == "=~":
        return isinstance(left, str) and isinstance(right, str) and left.lower() == right.lower()
    if isinstance(left, bool) != isinstance(right, bool):
        return False
    try:
        if op == ">":
            return bool(left > right)
        if op == ">=":
            return bool(left >= right)
        if op == "<":
            return bool(left < right)
        return bool(left <= right)
    except TypeError:
        return False


def _condition(table: Table, tokens: _Tokens) -> _Predicate:
    name = tokens.ident()
    if name in ("isempty", "isnotempty"):
        tokens.keyword("(")
        column = tokens.ident()
        table.type_of(column)
        tokens.keyword(")")
        want_empty = name == "isempty"
        return lambda row: (row.get(column) in (None, "")) == want_empty
    kind = table.type_of(name)
    token = tokens.peek()
    if token is None or token.text in ("and",):
        if kind != "bool":
            raise KqlError(f"'{name}' is not a boolean column", code="SemanticError")
        return lambda row: row.get(name) is True
    tokens.take()
    if token.text in ("in", "!in"):
        tokens.keyword("(")
        values = [_literal(tokens.take())]
        while tokens.accept(","):
            values.append(_literal(tokens.take()))
        tokens.keyword(")")
        negate = token.text == "!in"
        return lambda row: row.get(name) is not None and (row.get(name) in values) != negate
    if token.text not in _COMPARATORS:
        raise KqlError(f"Unsupported operator '{token.text}'")
    value, op = _literal(tokens.take()), token.text
    return lambda row: _compare(row.get(name), op, value)


def _where(table: Table, tokens: _Tokens) -> Table:
    predicates = [_condition(table, tokens)]
    while tokens.accept("and"):
        predicates.append(_condition(table, tokens))
    return Table(table.columns, [r for r in table.rows if all(p(r) for p in predicates)])


# extend --------------------------------------------------------------------------------------


def _tostring(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return orjson.dumps(value).decode()


def _path(table: Table, tokens: _Tokens) -> Callable[[dict[str, Any]], Any]:
    column = tokens.ident()
    kind = table.type_of(column)
    steps: list[str] = []
    while True:
        if tokens.accept("."):
            steps.append(tokens.ident())
        elif tokens.accept("["):
            steps.append(str(_literal(tokens.take())))
            tokens.keyword("]")
        else:
            break
    if steps and kind != "dynamic":
        raise KqlError(f"'{column}' is not a dynamic column", code="SemanticError")

    def get(row: dict[str, Any]) -> Any:
        value = row.get(column)
        for step in steps:
            value = value.get(step) if isinstance(value, dict) else None
        return value

    return get


def _extend(table: Table, tokens: _Tokens) -> Table:
    columns = list(table.columns)
    rows = [dict(r) for r in table.rows]
    while True:
        name = tokens.ident()
        tokens.keyword("=")
        if tokens.ident() != "tostring":
            raise KqlError("Only tostring(...) is supported in extend")
        tokens.keyword("(")
        getter = _path(Table(columns, []), tokens)
        tokens.keyword(")")
        for row in rows:
            row[name] = _tostring(getter(row))
        columns = [c for c in columns if c[0] != name] + [(name, "string")]
        if not tokens.accept(","):
            return Table(columns, rows)


# summarize, project, count, take, order ------------------------------------------------------


def _summarize(table: Table, tokens: _Tokens) -> Table:
    if tokens.ident() != "arg_max":
        raise KqlError("Only summarize arg_max(Col, *) by ... is supported")
    tokens.keyword("(")
    target = tokens.ident()
    target_kind = table.type_of(target)
    tokens.keyword(",")
    tokens.keyword("*")
    tokens.keyword(")")
    tokens.keyword("by")
    keys = list(tokens.names())
    key_columns = [(k, table.type_of(k)) for k in keys]
    best: dict[bytes, dict[str, Any]] = {}
    for row in table.rows:
        group = orjson.dumps([row.get(k) for k in keys])
        current = best.get(group)
        value = row.get(target)
        if current is None or (
            value is not None
            and (current.get(target) is None or _compare(value, ">", current.get(target)))
        ):
            best[group] = row
    rest = [c for c in table.columns if c[0] not in keys and c[0] != target]
    return Table([*key_columns, (target, target_kind), *rest], list(best.values()))


def _project(table: Table, tokens: _Tokens) -> Table:
    names = list(tokens.names())
    columns = [(n, table.type_of(n)) for n in names]
    return Table(columns, [{n: r.get(n) for n in names} for r in table.rows])


def _count(table: Table, tokens: _Tokens) -> Table:
    return Table([("Count", "long")], [{"Count": len(table.rows)}])


def _take(table: Table, tokens: _Tokens) -> Table:
    token = tokens.take()
    if token.kind != "number" or "." in token.text or int(token.text) < 0:
        raise KqlError(f"take expects a non-negative integer, found '{token.text}'")
    return Table(table.columns, table.rows[: int(token.text)])


def _order(table: Table, tokens: _Tokens) -> Table:
    keys: list[tuple[str, bool]] = []
    while True:
        name = tokens.ident()
        table.type_of(name)
        descending = True  # KQL's default
        if tokens.accept("asc"):
            descending = False
        else:
            tokens.accept("desc")
        keys.append((name, descending))
        if not tokens.accept(","):
            break
    rows = list(table.rows)
    for name, descending in reversed(keys):
        present = [r for r in rows if r.get(name) is not None]
        nulls = [r for r in rows if r.get(name) is None]
        present.sort(key=operator.itemgetter(name), reverse=descending)
        rows = present + nulls if descending else nulls + present
    return Table(table.columns, rows)


_OPERATORS: dict[str, Callable[[Table, _Tokens], Table]] = {
    "where": _where,
    "extend": _extend,
    "summarize": _summarize,
    "project": _project,
    "count": _count,
    "take": _take,
    "limit": _take,
    "order": _order,
}


# -- answers -----------------------------------------------------------------------------------


def _render(table: Table) -> dict[str, Any]:
    def cell(value: Any, kind: str) -> Any:
        if kind == "dynamic" and value is not None:
            return orjson.dumps(value).decode()
        return value

    return {
        "name": "PrimaryResult",
        "columns": [{"name": name, "type": kind} for name, kind in table.columns],
        "rows": [[cell(row.get(name), kind) for name, kind in table.columns] for row in table.rows],
    }


def _partial(table: Table, fault: Fault) -> web.Response:
    """HTTP 200, the rows the engine still returned, and the error that says some are missing.

    Shaped like the API's answer when a query hits a server-side limit (what
    ``azure-monitor-query`` turns into ``LogsQueryPartialResult``).
    """
    lost = set(fault.record_indexes)
    kept = Table(table.columns, [row for i, row in enumerate(table.rows) if i not in lost])
    error = {
        "code": "PartialError",
        "message": "There were some errors when processing your query.",
        "details": [
            {
                "code": "EngineError",
                "message": "Something went wrong processing your query on the server.",
                "innererror": {
                    "code": "-2133196797",
                    "message": "Query result set has exceeded the internal data size limit "
                    "8388608 bytes",
                    "severity": 2,
                    "severityName": "Error",
                },
            }
        ],
    }
    return _json({"tables": [_render(kept)], "error": error})


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
    response = _json({"error": error}, status=status)
    if status == 401:
        response.headers["WWW-Authenticate"] = (
            'Bearer authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", '
            'error="invalid_token", error_description="' + message + '"'
        )
    return response


def _json(obj: Any, *, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")
