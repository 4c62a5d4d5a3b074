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
import secrets
import ssl
import time
from array import array
from collections.abc import Callable, Mapping
from typing import Any, Literal

import orjson
from aiohttp import web

from simulators.faults import FAULT_ANSWERS, FaultAnswers, FaultKind
from simulators.feed import Feed
from simulators.mati_actors import PROFILES
from simulators.mati_bad_records import BAD_RECORD_KINDS, BadRecord, corrupt
from simulators.mati_pages import PageRenderer
from simulators.mati_query import (
    DEFAULT_REPORT_LIMIT,
    OPTIONAL_KEYS,
    BadRequest,
    include_flags,
    lookup_key,
    omitted,
    parse_query,
    shape,
)
from simulators.mati_scroll import Cursors, Scroll
from simulators.server import SimServer, basic_credentials, bearer_token

EndOfPaging = Literal["short", "empty", "204"]

JSON_CONTENT_TYPE = "application/json; charset=UTF-8"


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
        self.actor_requests = 0
        self.bad_records: list[BadRecord] = []
        #: Feed index -> a ``BAD_RECORD_KINDS`` kind: that record is served broken so on every
        #: page that carries it, however often it is paged (the chaos run plants a known set
        #: and finds exactly it in the dead-letter queue, whatever was paged twice).
        self.planted: dict[int, str] = {}
        self._tokens: dict[str, float] = {}  # token -> expires at (clock seconds)
        self._revoked: set[str] = set()
        self._current: str | None = None
        self._cursors = Cursors()
        #: (type, normalised value) -> feed index, built lazily for value look-ups; values
        #: never change with a mutation, so the map only grows with the feed.
        self._by_value: dict[tuple[str, str], int] = {}
        self._values_indexed = 0
        self._pages = PageRenderer(feed)
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
        router.add_get("/v4/actor/{id}", self._actor, name="actor")

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
        joined, not built. Returns how many records were rendered; costs the serialized size
        of the feed (about 1.2 KB a record). For benchmarks: ``simulators.mati_pages`` says why.
        """
        omit = omitted(include_flags(include_params, only_present=False))
        return self._pages.prerender(omit, DEFAULT_REPORT_LIMIT)

    def expire_tokens(self) -> None:
        """Revoke every issued token: the next API call with one gets the expired answer."""
        self._revoked.update(self._tokens)
        self._current = None

    def expire_cursors(self) -> None:
        self._cursors.clear()

    # ------------------------------------------------------------------ auth

    def _basic_ok(self, header: str) -> bool:
        """``Authorization: Basic base64(key:secret)`` with our credentials."""
        pair = basic_credentials(header)
        return (
            pair is not None
            and secrets.compare_digest(pair[0].encode(), self.api_key.encode())
            and secrets.compare_digest(pair[1].encode(), self.api_secret.encode())
        )

    def _authorize(self, request: web.Request) -> web.Response | None:
        """None when the request may proceed, else the 401/403 to answer."""
        header = request.headers.get("Authorization", "")
        if header.partition(" ")[0].lower() == "basic":
            if self._basic_ok(header):
                return None
            return _auth_error(401, "invalid_client", "Invalid key id or secret.")
        token = bearer_token(request)
        if token is None:
            return _auth_error(401, "invalid_request", "Missing Authorization header.")
        expires_at = self._tokens.get(token)
        if expires_at is None:
            return _auth_error(401, "invalid_token", "The access token is invalid.")
        if token in self._revoked or self.clock() >= expires_at:
            return self._expired()
        return None

    def _denied(self, request: web.Request) -> web.Response | None:
        """``_authorize``, then the EXPIRED_TOKEN fault of the request's route: the answer as
        if the token had expired, and the token really revoked."""
        denied = self._authorize(request)
        if denied is not None:
            return denied
        route = request.match_info.route.name
        if self.faults.take(route, frozenset({FaultKind.EXPIRED_TOKEN})) is not None:
            self.expire_tokens()
            return self._expired()
        return None

    def _expired(self) -> web.Response:
        return _auth_error(self.expired_auth_status, "invalid_token", "The token has expired.")

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
        denied = self._denied(request)
        if denied is not None:
            return denied
        try:
            scroll, state = self._resolve(request.query)
            # include_* flags sent next to a cursor override the scroll's for this page (§10.4).
            include = {**scroll.include, **include_flags(request.query, only_present=True)}
        except BadRequest as exc:
            return _error(400, exc.error, str(exc))
        if self.page_latency_s > 0:
            await asyncio.sleep(self.page_latency_s)
        return self._page(scroll, include, state)

    async def _indicator_by_id(self, request: web.Request) -> web.Response:
        denied = self._denied(request)
        if denied is not None:
            return denied
        try:
            index: int | None = self.feed.index_of(request.match_info["id"])
        except KeyError:
            index = None
        return self._one(request, index)

    async def _actor(self, request: web.Request) -> web.Response:
        """A threat actor's profile, or the 404 of an unknown one."""
        denied = self._denied(request)
        if denied is not None:
            return denied
        self.actor_requests += 1
        profile = PROFILES.get(request.match_info["id"])
        if profile is None:
            return _error(404, "not_found", "Actor not found.")
        return _json(profile)

    async def _indicator_by_value(self, request: web.Request) -> web.Response:
        denied = self._denied(request)
        if denied is not None:
            return denied
        kind = request.match_info["type"]
        key = (kind, lookup_key(kind, request.match_info["value"]))
        if key not in self._by_value:
            for i in range(self._values_indexed, len(self.feed)):
                found = self.feed.type_of(i)
                record = self.feed.record(i, omit=OPTIONAL_KEYS)
                value = lookup_key(found, str(record["value"]))
                self._by_value.setdefault((found, value), i)
            self._values_indexed = len(self.feed)
        return self._one(request, self._by_value.get(key))

    def _one(self, request: web.Request, index: int | None) -> web.Response:
        """One indicator, no envelope (§4), or the 404 of an unknown one."""
        try:
            include = include_flags(request.query, only_present=False)
        except BadRequest as exc:
            return _error(400, exc.error, str(exc))
        if index is None:
            return _error(404, "not_found", "Indicator not found.")
        record = self.feed.record(index, omit=omitted(include))
        return _json(shape(record, include, DEFAULT_REPORT_LIMIT))

    def _resolve(self, query: Mapping[str, str]) -> tuple[Scroll, dict[str, Any]]:
        """The scroll and the cursor state (page size, page number) this request asks for."""
        self._prune_cursors()
        cursor = query.get("next")
        if cursor:
            return self._cursors.resolve(cursor)
        q = parse_query(query, int(self.clock()), self.lookback_limit_days, self.lookback_clamp)
        indexes = self.feed.window_ms(
            q.start_epoch * 1000,
            q.end_epoch * 1000,
            gte_mscore=q.gte_mscore,
            exclude_osint=q.exclude_osint,
            gte_threatscore=q.gte_threatscore,
        )
        if q.descending:
            indexes.reverse()
        scroll = Scroll(array("q", indexes), self.feed.generation, q.include, q.report_limit)
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

    def _prune_cursors(self) -> None:
        self._cursors.expire(self.clock() - self.cursor_ttl_s)

    def _page(
        self, scroll: Scroll, include: dict[str, bool], state: dict[str, Any]
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
            following = {**state, "next_page_index": page + 1}
            cursor = self._cursors.issue(scroll, following, self.clock())
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
        self, scroll: Scroll, include: dict[str, bool], page: int, indexes: array[int]
    ) -> bytes:
        """The page's ``indicators`` array, serialized; only a page with bad records is
        assembled record by record."""
        generation, report_limit = scroll.generation, scroll.report_limit
        omit = omitted(include)
        positions = self._bad_positions(len(indexes))
        broken = {p: BAD_RECORD_KINDS[n % len(BAD_RECORD_KINDS)] for n, p in enumerate(positions)}
        if self.planted:
            planted = self.planted
            broken.update((p, planted[i]) for p, i in enumerate(indexes) if i in planted)
        if not broken:
            return self._pages.page(indexes, generation, omit, report_limit)
        records = self._pages.records(indexes, generation, omit, report_limit)
        parts = [orjson.dumps(r) for r in records]
        for position, kind in broken.items():
            original_id = str(records[position]["id"])
            parts[position] = corrupt(records[position], kind)
            self.bad_records.append(BadRecord(page, position, original_id, kind))
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
