"""A faithful stand-in for the MATI v4 API (specs/mati-api-v4.md §2, §3, §5, §8, §10).

What it reproduces, and why each matters to a client:

* ``POST /token``: OAuth2 client credentials with HTTP Basic; the *same* token comes back with a
  shrinking ``expires_in`` until it expires (recorded traffic, §2.3), so a client that assumes a
  fresh 12 h lifetime on every call refreshes too late.
* ``GET /v4/indicator``: Bearer or Basic auth (§2.1), the §3.1 parameters with server-side
  filtering on an inclusive ``last_updated`` window, and ``next`` cursors shaped like the real
  ones (``<base64 scroll id>.<base64 JSON state>``, >3000 characters, padded base64 that must be
  URL-encoded). A cursor alone continues the query; ``include_*`` flags sent with it override.
  Cursors expire (§3.2), and the end of paging takes each of the three recorded forms.
* Paging is stable while the feed changes: the first request of a scroll pins the matching
  indexes and the feed's generation, like an Elasticsearch scroll, so a sync never sees a page
  shift under it. Replaying a cursor returns the same page (state is in the cursor), which is
  what makes a client's retry after a 5xx safe.
* Default order (no ``sort_by``) is newest first, as one connector reports (§3.3): a client
  must ask for ``last_updated:asc`` explicitly.

* ``GET /v4/indicator/{id}`` and ``GET /v4/indicator/{type}/{value}`` (§4): one indicator,
  no envelope, shaped by the same ``include_*`` flags, as the feed holds it now. An unknown
  id or value answers 404 ``{"error": "not_found", "error_description": …}``: the real error
  body is undocumented (§8), so this one follows the shape of the simulator's other errors.
  Values match after the parser's normalisation (ipv4 and fqdn stripped, fqdn and md5
  lower-cased, urls as they are).

Faults: the generic ones (429, 5xx, timeout, reset, malformed JSON) come from the shared
middleware; this module takes ``EXPIRED_TOKEN`` (answer as if the token had expired, and really
revoke it) and ``PARTIAL_ERRORS`` (corrupt the records at ``record_indexes`` of the next page) on
the route ``"indicator"``; the look-ups are the routes ``"indicator_by_id"`` and
``"indicator_by_value"`` (generic faults and ``EXPIRED_TOKEN``).

It never imports the product (``shared/``): its parser must not share the product's bugs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import secrets
import ssl
import time
from array import array
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiohttp import web

from simulators.faults import FAULT_ANSWERS, FaultAnswers, FaultKind
from simulators.feed import Feed
from simulators.server import SimServer

EndOfPaging = Literal["short", "empty", "204"]

JSON_CONTENT_TYPE = "application/json; charset=UTF-8"
MAX_LIMIT = 1000
DEFAULT_LIMIT = 25
DEFAULT_REPORT_LIMIT = 25

#: ``include_*`` query flags and their defaults: only ``misp`` is on unless asked (§3.1).
INCLUDE_DEFAULTS: Mapping[str, bool] = {
    "include_misp": True,
    "include_threat_rating": False,
    "include_category": False,
    "include_campaigns": False,
    "include_reports": False,
}
#: Record key each flag controls.
_INCLUDE_KEYS = {
    "include_misp": "misp",
    "include_threat_rating": "threat_rating",
    "include_category": "category",
    "include_campaigns": "campaigns",
    "include_reports": "reports",
}

#: Every optional block: what a look-up that only needs ``value`` leaves out.
_OPTIONAL_KEYS = frozenset(_INCLUDE_KEYS.values())

_TRUE = frozenset({"true", "1", "yes", "t", "y", "on"})
_FALSE = frozenset({"false", "0", "no", "f", "n", "off"})

#: How bad records are broken, in the order positions of a fault take them.
BAD_RECORD_KINDS = (
    "missing_id",
    "missing_value",
    "mscore_not_int",
    "value_not_string",
    "sources_not_list",
    "bad_last_updated",
    "duplicate_key",
)

#: Random bytes in a cursor's scroll-id part: 2401 bytes -> 3204 base64 chars with ``==``
#: padding, so a client must handle both the length and the ``%3D`` encoding (§3.2).
_SCROLL_ID_BYTES = 2401


class _BadRequest(Exception):
    """A 400 the handler answers with a JSON error body."""

    def __init__(self, message: str, error: str = "invalid_request") -> None:
        super().__init__(message)
        self.error = error


@dataclass(frozen=True, slots=True)
class BadRecord:
    """A record the simulator deliberately broke, for tests to assert the product skipped it."""

    page: int
    position: int
    id: str
    kind: str


@dataclass(slots=True)
class _Scroll:
    """A pinned query result: ordered feed indexes, the feed generation, the original flags."""

    indexes: array[int]
    generation: int
    include: dict[str, bool]
    report_limit: int


@dataclass(slots=True)
class _Cursor:
    scroll: _Scroll
    issued_at: float


@dataclass(slots=True)
class _Query:
    """Parameters of a first request (a ``next`` request takes them from its cursor)."""

    start_epoch: int
    end_epoch: int
    limit: int
    gte_mscore: int | None
    gte_threatscore: int | None
    exclude_osint: bool
    descending: bool
    report_limit: int
    include: dict[str, bool] = field(default_factory=dict)


class MatiSimulator(SimServer):
    """The MATI v4 API over TLS, serving ``feed``.

    ``clock`` returns epoch seconds; it drives token and cursor expiry, the default
    ``end_epoch`` and the look-back guard, so tests can move time without sleeping. Give it a
    time consistent with the feed's ``now``.
    """

    name = "mati"

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        *,
        feed: Feed,
        api_key: str = "sim-mati-key",
        api_secret: str = "sim-mati-secret",  # noqa: S107  # made up, like the simulator
        token_ttl_s: int = 43200,
        cursor_ttl_s: float = 600,
        end_of_paging: EndOfPaging = "empty",
        page_latency_s: float = 0.0,
        lookback_limit_days: int = 90,
        lookback_clamp: bool = False,
        expired_auth_status: int = 401,
        inject_bad_records: int = 0,
        clock: Callable[[], float] = time.time,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if end_of_paging not in ("short", "empty", "204"):
            raise ValueError(f"end_of_paging must be short, empty or 204, not {end_of_paging!r}")
        self.feed = feed
        self.api_key = api_key
        self.api_secret = api_secret
        self.token_ttl_s = token_ttl_s
        self.cursor_ttl_s = cursor_ttl_s
        self.end_of_paging: EndOfPaging = end_of_paging
        self.page_latency_s = page_latency_s
        self.lookback_limit_days = lookback_limit_days
        self.lookback_clamp = lookback_clamp
        self.expired_auth_status = expired_auth_status
        self.inject_bad_records = inject_bad_records
        self.clock = clock
        # Counters for tests and benchmarks.
        self.tokens_issued = 0
        self.token_requests = 0
        self.pages_served = 0
        self.indicators_served = 0
        self.scrolls_opened = 0
        self.bad_records: list[BadRecord] = []
        self._tokens: dict[str, float] = {}  # token -> expires at (clock seconds)
        self._revoked: set[str] = set()
        self._current: str | None = None
        self._cursors: dict[str, _Cursor] = {}
        #: (type, normalised value) -> feed index, built lazily for value look-ups; values
        #: never change with a mutation, so the map only grows with the feed.
        self._by_value: dict[tuple[str, str], int] = {}
        self._values_indexed = 0
        #: (blocks left out, report limit) -> index -> (record version, rendered bytes); only
        #: for the queries ``prerender`` was asked to serve.
        self._rendered: dict[tuple[frozenset[str], int], dict[int, tuple[int, bytes]]] = {}
        super().__init__(ssl_context, host=host, port=port)
        # A page cut off inside its first record (the generic answers are otherwise APIM-style).
        self.app[FAULT_ANSWERS] = FaultAnswers(b'{"indicators": [{"id": "indicator--trunc')

    def routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/token", self._token, name="token")
        router.add_get("/v4/indicator", self._indicator, name="indicator")
        router.add_get("/v4/entitlements", self._entitlements, name="entitlements")
        router.add_get(
            "/v4/indicator/{type:ipv4|fqdn|url|md5}/{value:.+}",
            self._indicator_by_value,
            name="indicator_by_value",
        )
        router.add_get("/v4/indicator/{id}", self._indicator_by_id, name="indicator_by_id")

    # ------------------------------------------------------------------ helpers for tests

    @property
    def current_token(self) -> str | None:
        return self._current

    @property
    def open_cursors(self) -> int:
        self._prune_cursors()
        return len(self._cursors)

    def prerender(self, include_params: Mapping[str, str]) -> int:
        """Render every record as a query with ``include_params`` (its ``include_*`` flags)
        gets it, and keep the bytes until the record changes: that query's pages are then
        joined, not built. Returns how many records were rendered.

        For benchmarks: this simulator shares the machine with the pipeline it serves, and
        building records is most of its work while a sync runs, work the real MATI does on
        its own servers. Costs the serialized size of the feed (about 1.2 KB a record).
        """
        omit = _omitted(_include_flags(include_params, only_present=False))
        rendered = self._rendered.setdefault((omit, DEFAULT_REPORT_LIMIT), {})
        for i in range(len(self.feed)):
            rendered[i] = self._rendition(i, None, omit, DEFAULT_REPORT_LIMIT)
        return len(rendered)

    def _rendition(
        self, i: int, generation: int | None, omit: frozenset[str], report_limit: int
    ) -> tuple[int, bytes]:
        record = self.feed.record(i, generation=generation, omit=omit)
        _cap_reports(record, report_limit)
        return self.feed.version_of(i, generation), orjson.dumps(record)

    def expire_tokens(self) -> None:
        """Revoke every issued token: the next API call with one gets the expired answer."""
        self._revoked.update(self._tokens)
        self._current = None

    def expire_cursors(self) -> None:
        self._cursors.clear()

    # ------------------------------------------------------------------ auth

    def _basic_ok(self, header: str) -> bool:
        """``Authorization: Basic base64(key:secret)`` with our credentials (decoded by hand:
        aiohttp deprecates ``BasicAuth``, and the simulator must not lean on client code)."""
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        login, sep, password = decoded.partition(":")
        return (
            bool(sep)
            and secrets.compare_digest(login.encode(), self.api_key.encode())
            and secrets.compare_digest(password.encode(), self.api_secret.encode())
        )

    def _authorize(self, request: web.Request) -> web.Response | None:
        """None when the request may proceed, else the 401/403 to answer."""
        header = request.headers.get("Authorization", "")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() == "basic":
            if self._basic_ok(header):
                return None
            return _auth_error(401, "invalid_client", "Invalid key id or secret.")
        if scheme.lower() != "bearer" or not credential.strip():
            return _auth_error(401, "invalid_request", "Missing Authorization header.")
        token = credential.strip()
        expires_at = self._tokens.get(token)
        if expires_at is None:
            return _auth_error(401, "invalid_token", "The access token is invalid.")
        if token in self._revoked or self.clock() >= expires_at:
            return _auth_error(self.expired_auth_status, "invalid_token", "The token has expired.")
        return None

    async def _token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        if not self._basic_ok(request.headers.get("Authorization", "")):
            return _auth_error(401, "invalid_client", "Client authentication failed.")
        form = await request.post()
        grant = form.get("grant_type")
        if grant is None:
            return _error(400, "invalid_request", "grant_type is required.")
        if grant != "client_credentials":
            return _error(400, "unsupported_grant_type", f"Unsupported grant_type {grant!r}.")
        now = self.clock()
        token = self._current
        # The live service hands back its cached token with the time it has left (§2.3).
        if token is None or token in self._revoked or self._tokens[token] - now < 1:
            token = secrets.token_urlsafe(48)
            self._tokens[token] = now + self.token_ttl_s
            self._current = token
            self.tokens_issued += 1
        body = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": int(self._tokens[token] - now),
        }
        return _json(body, headers={"Cache-Control": "no-store"})

    async def _entitlements(self, request: web.Request) -> web.Response:
        denied = self._authorize(request)
        if denied is not None:
            return denied
        return _json({"entitlements": ["mati", "mati:indicators", "mati:reports", "api"]})

    # ------------------------------------------------------------------ indicators

    async def _indicator(self, request: web.Request) -> web.StreamResponse:
        denied = self._authorize(request)
        if denied is not None:
            return denied
        if self.faults.take("indicator", frozenset({FaultKind.EXPIRED_TOKEN})) is not None:
            self.expire_tokens()
            return _auth_error(self.expired_auth_status, "invalid_token", "The token has expired.")
        try:
            scroll, state = self._resolve(request.query)
            # include_* flags sent next to a cursor override the scroll's for this page (§10.4).
            include = {**scroll.include, **_include_flags(request.query, only_present=True)}
        except _BadRequest as exc:
            return _error(400, exc.error, str(exc))
        if self.page_latency_s > 0:
            await asyncio.sleep(self.page_latency_s)
        return self._page(scroll, include, state)

    async def _indicator_by_id(self, request: web.Request) -> web.Response:
        denied = self._lookup_denied(request)
        if denied is not None:
            return denied
        try:
            index: int | None = self.feed.index_of(request.match_info["id"])
        except KeyError:
            index = None
        return self._one(request, index)

    async def _indicator_by_value(self, request: web.Request) -> web.Response:
        denied = self._lookup_denied(request)
        if denied is not None:
            return denied
        kind = request.match_info["type"]
        key = (kind, _lookup_key(kind, request.match_info["value"]))
        if key not in self._by_value:
            for i in range(self._values_indexed, len(self.feed)):
                found = self.feed.type_of(i)
                record = self.feed.record(i, omit=_OPTIONAL_KEYS)
                value = _lookup_key(found, str(record["value"]))
                self._by_value.setdefault((found, value), i)
            self._values_indexed = len(self.feed)
        return self._one(request, self._by_value.get(key))

    def _lookup_denied(self, request: web.Request) -> web.Response | None:
        denied = self._authorize(request)
        if denied is not None:
            return denied
        route = request.match_info.route.name
        if self.faults.take(route, frozenset({FaultKind.EXPIRED_TOKEN})) is not None:
            self.expire_tokens()
            return _auth_error(self.expired_auth_status, "invalid_token", "The token has expired.")
        return None

    def _one(self, request: web.Request, index: int | None) -> web.Response:
        """One indicator, no envelope (§4), or the 404 of an unknown one."""
        try:
            include = _include_flags(request.query, only_present=False)
        except _BadRequest as exc:
            return _error(400, exc.error, str(exc))
        if index is None:
            return _error(404, "not_found", "Indicator not found.")
        record = self.feed.record(index, omit=_omitted(include))
        return _json(_shape(record, include, DEFAULT_REPORT_LIMIT))

    def _resolve(self, query: Mapping[str, str]) -> tuple[_Scroll, dict[str, Any]]:
        """The scroll and the cursor state (page size, page number) this request asks for."""
        self._prune_cursors()
        cursor = query.get("next")
        if cursor:
            entry, state = self._decode_cursor(cursor)
            return entry.scroll, state
        q = self._parse_query(query)
        indexes = self.feed.window_ms(
            q.start_epoch * 1000,
            q.end_epoch * 1000,
            gte_mscore=q.gte_mscore,
            exclude_osint=q.exclude_osint,
            gte_threatscore=q.gte_threatscore,
        )
        if q.descending:
            indexes.reverse()
        scroll = _Scroll(array("q", indexes), self.feed.generation, q.include, q.report_limit)
        fresh: dict[str, Any] = {
            "exclude_os_int": q.exclude_osint,
            "limit": q.limit,
            "report_limit": q.report_limit,
            "start_epoch": q.start_epoch,
            "end_epoch": q.end_epoch,
            "sort_by": "last_updated:desc" if q.descending else "last_updated:asc",
            "next_page_index": 0,
        }
        if q.gte_mscore is not None:
            fresh["gte_mscore"] = q.gte_mscore
        if q.gte_threatscore is not None:
            fresh["gte_threatscore"] = q.gte_threatscore
        self.scrolls_opened += 1
        return scroll, fresh

    def _parse_query(self, query: Mapping[str, str]) -> _Query:
        now = int(self.clock())
        if "start_epoch" not in query:
            raise _BadRequest("start_epoch is required unless next is given.")
        start = _int_param(query, "start_epoch", 0, None)
        end = _int_param(query, "end_epoch", 0, None, default=now)
        if start is None:
            raise _BadRequest("start_epoch must not be empty.")
        oldest = now - self.lookback_limit_days * 86_400
        if start < oldest:
            if not self.lookback_clamp:
                raise _BadRequest(
                    f"start_epoch may not be more than {self.lookback_limit_days} days ago."
                )
            start = oldest
        if end is None or end < start:
            raise _BadRequest("end_epoch must not be before start_epoch.")
        limit = _int_param(query, "limit", 1, MAX_LIMIT, default=DEFAULT_LIMIT)
        report_limit = _int_param(query, "report_limit", 0, MAX_LIMIT, DEFAULT_REPORT_LIMIT)
        return _Query(
            start_epoch=start,
            end_epoch=end,
            limit=limit or DEFAULT_LIMIT,
            gte_mscore=_int_param(query, "gte_mscore", 0, 100),
            gte_threatscore=_int_param(query, "gte_threatscore", 0, 100),
            exclude_osint=_bool_param(query, "exclude_osint", default=False),
            descending=_descending(query),
            report_limit=DEFAULT_REPORT_LIMIT if report_limit is None else report_limit,
            include=_include_flags(query, only_present=False),
        )

    def _decode_cursor(self, cursor: str) -> tuple[_Cursor, dict[str, Any]]:
        scroll_id, dot, encoded = cursor.rpartition(".")
        if not dot:
            raise _BadRequest("Malformed next token.", "invalid_cursor")
        try:
            state = orjson.loads(base64.b64decode(encoded, validate=True))
            valid = int(state["next_page_index"]) >= 0 and 1 <= int(state["limit"]) <= MAX_LIMIT
        except (binascii.Error, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise _BadRequest("Malformed next token.", "invalid_cursor") from exc
        if not valid:
            raise _BadRequest("Malformed next token.", "invalid_cursor")
        entry = self._cursors.get(scroll_id)
        if entry is None:
            raise _BadRequest(
                "The next token is invalid or has expired; start a new query.", "invalid_cursor"
            )
        return entry, state

    def _prune_cursors(self) -> None:
        deadline = self.clock() - self.cursor_ttl_s
        for key in [k for k, c in self._cursors.items() if c.issued_at <= deadline]:
            del self._cursors[key]

    def _issue_cursor(self, scroll: _Scroll, state: dict[str, Any]) -> str:
        scroll_id = base64.b64encode(secrets.token_bytes(_SCROLL_ID_BYTES)).decode()
        self._cursors[scroll_id] = _Cursor(scroll, self.clock())
        return f"{scroll_id}.{base64.b64encode(orjson.dumps(state)).decode()}"

    def _page(
        self, scroll: _Scroll, include: dict[str, bool], state: dict[str, Any]
    ) -> web.StreamResponse:
        page, limit = int(state["next_page_index"]), int(state["limit"])
        total = len(scroll.indexes)
        lo = min(page * limit, total)
        hi = min(lo + limit, total)
        # "short": the last page has no next; otherwise, like an ES scroll, the server only
        # knows it is done when a batch comes back empty.
        has_next = hi < total if self.end_of_paging == "short" else hi > lo
        self.pages_served += 1
        if hi == lo and self.end_of_paging == "204":
            return web.Response(status=204, headers=_EDGE_HEADERS)
        body = b'{"indicators":' + self._render(scroll, include, page, scroll.indexes[lo:hi])
        if has_next:
            cursor = self._issue_cursor(scroll, {**state, "next_page_index": page + 1})
            body += b',"next":' + orjson.dumps(cursor)
        body += b"}"
        self.indicators_served += hi - lo
        return web.Response(
            body=body,
            headers={**_EDGE_HEADERS, "Content-Type": JSON_CONTENT_TYPE},
        )

    def _bad_positions(self, count: int) -> list[int]:
        if count == 0:  # an empty page cannot carry a bad record: keep the fault queued
            return []
        positions = list(range(min(self.inject_bad_records, count)))
        fault = self.faults.take("indicator", frozenset({FaultKind.PARTIAL_ERRORS}))
        if fault is not None:
            positions.extend(i % count for i in fault.record_indexes if i % count not in positions)
        return positions

    def _render(
        self, scroll: _Scroll, include: dict[str, bool], page: int, indexes: array[int]
    ) -> bytes:
        """The page's ``indicators`` array, serialized.

        Blocks the query leaves out are never built (``Feed.record(omit=...)``), and the
        array is one ``orjson.dumps``: rendering the page is most of the simulator's work
        while a sync runs. Only a page with bad records is assembled record by record.
        """
        generation = scroll.generation
        omit = _omitted(include)
        report_limit = scroll.report_limit
        positions = self._bad_positions(len(indexes))
        rendered = self._rendered.get((omit, report_limit))
        if rendered is not None and not positions:
            return self._join(rendered, indexes, generation, omit, report_limit)
        record = self.feed.record
        records = [record(i, generation=generation, omit=omit) for i in indexes]
        if "reports" not in omit:
            for r in records:
                _cap_reports(r, report_limit)
        if not positions:
            return orjson.dumps(records)
        parts = [orjson.dumps(r) for r in records]
        for n, position in enumerate(positions):
            kind = BAD_RECORD_KINDS[n % len(BAD_RECORD_KINDS)]
            original_id = str(records[position]["id"])
            parts[position] = _corrupt(records[position], kind)
            self.bad_records.append(BadRecord(page, position, original_id, kind))
        return b"[" + b",".join(parts) + b"]"

    def _join(
        self,
        rendered: dict[int, tuple[int, bytes]],
        indexes: array[int],
        generation: int,
        omit: frozenset[str],
        report_limit: int,
    ) -> bytes:
        """The page from kept renditions; a record changed since is rendered again."""
        version_of = self.feed.version_of
        parts = []
        for i in indexes:
            kept = rendered.get(i)
            if kept is None or kept[0] != version_of(i, generation):
                kept = rendered[i] = self._rendition(i, generation, omit, report_limit)
            parts.append(kept[1])
        return b"[" + b",".join(parts) + b"]"


# ---------------------------------------------------------------------- module helpers

#: What the real edge (Cloudflare in front of AWS, §1) adds; harmless, but realistic logs.
_EDGE_HEADERS = {"Server": "cloudflare", "CF-RAY": "8f1c2a3b4d5e6f70-IAD"}


def _json(
    body: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        headers={**_EDGE_HEADERS, **(headers or {}), "Content-Type": JSON_CONTENT_TYPE},
    )


def _error(status: int, error: str, description: str) -> web.Response:
    return _json({"error": error, "error_description": description}, status=status)


def _auth_error(status: int, error: str, description: str) -> web.Response:
    return _json(
        {"error": error, "error_description": description},
        status=status,
        headers={"WWW-Authenticate": f'Bearer error="{error}"'},
    )


def _bool_param(query: Mapping[str, str], name: str, *, default: bool) -> bool:
    raw = query.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise _BadRequest(f"{name} must be a boolean, not {raw!r}.")


def _int_param(
    query: Mapping[str, str],
    name: str,
    low: int,
    high: int | None,
    default: int | None = None,
) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _BadRequest(f"{name} must be an integer, not {raw!r}.") from None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise _BadRequest(f"{name} must be {bound}.")
    return value


def _include_flags(query: Mapping[str, str], *, only_present: bool) -> dict[str, bool]:
    return {
        name: _bool_param(query, name, default=default)
        for name, default in INCLUDE_DEFAULTS.items()
        if not only_present or name in query
    }


def _descending(query: Mapping[str, str]) -> bool:
    """``sort_by=field[:asc|desc]`` (or ``sort_order``); only ``last_updated`` sorts here."""
    sort_by = query.get("sort_by")
    order = query.get("sort_order")
    if sort_by:
        field_name, _, suffix = sort_by.partition(":")
        if field_name.strip() != "last_updated":
            raise _BadRequest(f"Unsupported sort field {field_name!r}.")
        order = suffix or order
    if order is None or order == "":
        return sort_by is None  # no sort_by at all: newest first (§3.3)
    if order.lower() not in ("asc", "desc"):
        raise _BadRequest(f"Unsupported sort order {order!r}.")
    return order.lower() == "desc"


def _lookup_key(kind: str, value: str) -> str:
    """A value as look-ups compare it: what MATI treats as the same indicator."""
    if kind == "url":
        return value
    return value.strip() if kind == "ipv4" else value.strip().lower()


def _omitted(include: Mapping[str, bool]) -> frozenset[str]:
    """The record keys of the optional blocks the query did not ask for."""
    return frozenset(
        key for flag, key in _INCLUDE_KEYS.items() if not include.get(flag, INCLUDE_DEFAULTS[flag])
    )


def _cap_reports(record: dict[str, Any], report_limit: int) -> None:
    reports = record.get("reports")
    if isinstance(reports, list) and len(reports) > report_limit:
        record["reports"] = reports[:report_limit]


def _shape(record: dict[str, Any], include: dict[str, bool], report_limit: int) -> dict[str, Any]:
    """Drop the optional blocks the query did not ask for; cap embedded reports."""
    for key in _omitted(include):
        record.pop(key, None)
    _cap_reports(record, report_limit)
    return record


def _corrupt(record: dict[str, Any], kind: str) -> bytes:
    """One record broken the way ``kind`` says, serialized (a duplicate key needs raw bytes)."""
    broken = dict(record)
    if kind == "missing_id":
        del broken["id"]
    elif kind == "missing_value":
        del broken["value"]
    elif kind == "mscore_not_int":
        broken["mscore"] = "high"
    elif kind == "value_not_string":
        broken["value"] = 12345
    elif kind == "sources_not_list":
        broken["sources"] = "Mandiant"
    elif kind == "bad_last_updated":
        broken["last_updated"] = "yesterday"
    elif kind == "duplicate_key":
        # A real detail response carried a key twice (§3.5). Here the second copy is invalid:
        # last-wins parsers see a null value, strict parsers reject the record; either way
        # the record must be skipped, and the rest of the page kept.
        return orjson.dumps(broken)[:-1] + b',"value":null}'
    else:
        raise ValueError(kind)
    return orjson.dumps(broken)
