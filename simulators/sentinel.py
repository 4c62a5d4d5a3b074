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
(documented as accepted, not indexed) are kept as they are. Revocation is final, as STIX 2.1
says (§3.2, ``revoked``): a record that would make a revoked id live again fails with its own
error, and ``revoked`` holds every id ever revoked.
"""

from __future__ import annotations

import asyncio
import math
import ssl
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from aiohttp import web

from simulators.faults import FAULT_ANSWERS, Fault, FaultAnswers, FaultKind, Handler, noting_status
from simulators.sentinel_api import (
    LEGACY,
    LEGACY_ROUTE,
    MANAGEMENT_AUDIENCES,
    STIX,
    STIX_ROUTE,
    UploadApi,
    check_request,
    fail,
    read_body,
    throttled,
    unauthorized,
)
from simulators.sentinel_store import ObjectStore
from simulators.sentinel_validation import property_error, validate_batch
from simulators.sentinel_workspace import DEFAULT_SOURCE, SentinelWorkspace
from simulators.server import SimServer, bearer_token, json_response
from simulators.tokens import Claims, TokenError, TokenMinter, TokenProblem, decode_unverified

#: What importers find here, beside the simulator: the route tests aim faults at, and the store.
__all__ = [
    "DEFAULT_SOURCE",
    "DEFAULT_WORKSPACE_ID",
    "ERROR_KEYS",
    "STIX_ROUTE",
    "LoggedRequest",
    "ObjectStore",
    "SentinelSimulator",
]

DEFAULT_WORKSPACE_ID: Final = "6f1d2c3b-4a59-4e6f-8a7b-9c0d1e2f3a4b"
ERROR_KEYS: Final = ("errorMessages", "validationErrorMessages")
_ARRIVAL: Final = web.RequestKey("sentinel.arrival", float)
_ADMITTED: Final = web.RequestKey("sentinel.admitted", bool)


#: Hears which objects one upload request stored (``SentinelSimulator.upload_listeners``).
UploadListener = Callable[[web.Request, list[dict[str, Any]]], None]


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


class SentinelSimulator(SimServer, SentinelWorkspace):
    """Both upload APIs for one workspace, with the quota, validation and storage of §6;
    what the workspace holds, and the hooks that change it, are ``SentinelWorkspace``'s."""

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
        SentinelWorkspace.__init__(self, workspace_id)
        self.request_log: list[LoggedRequest] = []
        #: Told of the objects each upload request stored, as stored (the chaos harness keeps
        #: its own ledger of uploads per object version from them).
        self.upload_listeners: list[UploadListener] = []
        self._admitted: defaultdict[str, deque[float]] = defaultdict(deque)
        SimServer.__init__(self, ssl_context, host=host, port=port)
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

    def reset(self) -> None:
        """Forget everything stored, logged and counted (benchmarks reuse one server)."""
        self.clear_tables()
        self.request_log.clear()
        self._admitted.clear()

    # -- request flow ------------------------------------------------------------------------

    def _request_log_middleware(self) -> Any:
        routes = {STIX_ROUTE, LEGACY_ROUTE}

        @web.middleware
        async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            route = request.match_info.route.name
            if route not in routes:
                return await handler(request)
            request[_ARRIVAL] = self.clock()

            def note(status: int | None) -> None:
                self.request_log.append(
                    LoggedRequest(
                        identity=_unverified_identity(request),
                        at=request[_ARRIVAL],
                        route=route,
                        status=status,
                        admitted=bool(request.get(_ADMITTED, False)),
                    )
                )

            return await noting_status(request, handler, note)

        return middleware

    async def _stix_upload(self, request: web.Request) -> web.Response:
        return await self._upload(request, STIX)

    async def _legacy_upload(self, request: web.Request) -> web.Response:
        return await self._upload(request, LEGACY)

    async def _upload(self, request: web.Request, api: UploadApi) -> web.Response:
        """Auth, quota, api-version, workspace, body, records: the order a gateway checks."""
        claims = self._authorize(request, api)
        if isinstance(claims, web.Response):
            return claims
        if self.faults.take(api.route, frozenset({FaultKind.EXPIRED_TOKEN})) is not None:
            self.minter.revoke(bearer_token(request) or "")
            return unauthorized(api, TokenProblem.EXPIRED, "")
        retry_after = self._admit(claims.identity, request.get(_ARRIVAL, self.clock()))
        if retry_after is not None:
            return throttled(retry_after)
        request[_ADMITTED] = True
        problem = check_request(request, api, self.workspace_id)
        if problem is not None:
            return problem
        body = await read_body(request, api, self.max_objects)
        if isinstance(body, web.Response):
            return body
        source, objects = body
        if self.upload_latency_s > 0:
            await asyncio.sleep(self.upload_latency_s)
        refusal = self.faults.take(api.route, _REFUSALS)
        if refusal is not None:
            return self._refuse(api, objects, refusal)
        partial = self.faults.take(api.route, frozenset({FaultKind.PARTIAL_ERRORS}))
        errors = validate_batch(objects, legacy=api.legacy)
        _apply_partial_fault(errors, objects, partial)
        stored: list[dict[str, Any]] = []
        for index, obj in enumerate(objects):
            if index in errors:
                continue
            refused = self._held_against(obj)
            if refused:
                errors[index] = refused
            else:
                self._accept(obj, source)
                stored.append(obj)
        for listener in self.upload_listeners:
            listener(request, stored)
        if not errors:
            return web.Response(status=200)
        listed = [
            {"recordIndex": index, self.error_key: messages}
            for index, messages in sorted(errors.items())
        ]
        if len(errors) == len(objects):
            message = f"None of the {len(objects)} objects in the request passed validation."
            return fail(api, 400, "InvalidStixObjects", message, {"errors": listed})
        return json_response({"errors": listed})

    def _held_against(self, obj: dict[str, Any]) -> list[str]:
        """Why what the workspace holds refuses a valid object: it was revoked (by an earlier
        request or record), or it is a relationship whose source or target the workspace does
        not hold (nor an earlier object of the same request): a strict workspace keeps a
        relationship only beside both its ends, so a client must send them first."""
        if obj["id"] in self.revoked and obj.get("revoked") is not True:
            return [UNREVOKING]
        if obj["type"] != "relationship":
            return []
        return [
            property_error(prop, DANGLING, obj.get(prop))
            for prop in ("source_ref", "target_ref")
            if obj.get(prop) not in self.store
        ]

    def _refuse(self, api: UploadApi, objects: list[Any], fault: Fault) -> web.Response:
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
                    named[index] = [
                        property_error("pattern", "The pattern could not be parsed", value)
                    ]
            message = f"{len(named)} of the {len(objects)} objects failed validation; none stored."
        listed = [
            {"recordIndex": index, self.error_key: messages}
            for index, messages in sorted(named.items())
        ]
        extra = {"errors": listed} if listed else None
        return fail(api, 400, "InvalidStixObjects", message, extra)

    def _authorize(self, request: web.Request, api: UploadApi) -> Claims | web.Response:
        token = bearer_token(request)
        if token is None:
            return unauthorized(api, None, "")
        try:
            return self.minter.validate(token, MANAGEMENT_AUDIENCES)
        except TokenError as exc:
            aud = exc.claims.get("aud")
            return unauthorized(api, exc.problem, str(aud))

    def _admit(self, identity: str, now: float) -> int | None:
        """Take a quota slot, or say in how many whole seconds the oldest one frees."""
        slots = self._admitted[identity]
        while slots and slots[0] <= now - self.window_s:
            slots.popleft()
        if len(slots) >= self.requests_per_minute:
            return max(1, math.ceil(slots[0] + self.window_s - now))
        slots.append(now)
        return None

    # -- control route -----------------------------------------------------------------------

    async def _sim_workspace(self, request: web.Request) -> web.Response:
        """What the simulated workspace holds (``make demo`` prints it at the end)."""
        return json_response(
            {
                "workspace_id": self.workspace_id,
                "objects": len(self.store),
                "indicator_rows": len(self.rows),
                "object_rows": len(self.object_rows),
                "requests": len(self.request_log),
                "max_requests_in_any_window": self.max_requests_in_any_window(),
            }
        )


#: The error of a record that would un-revoke an indicator (the wording is ours: the
#: documentation does not say how Sentinel answers one).
UNREVOKING: Final = property_error(
    "revoked", "A revoked object cannot be un-revoked; publish a new object instead", False
)
DANGLING: Final = "The referenced object does not exist in the workspace"
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
                property_error(
                    "id", "The object could not be ingested, please retry later", stix_id
                )
            ]


def _unverified_identity(request: web.Request) -> str | None:
    token = bearer_token(request)
    claims = decode_unverified(token) if token else None
    if claims is None:
        return None
    identity = claims.get("appid") or claims.get("azp") or claims.get("oid")
    return str(identity) if identity else None
