"""The two upload APIs as a client meets them: where each lives, which ``api-version``, what
its body holds, and how each words a refusal (specs/sentinel-and-entra.md §1, §2).

One simulator serves both, so everything that differs between them is here, keyed by
``UploadApi``: the legacy host answers in APIM's ``{"statusCode", "message"}``, the STIX one in
ARM's ``{"error": {"code", "message"}}`` plus an ``x-ms-error-code`` header.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from aiohttp import web

from simulators.server import json_response
from simulators.tokens import TokenProblem

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
RESERVED_SOURCE: Final = "microsoft sentinel"
MAX_SOURCE_LENGTH: Final = 256


@dataclass(frozen=True)
class UploadApi:
    """Where the two APIs differ in a request: its route, version, list key and error style."""

    route: str
    api_version: str
    list_key: str
    legacy: bool


STIX = UploadApi(STIX_ROUTE, STIX_API_VERSION, "stixobjects", legacy=False)
LEGACY = UploadApi(LEGACY_ROUTE, LEGACY_API_VERSION, "value", legacy=True)


def check_request(request: web.Request, api: UploadApi, workspace_id: str) -> web.Response | None:
    """The query string and the path: api-version first, then the workspace."""
    version = request.query.get("api-version")
    if version is None:
        return fail(
            api,
            400,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        )
    if version != api.api_version:
        return fail(
            api,
            400,
            "InvalidApiVersionParameter",
            f"The api-version '{version}' is invalid. "
            f"The supported versions are '{api.api_version}'.",
        )
    workspace = request.match_info["workspaceId"].strip("{}").lower()
    if workspace != workspace_id.lower():
        return fail(
            api,
            404,
            "WorkspaceNotFound",
            f"Workspace '{request.match_info['workspaceId']}' was not found.",
        )
    return None


async def read_body(
    request: web.Request, api: UploadApi, max_objects: int
) -> tuple[str, list[Any]] | web.Response:
    """The ``sourcesystem`` and the objects, or the 400 that refuses the whole request."""
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return fail(api, 400, "InvalidRequestBody", "The request body is not valid JSON.")
    if not isinstance(body, dict):
        return fail(api, 400, "InvalidRequestBody", "The request body must be a JSON object.")
    if api.legacy:
        body = {str(key).lower(): value for key, value in reversed(body.items())}
    source = body.get("sourcesystem")
    if not isinstance(source, str) or not source.strip():
        return fail(api, 400, "InvalidSourceSystem", "sourcesystem is required.")
    if source.strip().lower() == RESERVED_SOURCE:
        return fail(
            api,
            400,
            "InvalidSourceSystem",
            "sourcesystem cannot be 'Microsoft Sentinel': the name is reserved.",
        )
    if len(source) > MAX_SOURCE_LENGTH:
        return fail(
            api,
            400,
            "InvalidSourceSystem",
            f"sourcesystem cannot be longer than {MAX_SOURCE_LENGTH} characters.",
        )
    objects = body.get(api.list_key)
    if not isinstance(objects, list) or not objects:
        return fail(
            api,
            400,
            "InvalidRequestBody",
            f"'{api.list_key}' must be a non-empty array of STIX objects.",
        )
    if len(objects) > max_objects:
        return fail(
            api,
            400,
            "TooManyObjects",
            f"The request contains {len(objects)} objects; the maximum is "
            f"{max_objects} per request.",
        )
    return source, objects


def unauthorized(api: UploadApi, problem: TokenProblem | None, aud: str) -> web.Response:
    """401: APIM's fixed body on the legacy host, ARM's coded error on the new one."""
    if api.legacy:
        return json_response(
            {"statusCode": 401, "message": "Unauthorized. Access token is missing or invalid."},
            status=401,
        )
    code, message = _arm_auth_error(problem, aud)
    response = fail(api, 401, code, message)
    response.headers["WWW-Authenticate"] = (
        f'Bearer authorization_uri="https://login.microsoftonline.com/common", '
        f'error="invalid_token", error_description="{message}"'
    )
    return response


def fail(
    api: UploadApi,
    status: int,
    code: str,
    message: str,
    extra: Mapping[str, Any] | None = None,
) -> web.Response:
    """A refusal of the whole request, in ``api``'s own error envelope."""
    if api.legacy:
        return json_response(
            {"statusCode": status, "message": message, **(extra or {})}, status=status
        )
    body = {"error": {"code": code, "message": message}, **(extra or {})}
    response = json_response(body, status=status)
    response.headers["x-ms-error-code"] = code
    return response


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


def throttled(retry_after: int) -> web.Response:
    """The documented 429 body, plus the ``Retry-After`` APIM's rate-limit policy adds."""
    return json_response(
        {
            "statusCode": 429,
            "message": f"Rate limit is exceeded. Try again in {retry_after} seconds.",
        },
        status=429,
        headers={"Retry-After": str(retry_after)},
    )
