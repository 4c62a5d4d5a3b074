"""The two Microsoft Sentinel threat-intelligence upload APIs, on one TLS server.

- STIX objects upload (default of the product): ``POST /workspaces/{ws}/
  threat-intelligence-stix-objects:upload?api-version=2024-02-01-preview``, body
  ``{"sourcesystem", "stixobjects"}``, ARM-style errors ``{"error": {"code", "message"}}`` plus an
  ``x-ms-error-code`` header (``specs/sentinel-and-entra.md`` §2).
- Legacy upload indicators: ``POST /{ws}/threatintelligence:upload-indicators?api-version=
  2022-07-01``, body ``{"sourcesystem", "value"}`` with keys matched case-insensitively, APIM-style
  errors ``{"statusCode", "message"}`` (§1).

Everything an uploader has to get right is enforced, because a lenient fake hides the bugs
the product exists to avoid: bearer tokens minted by the Entra simulator for a management
audience; 100 objects per request; 100 requests per identity per sliding minute (429 with
``Retry-After`` and the documented message); per-record validation answered with HTTP 200 and
``errors[]`` (message key ``errorMessages`` or ``validationErrorMessages``: the docs and the
swagger disagree, so both are producible). Accepted objects land in ``store`` (by STIX id, a
re-upload replaces) and, append-only, in ``rows`` shaped like the ``ThreatIntelIndicators`` table,
which is what the Log Analytics simulator queries.

Choices where the documentation is silent (§7 open questions): a batch in which *every* record
fails validation is answered 400 (the swagger promises 200 only when at least one record was
published) with the same ``errors[]`` list so the client can still see why; more than
``max_objects`` is a 400 for the whole request, nothing stored; ``ObservableValue`` holds the
un-escaped literal; a top-level custom (``x_``) property fails its record, while ``extensions``
(documented as accepted, not indexed) are kept as they are.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import math
import re
import ssl
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, KeysView, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

import orjson
from aiohttp import web

from simulators.faults import FAULT_ANSWERS, Fault, FaultAnswers, FaultKind, Handler
from simulators.server import SimServer
from simulators.tokens import Claims, TokenError, TokenMinter, TokenProblem, decode_unverified

STIX_API_VERSION: Final = "2024-02-01-preview"
LEGACY_API_VERSION: Final = "2022-07-01"
STIX_ROUTE: Final = "stix_upload"
LEGACY_ROUTE: Final = "legacy_upload"

#: The four audiences the upload APIs accept (§1.2), and nothing else.
MANAGEMENT_AUDIENCES: Final = frozenset(
    {
        "https://management.azure.com",
        "https://management.azure.com/",
        "https://management.core.windows.net",
        "https://management.core.windows.net/",
    }
)
DEFAULT_WORKSPACE_ID: Final = "6f1d2c3b-4a59-4e6f-8a7b-9c0d1e2f3a4b"
ERROR_KEYS: Final = ("errorMessages", "validationErrorMessages")
RESERVED_SOURCE: Final = "microsoft sentinel"
#: Top-level properties with this prefix are refused per record: custom data belongs in
#: ``extensions`` (accepted, not indexed, §2.2). Where Sentinel's documentation is silent on
#: top-level custom properties, the simulator is strict, so a product regression fails a test.
CUSTOM_PREFIX: Final = "x_"
MAX_SOURCE_LENGTH: Final = 256

_ID_RE = re.compile(
    r"^([a-z0-9][a-z0-9-]*[a-z0-9])--"
    r"([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$"
)
_TIMESTAMP_RE = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?Z$")
#: One comparison, one string literal: the only shape Sentinel extracts an observable from.
_SIMPLE_PATTERN_RE = re.compile(
    r"^\[\s*([a-z0-9-]+:[A-Za-z0-9_]+(?:\.(?:[A-Za-z0-9_]+|'(?:[^'\\]|\\['\\])*'))*)"
    r"\s*=\s*'((?:[^'\\]|\\['\\])*)'\s*\]$"
)
_ESCAPE_RE = re.compile(r"\\(['\\])")
_ROW_ID_NAMESPACE = uuid.UUID("a3b9c1d7-2f44-4c1e-9d7e-5e6e7469616c")
_ROW_ID_NAMESPACE_BYTES = _ROW_ID_NAMESPACE.bytes
_ARRIVAL: Final = web.RequestKey("sentinel.arrival", float)
_ADMITTED: Final = web.RequestKey("sentinel.admitted", bool)


@dataclass(frozen=True)
class _Api:
    route: str
    api_version: str
    list_key: str
    legacy: bool


_STIX = _Api(STIX_ROUTE, STIX_API_VERSION, "stixobjects", legacy=False)
_LEGACY = _Api(LEGACY_ROUTE, LEGACY_API_VERSION, "value", legacy=True)


class ObjectStore(MutableMapping[str, dict[str, Any]]):
    """STIX id -> the object as last accepted, like a ``dict``; kept serialized.

    A benchmark stores up to 300 000 objects. Kept as parsed dicts (a dozen containers
    each) they made every later request pay for the garbage collector walking all of them,
    more the more were stored, and that was most of the upload handler's CPU. Here each
    object is its JSON, appended to one growing buffer: nothing for the collector to walk,
    about 1 KB an object, and no allocation per object that outlives its request. A read
    decodes a fresh dict equal to what was uploaded: changing it does not change the store
    (assign it back for that). Replaced and deleted objects keep their bytes until ``clear``.
    """

    __slots__ = ("_arena", "_at")

    def __init__(self) -> None:
        self._arena = bytearray()
        #: id -> where its JSON is: ``offset << 32 | length`` (one int, nothing to walk).
        self._at: dict[str, int] = {}

    def __getitem__(self, key: str) -> dict[str, Any]:
        return _decode(self._arena, self._at[key])

    def __setitem__(self, key: str, value: dict[str, Any]) -> None:
        self.put_blob(key, orjson.dumps(value))

    def __delitem__(self, key: str) -> None:
        del self._at[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._at)

    def __len__(self) -> int:
        return len(self._at)

    def __contains__(self, key: object) -> bool:
        return key in self._at

    def __repr__(self) -> str:
        return f"ObjectStore({dict(self)!r})"

    def keys(self) -> KeysView[str]:
        return self._at.keys()

    def clear(self) -> None:
        self._at.clear()
        self._arena = bytearray()  # rows not rendered yet keep the old one alive

    def put_blob(self, key: str, blob: bytes) -> _Located:
        """Store an object already serialized (``orjson.dumps`` of a JSON object); returns
        where it is, which stays valid even after the id is replaced or the store cleared."""
        arena = self._arena
        where = len(arena) << 32 | len(blob)
        arena += blob
        self._at[key] = where
        return arena, where

    def locate(self, key: str) -> _Located:
        return self._arena, self._at[key]


#: Where an object's JSON lies: (an ``ObjectStore``'s buffer, ``offset << 32 | length``).
_Located = tuple[bytearray, int]


def _decode(arena: bytearray, where: int) -> dict[str, Any]:
    start = where >> 32
    obj: dict[str, Any] = orjson.loads(arena[start : start + (where & 0xFFFFFFFF)])
    return obj


#: An accepted indicator whose row is not rendered yet (``SentinelSimulator.rows``): where
#: the object is, its sourcesystem, the row's ``LastUpdateMethod`` and its ingestion time.
#: A plain tuple: one is made per accepted object.
_PendingRow = tuple[_Located, str, str, datetime]


@dataclass(frozen=True)
class LoggedRequest:
    """One request to an upload route, generic faults included, for quota assertions.

    ``identity`` is the token's client id read *without* validation (``None`` without a
    token); ``at`` is the simulator's monotonic clock; ``admitted`` is true when the request
    passed authentication and consumed a slot of the rate limit.
    """

    identity: str | None
    at: float
    route: str
    status: int | None
    admitted: bool


class SentinelSimulator(SimServer):
    """Both upload APIs for one workspace, with the quota, validation and storage of §6."""

    name = "sentinel"

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        *,
        minter: TokenMinter,
        workspace_id: str = DEFAULT_WORKSPACE_ID,
        requests_per_minute: int = 100,
        window_s: float = 60.0,
        max_objects: int = 100,
        error_key: Literal["errorMessages", "validationErrorMessages"] = "errorMessages",
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        if error_key not in ERROR_KEYS:
            raise ValueError(f"error_key must be one of {ERROR_KEYS}")
        self.minter = minter
        self.workspace_id = workspace_id
        self.requests_per_minute = requests_per_minute
        self.window_s = window_s
        self.max_objects = max_objects
        self.error_key: str = error_key
        #: How long an admitted upload takes before it is answered: a gateway and ingestion that
        #: are not instant, so uploads spread over time the way they do against Sentinel.
        self.upload_latency_s = 0.0
        #: Monotonic clock of the rate limiter (replaceable in tests).
        self.clock: Callable[[], float] = time.monotonic
        self.store = ObjectStore()
        self._rows: list[dict[str, Any]] = []
        #: Rows accepted but not yet rendered (see ``rows``): what each one is built from.
        self._pending_rows: list[_PendingRow] = []
        self.object_rows: list[dict[str, Any]] = []
        self.request_log: list[LoggedRequest] = []
        self._uploads: defaultdict[str, int] = defaultdict(int)
        #: The sourcesystem each stored object came from (``store`` keeps objects verbatim).
        self._sources: dict[str, str] = {}
        self._admitted: defaultdict[str, deque[float]] = defaultdict(deque)
        self._last_generated: datetime | None = None
        super().__init__(ssl_context, host=host, port=port)
        # 429/5xx keep the APIM-style bodies the docs show for both APIs (§1.5, §2.4); a
        # malformed answer is a partial-success body cut off inside its first error entry.
        self.app[FAULT_ANSWERS] = FaultAnswers(
            b'{"errors": [{"recordIndex": 0, "errorMessages": ["Error for Property=pat'
        )
        # Outermost, so requests that a generic fault answers are counted too: the quota a
        # client is judged by is what it sent, not what the server chose to serve.
        self.app.middlewares.insert(0, self._request_log_middleware())

    def routes(self, router: web.UrlDispatcher) -> None:
        # A literal ':' inside a path segment is fine for aiohttp's plain (non-regex) routes.
        router.add_post(
            "/workspaces/{workspaceId}/threat-intelligence-stix-objects:upload",
            self._stix_upload,
            name=STIX_ROUTE,
        )
        router.add_post(
            "/{workspaceId}/threatintelligence:upload-indicators",
            self._legacy_upload,
            name=LEGACY_ROUTE,
        )
        router.add_get("/_sim/workspace", self._sim_workspace, name="sim.workspace")

    # -- what tests and the demo read --------------------------------------------------------

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The ``ThreatIntelIndicators`` rows, oldest first (append-only, like the table).

        A row is rendered the first time anyone reads ``rows``, not when its object is
        accepted: rendering (timestamps normalised, the observable split out of the pattern,
        the row id) costs more than validating the object, and a benchmark that only counts
        ``store`` never reads a row. The ingestion time is taken at acceptance, so a row reads
        the same whenever it is rendered; once rendered it is an ordinary dict in an ordinary
        list, which callers may read or change as before.
        """
        if self._pending_rows:
            self._rows.extend(self._indicator_row(*pending) for pending in self._pending_rows)
            self._pending_rows.clear()
        return self._rows

    def uploads_for(self, stix_id: str) -> int:
        """How many times ``stix_id`` was accepted (each acceptance added a row)."""
        return self._uploads.get(stix_id, 0)

    def max_requests_in_any_window(
        self,
        identity: str | None = None,
        *,
        window_s: float | None = None,
        admitted_only: bool = False,
    ) -> int:
        """The most requests one identity sent within any ``window_s`` (default: the quota's).

        ``identity=None`` answers for the busiest identity, which is what a per-user quota
        constrains. Throttled and faulted requests count unless ``admitted_only``.
        """
        window = self.window_s if window_s is None else window_s
        by_identity: defaultdict[str | None, list[float]] = defaultdict(list)
        for entry in self.request_log:
            if admitted_only and not entry.admitted:
                continue
            by_identity[entry.identity].append(entry.at)
        if identity is not None:
            by_identity = defaultdict(list, {identity: by_identity.get(identity, [])})
        best = 0
        for times in by_identity.values():
            times.sort()
            start = 0
            for end, at in enumerate(times):
                while at - times[start] >= window:
                    start += 1
                best = max(best, end - start + 1)
        return best

    def republish(self) -> None:
        """Sentinel's weekly republish: one more row for every stored indicator."""
        for stix_id, obj in self.store.items():
            if obj.get("type") == "indicator":
                source = self._sources[stix_id]
                located = self.store.locate(stix_id)
                self._pending_rows.append(
                    (located, source, "LogARepublisher", self._generated_now())
                )

    def reset(self) -> None:
        """Forget everything stored, logged and counted (benchmarks reuse one server)."""
        self.store.clear()
        self._rows.clear()
        self._pending_rows.clear()
        self.object_rows.clear()
        self.request_log.clear()
        self._uploads.clear()
        self._admitted.clear()
        self._sources.clear()

    # -- request flow ------------------------------------------------------------------------

    def _request_log_middleware(self) -> Any:
        routes = {STIX_ROUTE, LEGACY_ROUTE}

        @web.middleware
        async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            route = request.match_info.route.name
            if route not in routes:
                return await handler(request)
            request[_ARRIVAL] = self.clock()
            status: int | None = None
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                self.request_log.append(
                    LoggedRequest(
                        identity=_unverified_identity(request),
                        at=request[_ARRIVAL],
                        route=route,
                        status=status,
                        admitted=bool(request.get(_ADMITTED, False)),
                    )
                )

        return middleware

    async def _stix_upload(self, request: web.Request) -> web.Response:
        return await self._upload(request, _STIX)

    async def _legacy_upload(self, request: web.Request) -> web.Response:
        return await self._upload(request, _LEGACY)

    async def _upload(self, request: web.Request, api: _Api) -> web.Response:
        """Auth, quota, api-version, workspace, body, records: the order a gateway checks."""
        claims = self._authorize(request, api)
        if isinstance(claims, web.Response):
            return claims
        if self.faults.take(api.route, frozenset({FaultKind.EXPIRED_TOKEN})) is not None:
            self.minter.revoke(_bearer(request) or "")
            return self._unauthorized(api, TokenProblem.EXPIRED, "")
        retry_after = self._admit(claims.identity, request.get(_ARRIVAL, self.clock()))
        if retry_after is not None:
            return _throttled(retry_after)
        request[_ADMITTED] = True
        problem = self._check_request(request, api)
        if problem is not None:
            return problem
        body = await self._read_body(request, api)
        if isinstance(body, web.Response):
            return body
        source, objects = body
        if self.upload_latency_s > 0:
            await asyncio.sleep(self.upload_latency_s)
        refusal = self.faults.take(api.route, _REFUSALS)
        if refusal is not None:
            return self._refuse(api, objects, refusal)
        partial = self.faults.take(api.route, frozenset({FaultKind.PARTIAL_ERRORS}))
        errors = _validate_batch(objects, legacy=api.legacy)
        _apply_partial_fault(errors, objects, partial)
        for index, obj in enumerate(objects):
            if index not in errors:
                self._accept(obj, source)
        if not errors:
            return web.Response(status=200)
        listed = [
            {"recordIndex": index, self.error_key: messages}
            for index, messages in sorted(errors.items())
        ]
        if len(errors) == len(objects):
            message = f"None of the {len(objects)} objects in the request passed validation."
            return self._fail(api, 400, "InvalidStixObjects", message, {"errors": listed})
        return _json({"errors": listed})

    def _refuse(self, api: _Api, objects: list[Any], fault: Fault) -> web.Response:
        """A REJECT_ALL or REJECT_RECORDS fault: 400 for the whole request, nothing stored."""
        named: dict[int, list[str]] = {}
        message = fault.message
        if fault.kind is FaultKind.REJECT_ALL:
            if fault.attributed:
                named = {index: [fault.message] for index in range(len(objects))}
        else:
            for index in fault.record_indexes:
                if 0 <= index < len(objects):
                    obj = objects[index]
                    value = obj.get("pattern") if isinstance(obj, dict) else None
                    named[index] = [_message("pattern", "The pattern could not be parsed", value)]
            message = f"{len(named)} of the {len(objects)} objects failed validation; none stored."
        listed = [
            {"recordIndex": index, self.error_key: messages}
            for index, messages in sorted(named.items())
        ]
        extra = {"errors": listed} if listed else None
        return self._fail(api, 400, "InvalidStixObjects", message, extra)

    def _authorize(self, request: web.Request, api: _Api) -> Claims | web.Response:
        token = _bearer(request)
        if token is None:
            return self._unauthorized(api, None, "")
        try:
            return self.minter.validate(token, MANAGEMENT_AUDIENCES)
        except TokenError as exc:
            aud = exc.claims.get("aud")
            return self._unauthorized(api, exc.problem, str(aud))

    def _admit(self, identity: str, now: float) -> int | None:
        """Take a quota slot, or say in how many whole seconds the oldest one frees."""
        slots = self._admitted[identity]
        while slots and slots[0] <= now - self.window_s:
            slots.popleft()
        if len(slots) >= self.requests_per_minute:
            return max(1, math.ceil(slots[0] + self.window_s - now))
        slots.append(now)
        return None

    def _check_request(self, request: web.Request, api: _Api) -> web.Response | None:
        version = request.query.get("api-version")
        if version is None:
            return self._fail(
                api,
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
        if version != api.api_version:
            return self._fail(
                api,
                400,
                "InvalidApiVersionParameter",
                f"The api-version '{version}' is invalid. "
                f"The supported versions are '{api.api_version}'.",
            )
        workspace = request.match_info["workspaceId"].strip("{}").lower()
        if workspace != self.workspace_id.lower():
            return self._fail(
                api,
                404,
                "WorkspaceNotFound",
                f"Workspace '{request.match_info['workspaceId']}' was not found.",
            )
        return None

    async def _read_body(
        self, request: web.Request, api: _Api
    ) -> tuple[str, list[Any]] | web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return self._fail(api, 400, "InvalidRequestBody", "The request body is not valid JSON.")
        if not isinstance(body, dict):
            return self._fail(
                api, 400, "InvalidRequestBody", "The request body must be a JSON object."
            )
        if api.legacy:
            body = {str(key).lower(): value for key, value in reversed(body.items())}
        source = body.get("sourcesystem")
        if not isinstance(source, str) or not source.strip():
            return self._fail(api, 400, "InvalidSourceSystem", "sourcesystem is required.")
        if source.strip().lower() == RESERVED_SOURCE:
            return self._fail(
                api,
                400,
                "InvalidSourceSystem",
                "sourcesystem cannot be 'Microsoft Sentinel': the name is reserved.",
            )
        if len(source) > MAX_SOURCE_LENGTH:
            return self._fail(
                api,
                400,
                "InvalidSourceSystem",
                f"sourcesystem cannot be longer than {MAX_SOURCE_LENGTH} characters.",
            )
        objects = body.get(api.list_key)
        if not isinstance(objects, list) or not objects:
            return self._fail(
                api,
                400,
                "InvalidRequestBody",
                f"'{api.list_key}' must be a non-empty array of STIX objects.",
            )
        if len(objects) > self.max_objects:
            return self._fail(
                api,
                400,
                "TooManyObjects",
                f"The request contains {len(objects)} objects; the maximum is "
                f"{self.max_objects} per request.",
            )
        return source, objects

    # -- storage -----------------------------------------------------------------------------

    def _accept(self, obj: dict[str, Any], source: str) -> None:
        stix_id = obj["id"]
        located = self.store.put_blob(stix_id, orjson.dumps(obj))
        self._sources[stix_id] = source
        self._uploads[stix_id] += 1
        if obj["type"] == "indicator":
            self._pending_rows.append((located, source, "UploadApi", self._generated_now()))
        else:
            self.object_rows.append(
                {
                    "TimeGenerated": _iso(self._generated_now()),
                    "Id": _row_id(source, stix_id),
                    "StixType": obj["type"],
                    "Data": obj,
                    "Source": source,
                    "SourceSystem": source,
                    "IsDeleted": False,
                    "LastUpdateMethod": "UploadApi",
                    "WorkspaceId": self.workspace_id,
                    "Type": "ThreatIntelObjects",
                }
            )

    def _indicator_row(
        self, located: _Located, source: str, method: str, generated: datetime
    ) -> dict[str, Any]:
        """One ``ThreatIntelIndicators`` row, as Log Analytics ingested it at ``generated``."""
        obj = _decode(*located)
        valid_until = _parse_timestamp(obj.get("valid_until"))
        revoked = obj.get("revoked") is True
        key, value = split_observable(str(obj.get("pattern", "")))
        return {
            "TimeGenerated": _iso(generated),
            "Id": _row_id(source, str(obj["id"])),
            "SourceSystem": source,
            "Source": source,
            "Created": _normalize(obj.get("created")),
            "Modified": _normalize(obj.get("modified")),
            "ValidFrom": _normalize(obj.get("valid_from")),
            "ValidUntil": _normalize(obj.get("valid_until")),
            "IsActive": not revoked and (valid_until is None or valid_until > generated),
            "IsDeleted": False,
            "Revoked": revoked,
            "Confidence": obj.get("confidence"),
            "Pattern": obj.get("pattern", ""),
            "ObservableKey": key,
            "ObservableValue": value,
            "Tags": list(obj.get("labels") or []),
            "Data": obj,
            "AdditionalFields": {},
            "LastUpdateMethod": method,
            "WorkspaceId": self.workspace_id,
            "Type": "ThreatIntelIndicators",
        }

    def _generated_now(self) -> datetime:
        """Ingestion time, strictly increasing so ``arg_max(TimeGenerated, *)`` is decisive."""
        now = datetime.now(UTC)
        if self._last_generated is not None and now <= self._last_generated:
            now = self._last_generated + timedelta(microseconds=1)
        self._last_generated = now
        return now

    # -- answers -----------------------------------------------------------------------------

    def _unauthorized(self, api: _Api, problem: TokenProblem | None, aud: str) -> web.Response:
        """401: APIM's fixed body on the legacy host, ARM's coded error on the new one."""
        if api.legacy:
            return _json(
                {"statusCode": 401, "message": "Unauthorized. Access token is missing or invalid."},
                status=401,
            )
        code, message = _arm_auth_error(problem, aud)
        response = self._fail(api, 401, code, message)
        response.headers["WWW-Authenticate"] = (
            f'Bearer authorization_uri="https://login.microsoftonline.com/common", '
            f'error="invalid_token", error_description="{message}"'
        )
        return response

    def _fail(
        self,
        api: _Api,
        status: int,
        code: str,
        message: str,
        extra: Mapping[str, Any] | None = None,
    ) -> web.Response:
        if api.legacy:
            return _json({"statusCode": status, "message": message, **(extra or {})}, status=status)
        response = _json({"error": {"code": code, "message": message}, **(extra or {})}, status)
        response.headers["x-ms-error-code"] = code
        return response

    async def _sim_workspace(self, request: web.Request) -> web.Response:
        """What the simulated workspace holds (``make demo`` prints it at the end)."""
        return _json(
            {
                "workspace_id": self.workspace_id,
                "objects": len(self.store),
                "indicator_rows": len(self.rows),
                "object_rows": len(self.object_rows),
                "requests": len(self.request_log),
                "max_requests_in_any_window": self.max_requests_in_any_window(),
            }
        )


# -- validation --------------------------------------------------------------------------------


def _message(prop: str, problem: str, value: Any) -> str:
    if value is None:
        shown = "NULL"
    elif isinstance(value, str):
        shown = value
    else:
        shown = orjson.dumps(value).decode()
    if len(shown) > 200:
        shown = shown[:200] + "..."
    return f"Error for Property={prop}: {problem}. Actual value: {shown}."


def _missing(prop: str) -> str:
    return _message(prop, "Required property is missing", None)


def _validate_batch(objects: list[Any], *, legacy: bool) -> dict[int, list[str]]:
    errors: dict[int, list[str]] = {}
    for index, obj in enumerate(objects):
        messages = validate_object(obj, legacy=legacy)
        if messages:
            errors[index] = messages
    return errors


def validate_object(obj: Any, *, legacy: bool) -> list[str]:
    """The per-record checks of §1.3/§2.2; an empty list means the object is accepted."""
    if _plainly_valid(obj, legacy=legacy):
        return []
    return _problems(obj, legacy=legacy)


def _plainly_valid(obj: Any, *, legacy: bool) -> bool:
    """True only for an object ``_problems`` accepts, checked in one pass (every uploaded
    object goes through here; ``_problems`` then runs only for the rare doubtful one, and
    words the messages). False may be wrong, True never is: a test holds the two together.
    """
    if type(obj) is not dict:
        return False
    get = obj.get
    obj_type, stix_id = get("type"), get("id")
    if type(obj_type) is not str or type(stix_id) is not str or not obj_type:
        return False
    if legacy and obj_type != "indicator":
        return False
    match = _ID_RE.match(stix_id)
    if match is None or match.group(1) != obj_type:
        return False
    spec_version = get("spec_version", "2.1")
    if spec_version != "2.1" and spec_version != "2.0":
        return False
    created, modified = _parse_timestamp(get("created")), _parse_timestamp(get("modified"))
    if created is None or modified is None or modified < created:
        return False
    if obj_type == "indicator" and not _plainly_valid_indicator(obj, spec_version):
        return False
    return _plainly_valid_optional(obj)


def _plainly_valid_indicator(obj: dict[str, Any], spec_version: str) -> bool:
    get = obj.get
    pattern, pattern_type = get("pattern"), get("pattern_type")
    if type(pattern) is not str or not pattern:
        return False
    if pattern_type:
        if type(pattern_type) is not str:
            return False
    elif spec_version != "2.0":
        return False
    valid_from = _parse_timestamp(get("valid_from"))
    if valid_from is None:
        return False
    raw_until = get("valid_until")
    if raw_until:
        valid_until = _parse_timestamp(raw_until)
        if valid_until is None or valid_until <= valid_from:
            return False
    return True


def _plainly_valid_optional(obj: dict[str, Any]) -> bool:
    for key in obj:
        if key.startswith(CUSTOM_PREFIX):
            return False
    if "extensions" in obj and not _plain_extensions(obj["extensions"]):
        return False
    if "confidence" in obj:
        confidence = obj["confidence"]
        if type(confidence) is not int or not 0 <= confidence <= 100:
            return False
    if "revoked" in obj and type(obj["revoked"]) is not bool:
        return False
    labels = obj.get("labels")
    if labels is None:
        return True
    return type(labels) is list and all(type(label) is str for label in labels)


def _plain_extensions(extensions: Any) -> bool:
    """STIX 2.1 ``extensions``: an object of extension objects, keyed by an extension
    definition's id (``extension-definition--<UUID>``) or a predefined ``*-ext`` name."""
    if type(extensions) is not dict or not extensions:
        return False
    for name, extension in extensions.items():
        if type(extension) is not dict or not extension:
            return False
        if name.startswith("extension-definition--"):
            match = _ID_RE.match(name)
            if match is None or match.group(1) != "extension-definition":
                return False
        elif not name.endswith("-ext"):
            return False
    return True


def _problems(obj: Any, *, legacy: bool) -> list[str]:
    """Every problem of ``obj``, worded as Sentinel words them."""
    if not isinstance(obj, dict):
        return [_message("root", "The STIX object must be a JSON object", obj)]
    messages = [
        _missing(name) for name in ("id", "type", "created", "modified") if not obj.get(name)
    ]
    obj_type = obj.get("type")
    if obj_type and not isinstance(obj_type, str):
        messages.append(_message("type", "The value must be a string", obj_type))
    elif legacy and obj_type and obj_type != "indicator":
        messages.append(
            _message("type", "Only objects of type 'indicator' are supported", obj_type)
        )
    stix_id = obj.get("id")
    if stix_id:
        match = _ID_RE.match(stix_id) if isinstance(stix_id, str) else None
        if match is None or (isinstance(obj_type, str) and match.group(1) != obj_type):
            messages.append(
                _message("id", "The identifier must be of the form '<type>--<UUID>'", stix_id)
            )
    spec_version = obj.get("spec_version", "2.1")
    if spec_version not in ("2.0", "2.1"):
        messages.append(_message("spec_version", "Unsupported STIX version", spec_version))
    created = _checked_timestamp(obj, "created", messages)
    modified = _checked_timestamp(obj, "modified", messages)
    if created and modified and modified < created:
        messages.append(_message("modified", "modified must not be earlier than created", modified))
    if obj_type == "indicator":
        messages.extend(_indicator_problems(obj, spec_version))
    messages.extend(_common_optional_problems(obj))
    return messages


def _checked_timestamp(obj: Mapping[str, Any], name: str, messages: list[str]) -> datetime | None:
    """``obj[name]`` parsed (None when absent or invalid), noting an invalid one in ``messages``:
    each timestamp is parsed once per object."""
    raw = obj.get(name)
    if not raw:
        return None
    parsed = _parse_timestamp(raw)
    if parsed is None:
        messages.append(_message(name, "The value is not a valid RFC 3339 UTC timestamp", raw))
    return parsed


def _indicator_problems(obj: Mapping[str, Any], spec_version: Any) -> list[str]:
    messages: list[str] = []
    # STIX 2.0 indicators have no pattern_type (the swagger example uploads such objects).
    required = (
        ("pattern", "valid_from")
        if spec_version == "2.0"
        else (
            "pattern",
            "pattern_type",
            "valid_from",
        )
    )
    messages.extend(_missing(name) for name in required if not obj.get(name))
    for name in ("pattern", "pattern_type"):
        if obj.get(name) and not isinstance(obj[name], str):
            messages.append(_message(name, "The value must be a string", obj[name]))
    valid_from = _checked_timestamp(obj, "valid_from", messages)
    valid_until = _checked_timestamp(obj, "valid_until", messages)
    if valid_from and valid_until and valid_until <= valid_from:
        messages.append(
            _message("valid_until", "valid_until must be later than valid_from", obj["valid_until"])
        )
    return messages


def _common_optional_problems(obj: Mapping[str, Any]) -> list[str]:
    messages = [
        _message(key, "Custom properties are not supported at the top level", obj[key])
        for key in obj
        if key.startswith(CUSTOM_PREFIX)
    ]
    if "extensions" in obj and not _plain_extensions(obj["extensions"]):
        messages.append(
            _message(
                "extensions",
                "The value must map extension ids to non-empty extension objects",
                obj["extensions"],
            )
        )
    if "confidence" in obj:
        confidence = obj["confidence"]
        if (
            not isinstance(confidence, int)
            or isinstance(confidence, bool)
            or not 0 <= confidence <= 100
        ):
            messages.append(
                _message("confidence", "The value must be an integer from 0 to 100", confidence)
            )
    if "revoked" in obj and not isinstance(obj["revoked"], bool):
        messages.append(_message("revoked", "The value must be a boolean", obj["revoked"]))
    labels = obj.get("labels")
    if labels is not None and (
        not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)
    ):
        messages.append(_message("labels", "The value must be an array of strings", labels))
    return messages


