"""The KQL the Log Analytics simulator understands: a deliberately tiny, honest subset.

Apart from the HTTP side because it is a language, not an API: a query is split at ``|``,
each stage tokenized and applied to a ``Table`` by its operator. Anything outside the subset
raises ``KqlError`` (the API answers it as a 400 ``BadArgumentError``), never a silently wrong
answer. The subset is listed in ``simulators.loganalytics``.

A workspace holds hundreds of thousands of rows, so no stage copies one: a table's rows are
the workspace's own dicts (read, never changed), ``extend`` adds a column as a function of the
row (``Table.derived``) rather than a key, and only ``project`` makes new, small rows. KQL's
typing is applied as values are read (``Table.getter``): a string column is never null (it
reads as empty), and a string column holding JSON (``Tags``) reads as its text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from simulators.kql_lexer import (
    KqlError,
    Tokens,
    literal_value,
    parse_instant,
    row_time,
    split_pipes,
)

__all__ = ["KqlError", "Table", "load", "parse_instant", "run_query"]


Row = dict[str, Any]
Getter = Callable[[Row], Any]


@dataclass
class Table:
    """An intermediate result: ordered, typed columns and rows as dicts, shared, never changed.

    A column named in ``derived`` is computed from the row by its function (what ``extend``
    made); any other is read from the row's key of that name. Read values through ``getter``.
    """

    columns: list[tuple[str, str]]
    rows: Sequence[Row]
    derived: dict[str, Getter] = field(default_factory=dict)

    def type_of(self, name: str) -> str:
        for column, kind in self.columns:
            if column == name:
                return kind
        raise KqlError(f"Failed to resolve scalar expression named '{name}'", code="SemanticError")

    def getter(self, name: str) -> Getter:
        """How to read column ``name`` of a row, typed as KQL would see it."""
        kind = self.type_of(name)
        computed = self.derived.get(name)
        if computed is not None:
            return computed
        if kind == "string":
            return lambda row: v if type(v := row.get(name)) is str else _as_string(v)
        return lambda row: row.get(name)


def _as_string(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):  # a string column whose rows keep it parsed (Tags)
        return orjson.dumps(value).decode()
    return value


def load(columns: Sequence[tuple[str, str]], rows: Sequence[Row]) -> Table:
    """A table over ``rows`` as they are: nothing is copied, and no stage changes a row."""
    return Table(list(columns), rows)


def run_query(
    query: str, tables: dict[str, Table], window: tuple[datetime, datetime] | None
) -> Table:
    """Evaluate ``query`` (the supported subset) against ``tables``."""
    stages = split_pipes(query.strip().rstrip(";"))
    source = stages[0]
    if source not in tables:
        raise KqlError(f"Failed to resolve table expression named '{source}'", code="SemanticError")
    table = tables[source]
    if window is not None:
        within = _within(window)
        table = Table(table.columns, [r for r in table.rows if within(r)], table.derived)
    for stage in stages[1:]:
        tokens = Tokens(stage)
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


#: The one format the rows' timestamps are kept in, where text order is time order.
_ROW_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


def _within(window: tuple[datetime, datetime]) -> Callable[[Row], bool]:
    start, end = (row_time(moment) for moment in window)

    def within(row: Row) -> bool:
        text = row.get("TimeGenerated")
        if not isinstance(text, str):
            return False
        if len(text) == 27 and _ROW_TIME_RE.match(text):  # compared as text: no parsing
            return start <= text < end
        generated = parse_instant(text.replace("Z", "+00:00"))
        return generated is not None and window[0] <= generated < window[1]

    return within


# where ---------------------------------------------------------------------------------------

_Predicate = Callable[[Row], bool]
_COMPARATORS = ("==", "!=", "=~", ">", ">=", "<", "<=")


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


def _condition(table: Table, tokens: Tokens) -> _Predicate:
    name = tokens.ident()
    if name in ("isempty", "isnotempty"):
        tokens.keyword("(")
        column = table.getter(tokens.ident())
        tokens.keyword(")")
        want_empty = name == "isempty"
        return lambda row: (column(row) in (None, "")) == want_empty
    kind = table.type_of(name)
    get = table.getter(name)
    token = tokens.peek()
    if token is None or token.text in ("and",):
        if kind != "bool":
            raise KqlError(f"'{name}' is not a boolean column", code="SemanticError")
        return lambda row: get(row) is True
    tokens.take()
    if token.text in ("in", "!in"):
        tokens.keyword("(")
        values = [literal_value(tokens.take())]
        while tokens.accept(","):
            values.append(literal_value(tokens.take()))
        tokens.keyword(")")
        negate = token.text == "!in"
        return lambda row: (value := get(row)) is not None and (value in values) != negate
    if token.text in ("startswith", "!startswith"):
        return _startswith(name, kind, get, tokens, negate=token.text == "!startswith")
    if token.text not in _COMPARATORS:
        raise KqlError(f"Unsupported operator '{token.text}'")
    value, op = literal_value(tokens.take()), token.text
    if kind == "string" and op == "==" and isinstance(value, str):  # the common case, fast
        return lambda row: bool(get(row) == value)
    return lambda row: _compare(get(row), op, value)


def _startswith(name: str, kind: str, get: Getter, tokens: Tokens, *, negate: bool) -> _Predicate:
    """``Col startswith "text"`` / ``!startswith``: a case-insensitive prefix, as in KQL."""
    if kind != "string":
        raise KqlError(
            f"startswith needs a string column; '{name}' is {kind}", code="SemanticError"
        )
    literal = tokens.take()
    if literal.kind != "string":
        raise KqlError(f"startswith expects a string literal, found '{literal.text}'")
    prefix = str(literal_value(literal)).lower()
    if prefix.isascii():  # a character lowers to one or more: only the first len(prefix) count
        size = len(prefix)
        return lambda row: str(get(row))[:size].lower().startswith(prefix) != negate
    return lambda row: str(get(row)).lower().startswith(prefix) != negate


def _where(table: Table, tokens: Tokens) -> Table:
    predicates = [_condition(table, tokens)]
    while tokens.accept("and"):
        predicates.append(_condition(table, tokens))
    if len(predicates) == 1:
        (only,) = predicates
        return Table(table.columns, [r for r in table.rows if only(r)], table.derived)
    kept = [r for r in table.rows if all(p(r) for p in predicates)]
    return Table(table.columns, kept, table.derived)


# extend --------------------------------------------------------------------------------------


def _tostring(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return orjson.dumps(value).decode()


def _path(table: Table, tokens: Tokens) -> Getter:
    column = tokens.ident()
    kind = table.type_of(column)
    base = table.getter(column)
    steps: list[str] = []
    while True:
        if tokens.accept("."):
            steps.append(tokens.ident())
        elif tokens.accept("["):
            steps.append(str(literal_value(tokens.take())))
            tokens.keyword("]")
        else:
            break
    if steps and kind != "dynamic":
        raise KqlError(f"'{column}' is not a dynamic column", code="SemanticError")
    if not steps:
        return base
    if len(steps) == 1:  # Data.id: the reader's partition key, read on every row
        (only,) = steps
        return lambda row: value.get(only) if type(value := base(row)) is dict else None

    def get(row: Row) -> Any:
        value = base(row)
        for step in steps:
            value = value.get(step) if isinstance(value, dict) else None
        return value

    return get


def _extend(table: Table, tokens: Tokens) -> Table:
    """New columns as functions of the row: nothing is copied, whatever the row count."""
    columns, derived = list(table.columns), dict(table.derived)
    while True:
        name = tokens.ident()
        tokens.keyword("=")
        if tokens.ident() != "tostring":
            raise KqlError("Only tostring(...) is supported in extend")
        tokens.keyword("(")
        getter = _path(Table(columns, [], derived), tokens)
        tokens.keyword(")")
        derived[name] = _stringified(getter)
        columns = [c for c in columns if c[0] != name] + [(name, "string")]
        if not tokens.accept(","):
            return Table(columns, table.rows, derived)


def _stringified(getter: Getter) -> Getter:
    return lambda row: value if type(value := getter(row)) is str else _tostring(value)


# summarize, project, count, take, order ------------------------------------------------------


def _summarize(table: Table, tokens: Tokens) -> Table:
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
    group_of = _group_key([table.getter(k) for k in keys], [kind for _, kind in key_columns])
    value_of = table.getter(target)
    best: dict[Any, tuple[Any, Row]] = {}
    for row in table.rows:
        group = group_of(row)
        value = value_of(row)
        current = best.get(group)
        if current is None or (
            value is not None and (current[0] is None or _compare(value, ">", current[0]))
        ):
            best[group] = (value, row)
    rest = [c for c in table.columns if c[0] not in keys and c[0] != target]
    rows = [row for _, row in best.values()]
    return Table([*key_columns, (target, target_kind), *rest], rows, table.derived)


def _group_key(getters: list[Getter], kinds: list[str]) -> Callable[[Row], Any]:
    """What tells the groups apart: the value itself when it is hashable, else its JSON."""
    if "dynamic" in kinds:
        return lambda row: orjson.dumps([get(row) for get in getters])
    if len(getters) == 1:
        return getters[0]
    return lambda row: tuple(get(row) for get in getters)


def _project(table: Table, tokens: Tokens) -> Table:
    names = list(tokens.names())
    columns = [(n, table.type_of(n)) for n in names]
    getters = [(n, table.getter(n)) for n in names]
    return Table(columns, [{n: get(r) for n, get in getters} for r in table.rows])


def _count(table: Table, tokens: Tokens) -> Table:
    return Table([("Count", "long")], [{"Count": len(table.rows)}])


def _take(table: Table, tokens: Tokens) -> Table:
    token = tokens.take()
    if token.kind != "number" or "." in token.text or int(token.text) < 0:
        raise KqlError(f"take expects a non-negative integer, found '{token.text}'")
    return Table(table.columns, table.rows[: int(token.text)], table.derived)


def _order(table: Table, tokens: Tokens) -> Table:
    keys: list[tuple[Getter, bool]] = []
    while True:
        get = table.getter(tokens.ident())
        descending = True  # KQL's default
        if tokens.accept("asc"):
            descending = False
        else:
            tokens.accept("desc")
        keys.append((get, descending))
        if not tokens.accept(","):
            break
    rows = list(table.rows)
    for get, descending in reversed(keys):
        present = [r for r in rows if get(r) is not None]
        nulls = [r for r in rows if get(r) is None]
        present.sort(key=get, reverse=descending)
        rows = present + nulls if descending else nulls + present
    return Table(table.columns, rows, table.derived)


_OPERATORS: dict[str, Callable[[Table, Tokens], Table]] = {
    "where": _where,
    "extend": _extend,
    "summarize": _summarize,
    "project": _project,
    "count": _count,
    "take": _take,
    "limit": _take,
    "order": _order,
}
