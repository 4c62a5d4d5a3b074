"""The KQL the Log Analytics simulator understands: a deliberately tiny, honest subset.

Apart from the HTTP side because it is a language, not an API: a query is split at ``|``,
each stage tokenized and applied to a ``Table`` by its operator. Anything outside the subset
raises ``KqlError`` (the API answers it as a 400 ``BadArgumentError``), never a silently wrong
answer. The subset is listed in ``simulators.loganalytics``.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson


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


def parse_instant(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def load(columns: Sequence[tuple[str, str]], rows: list[dict[str, Any]]) -> Table:
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
    generated = parse_instant(str(row.get("TimeGenerated", "")).replace("Z", "+00:00"))
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
        moment = parse_instant(inner.replace("Z", "+00:00"))
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