#: Faults that refuse the whole upload (``SentinelSimulator._refuse``).
_REFUSALS: Final = frozenset({FaultKind.REJECT_ALL, FaultKind.REJECT_RECORDS})


def _apply_partial_fault(
    errors: dict[int, list[str]], objects: list[Any], fault: Fault | None
) -> None:
    """Reject valid records the way Sentinel's backend sometimes does, transiently."""
    if fault is None:
        return
    for index in fault.record_indexes:
        if 0 <= index < len(objects) and index not in errors:
            obj = objects[index]
            stix_id = obj.get("id") if isinstance(obj, dict) else None
            errors[index] = [
                _message("id", "The object could not be ingested, please retry later", stix_id)
            ]


# -- helpers -----------------------------------------------------------------------------------


def split_observable(pattern: str) -> tuple[str, str]:
    """``(ObservableKey, ObservableValue)`` of a single-comparison pattern, else empty strings."""
    match = _SIMPLE_PATTERN_RE.match(pattern.strip())
    if match is None:
        return "", ""
    return match.group(1), _ESCAPE_RE.sub(r"\1", match.group(2))


#: Longer than any string ``_TIMESTAMP_RE`` matches (30 characters, and ``$`` allows a "\n").
_TIMESTAMP_MAX = 31


def _parse_timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str) or len(value) > _TIMESTAMP_MAX:
        return None
    return _parse_timestamp_text(value)


# Every object carries four timestamps, and a batch's ``modified``/``valid_from``/``valid_until``
# are mostly the same few strings: remembering recent answers saves most of the parsing.
@functools.lru_cache(maxsize=4096)
def _parse_timestamp_text(value: str) -> datetime | None:
    match = _TIMESTAMP_RE.match(value)
    if match is None:
        return None
    fraction = (match.group(2) or "").ljust(6, "0")[:6]
    try:
        return datetime.fromisoformat(f"{match.group(1)}.{fraction}+00:00")
    except ValueError:
        return None


def _iso(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    if moment.year < 1000:  # strftime's %Y does not pad; keep its answer for those
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # Same text as the strftime above, at a third of the cost.
    return moment.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _normalize(value: Any) -> str | None:
    """Timestamps in one fixed format, so string order is time order for the KQL simulator."""
    if not isinstance(value, str) or len(value) > _TIMESTAMP_MAX:
        return None
    return _normalize_text(value)


@functools.lru_cache(maxsize=4096)
def _normalize_text(value: str) -> str | None:
    parsed = _parse_timestamp_text(value)
    return _iso(parsed) if parsed is not None else None


@functools.lru_cache(maxsize=64)
def _source_prefix(source: str) -> str:
    return base64.b64encode(source.encode()).decode()


def _row_id(source: str, stix_id: str) -> str:
    """Sentinel's own key: base64 of the source, ``---``, then an opaque per-object part."""
    return f"{_source_prefix(source)}---{_uuid5(_ROW_ID_NAMESPACE_BYTES, stix_id)}"


def _uuid5(namespace: bytes, name: str) -> str:
    """``str(uuid.uuid5(namespace, name))`` without building the UUID object (every row)."""
    raw = bytearray(hashlib.sha1(namespace + name.encode(), usedforsecurity=False).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50
    raw[8] = (raw[8] & 0x3F) | 0x80
    x = raw.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def _bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _unverified_identity(request: web.Request) -> str | None:
    token = _bearer(request)
    claims = decode_unverified(token) if token else None
    if claims is None:
        return None
    identity = claims.get("appid") or claims.get("azp") or claims.get("oid")
    return str(identity) if identity else None


def _arm_auth_error(problem: TokenProblem | None, aud: str) -> tuple[str, str]:
    if problem is None:
        return (
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing.",
        )
    if problem in (TokenProblem.EXPIRED, TokenProblem.REVOKED):
        now = datetime.now(UTC).strftime("%m/%d/%Y %H:%M:%S")
        return (
            "ExpiredAuthenticationToken",
            f"The access token expiry UTC time is earlier than current UTC time '{now}'.",
        )
    if problem is TokenProblem.WRONG_AUDIENCE:
        allowed = ",".join(f"'{a}'" for a in sorted(MANAGEMENT_AUDIENCES))
        return (
            "InvalidAuthenticationTokenAudience",
            f"The access token has been obtained for wrong audience or resource '{aud}'. It "
            f"should exactly match with one of the allowed audiences {allowed}.",
        )
    return "InvalidAuthenticationToken", "The access token is invalid."


def _throttled(retry_after: int) -> web.Response:
    """The documented 429 body, plus the ``Retry-After`` APIM's rate-limit policy adds."""
    return _json(
        {
            "statusCode": 429,
            "message": f"Rate limit is exceeded. Try again in {retry_after} seconds.",
        },
        status=429,
        headers={"Retry-After": str(retry_after)},
    )


def _json(obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(obj), status=status, content_type="application/json", headers=headers
    )
