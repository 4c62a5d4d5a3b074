"""A Microsoft Entra ID authority for the client-credentials grant, faithful enough that the
real azure-identity code paths (async ``AadClient``, sync MSAL with OIDC discovery, workload
identity) run against it unchanged. Shapes follow ``specs/sentinel-and-entra.md`` §5.

Why a server and not a fake credential: the product's credential wiring (authority host, TLS
trust, scope strings, token caching, error translation) is exactly what breaks in production,
and only the real client libraries talking to a real HTTPS endpoint exercise it.
"""

from __future__ import annotations

import ssl
import time
import urllib.parse
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web

from simulators.entra_errors import (
    EntraError,
    assertion_error,
    missing_credential,
    required,
    resource_not_found,
)
from simulators.faults import FAULT_ANSWERS, Fault, FaultAnswers, FaultKind, retry_after_header
from simulators.server import SimServer, basic_credentials, json_response
from simulators.tokens import TokenError, TokenMinter

#: The resources a fresh simulated tenant knows (``<resource>/.default`` scopes). Entra refuses
#: a scope for a resource it has no service principal for (AADSTS500011); the classic way to hit
#: that is letting an SDK derive the scope from a fake endpoint's host name.
DEFAULT_RESOURCES = frozenset(
    {
        "https://management.azure.com",
        "https://management.azure.com/",
        "https://management.core.windows.net",
        "https://management.core.windows.net/",
        "https://api.loganalytics.io",
        "https://api.loganalytics.io/",
        "https://api.loganalytics.azure.com",
        "https://api.loganalytics.azure.com/",
    }
)

#: What AKS workload identity projects into pods by default.
DEFAULT_FEDERATION_ISSUER = "https://oidc.prod-aks.azure.com/00000000-0000-0000-0000-0000000000bb/"
DEFAULT_FEDERATION_SUBJECT = "system:serviceaccount:mati2sentinel:mati2sentinel"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass(frozen=True)
class IssuedToken:
    """One token the authority handed out (tests assert on audiences and counts)."""

    client_id: str
    audience: str
    access_token: str
    expires_at: int
    already_expired: bool = False


@dataclass(frozen=True)
class _FederatedClient:
    audience: str
    issuer: str
    subject: str


class EntraSimulator(SimServer):
    """Token endpoint (v2, and v1 with ``resource=``) plus OIDC metadata for one tenant.

    ``url`` is the authority host to give azure-identity (``authority=``). Every token is minted
    by the shared ``minter``, so the Sentinel and Log Analytics simulators accept exactly what
    this authority issued.
    """

    name = "entra"

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        *,
        minter: TokenMinter,
        tenant_id: str = "00000000-0000-0000-0000-0000000000aa",
        token_ttl_s: int = 3599,
        resources: frozenset[str] = DEFAULT_RESOURCES,
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        self.minter = minter
        self.tenant_id = tenant_id
        self.token_ttl_s = token_ttl_s
        self.resources = set(resources)
        self.tokens_issued: list[IssuedToken] = []
        self._secrets: dict[str, str] = {}
        self._federated: dict[str, _FederatedClient] = {}
        super().__init__(ssl_context, host=host, port=port)
        self.app[FAULT_ANSWERS] = _EntraFaultAnswers(self)

    def routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/{tenant}/oauth2/v2.0/token", self._token_v2, name="token")
        router.add_post("/{tenant}/oauth2/token", self._token_v1, name="token_v1")
        router.add_get(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            self._openid_configuration,
            name="openid_configuration",
        )

    # -- registration ------------------------------------------------------------------------

    def add_client(self, client_id: str, secret: str) -> None:
        """Register an application that authenticates with a client secret."""
        self._secrets[client_id] = secret

    def add_federated_client(
        self,
        client_id: str,
        assertion_audience: str = "api://AzureADTokenExchange",
        *,
        issuer: str = DEFAULT_FEDERATION_ISSUER,
        subject: str = DEFAULT_FEDERATION_SUBJECT,
    ) -> None:
        """Register an application with a federated identity credential (workload identity).

        Like the real record, it trusts one (issuer, subject, audience) triple.
        """
        self._federated[client_id] = _FederatedClient(assertion_audience, issuer, subject)

    def issue_federated_assertion(
        self,
        client_id: str,
        *,
        ttl_s: int = 3600,
        audience: str | None = None,
        subject: str | None = None,
    ) -> str:
        """The service-account token the cluster would project into the pod's token file.

        Signed by the shared minter, which plays the cluster's OIDC issuer. ``audience`` and
        ``subject`` override the registered ones so tests can present a mismatching assertion.
        """
        fed = self._federated[client_id]
        now = int(time.time())
        return self.minter.mint(
            {
                "aud": [audience if audience is not None else fed.audience],
                "iss": fed.issuer,
                "sub": subject if subject is not None else fed.subject,
                "iat": now,
                "nbf": now,
                "exp": now + ttl_s,
                "kubernetes.io": {"namespace": "mati2sentinel"},
            }
        )

    # -- routes ------------------------------------------------------------------------------

    async def _openid_configuration(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        try:
            self._check_tenant(tenant)
        except EntraError as exc:
            return self._error(request, exc)
        base = f"{self.url}/{tenant}"
        doc = {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{base}/v2.0",
            "request_uri_parameter_supported": False,
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
        }
        return _json(doc)

    async def _token_v2(self, request: web.Request) -> web.Response:
        try:
            form = await self._read_form(request)
            scope = required(form, "scope")
            audience = self._audience_from_scope(scope)
            client_id = await self._authenticate(request, form)
            issued = self._issue(request, client_id, audience, issuer_suffix="v2.0")
        except EntraError as exc:
            return self._error(request, exc)
        ttl = max(issued.expires_at - int(time.time()), 1)
        return _json(
            {
                "token_type": "Bearer",
                "expires_in": ttl,
                "ext_expires_in": ttl,
                "access_token": issued.access_token,
            }
        )

    async def _token_v1(self, request: web.Request) -> web.Response:
        """The v1 endpoint: ``resource=`` instead of ``scope``, and numbers sent as strings."""
        try:
            form = await self._read_form(request)
            resource = required(form, "resource")
            if resource not in self.resources:
                raise resource_not_found(resource, self.tenant_id)
            client_id = await self._authenticate(request, form)
            issued = self._issue(request, client_id, resource, issuer_suffix="")
        except EntraError as exc:
            return self._error(request, exc)
        now = int(time.time())
        ttl = max(issued.expires_at - now, 1)
        return _json(
            {
                "token_type": "Bearer",
                "expires_in": str(ttl),
                "ext_expires_in": str(ttl),
                "expires_on": str(issued.expires_at),
                "not_before": str(now),
                "resource": resource,
                "access_token": issued.access_token,
            }
        )

    # -- the grant ---------------------------------------------------------------------------

    async def _read_form(self, request: web.Request) -> dict[str, str]:
        """Tenant, then the form: Entra only reads ``application/x-www-form-urlencoded``."""
        self._check_tenant(request.match_info["tenant"])
        form: dict[str, str] = {}
        if request.content_type == "application/x-www-form-urlencoded":
            text = (await request.read()).decode("utf-8", errors="replace")
            form = dict(urllib.parse.parse_qsl(text, keep_blank_values=True))
        grant_type = required(form, "grant_type")
        if grant_type != "client_credentials":
            raise EntraError(
                400,
                "unsupported_grant_type",
                70003,
                f"The app requested an unsupported grant type '{grant_type}'.",
            )
        basic = basic_credentials(request.headers.get("Authorization", ""))
        if basic is not None:
            # client_secret_basic: both halves are form-urlencoded before base64 (RFC 6749).
            form.setdefault("client_id", urllib.parse.unquote_plus(basic[0]))
            form.setdefault("client_secret", urllib.parse.unquote_plus(basic[1]))
        required(form, "client_id")
        return form

    def _check_tenant(self, tenant: str) -> None:
        if tenant.lower() != self.tenant_id.lower():
            raise EntraError(
                400,
                "invalid_request",
                90002,
                f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID "
                "and are signing into the correct cloud.",
            )

    def _audience_from_scope(self, scope: str) -> str:
        """``<resource>/.default``, one resource only, as the client-credentials flow demands."""
        scopes = scope.split()
        if len(scopes) != 1 or not scopes[0].endswith("/.default"):
            raise EntraError(
                400,
                "invalid_scope",
                70011,
                f"The provided request must include a 'scope' input parameter. The provided value "
                f"for the input parameter 'scope' is not valid. The scope {scope} is not valid. "
                "Client credential flows must have a single scope value with /.default suffixed "
                "to the resource identifier (application ID URI).",
            )
        resource = scopes[0].removesuffix("/.default")
        if resource not in self.resources:
            raise resource_not_found(resource, self.tenant_id)
        return resource

    async def _authenticate(self, request: web.Request, form: Mapping[str, str]) -> str:
        client_id = form["client_id"]
        if client_id in self._secrets:
            secret = form.get("client_secret")
            if not secret:
                raise missing_credential()
            if secret != self._secrets[client_id]:
                raise EntraError(
                    401,
                    "invalid_client",
                    7000215,
                    "Invalid client secret provided. Ensure the secret being sent in the request "
                    "is the client secret value, not the client secret ID, for a secret added to "
                    f"app '{client_id}'.",
                )
            return client_id
        if client_id in self._federated:
            self._check_assertion(client_id, form)
            return client_id
        raise EntraError(
            400,
            "unauthorized_client",
            700016,
            f"Application with identifier '{client_id}' was not found in the directory "
            f"'{self.tenant_id}'. This can happen if the application has not been installed "
            "by the administrator of the tenant or consented to by any user in the tenant.",
        )

    def _check_assertion(self, client_id: str, form: Mapping[str, str]) -> None:
        """Validate a workload-identity assertion against the federated credential record."""
        fed = self._federated[client_id]
        assertion = form.get("client_assertion")
        if not assertion or form.get("client_assertion_type") != JWT_BEARER:
            raise missing_credential()
        try:
            claims = self.minter.validate(assertion, [fed.audience]).raw
        except TokenError as exc:
            raise assertion_error(exc) from exc
        if claims.get("iss") != fed.issuer:
            raise EntraError(
                400,
                "invalid_client",
                700211,
                "No matching federated identity record found for presented assertion issuer "
                f"'{claims.get('iss')}'.",
            )
        if claims.get("sub") != fed.subject:
            raise EntraError(
                400,
                "invalid_client",
                700213,
                "No matching federated identity record found for presented assertion subject "
                f"'{claims.get('sub')}'.",
            )

    def _issue(
        self, request: web.Request, client_id: str, audience: str, *, issuer_suffix: str
    ) -> IssuedToken:
        """Mint the token; the EXPIRED_TOKEN fault backdates it so it is dead on arrival."""
        route = request.match_info.route.name
        expired = self.faults.take(route, frozenset({FaultKind.EXPIRED_TOKEN})) is not None
        now = time.time()
        minted_at = now - self.token_ttl_s - 60 if expired else now
        issuer = f"{self.url}/{self.tenant_id}/{issuer_suffix}".rstrip("/")
        if not issuer_suffix:
            issuer += "/"
        token = self.minter.mint_access_token(
            audience=audience,
            client_id=client_id,
            tenant_id=self.tenant_id,
            issuer=issuer,
            ttl_s=self.token_ttl_s,
            now=minted_at,
            version="2.0" if issuer_suffix else "1.0",
        )
        issued = IssuedToken(
            client_id=client_id,
            audience=audience,
            access_token=token,
            expires_at=int(minted_at) + self.token_ttl_s,
            already_expired=expired,
        )
        self.tokens_issued.append(issued)
        return issued

    def _error(
        self, request: web.Request, exc: EntraError, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        trace_id = str(uuid.uuid4())
        correlation_id = (
            request.headers.get("client-request-id")
            or request.headers.get("x-ms-client-request-id")
            or str(uuid.uuid4())
        )
        timestamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        description = (
            f"AADSTS{exc.code}: {exc.message}\r\nTrace ID: {trace_id}\r\n"
            f"Correlation ID: {correlation_id}\r\nTimestamp: {timestamp}"
        )
        body = {
            "error": exc.error,
            "error_description": description,
            "error_codes": [exc.code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": f"{self.url}/error?code={exc.code}",
        }
        response = _json(body, status=exc.status)
        response.headers.update(headers or {})
        return response


class _EntraFaultAnswers(FaultAnswers):
    """Entra's own wording of throttling and outages: OAuth error bodies with AADSTS codes.

    Entra answers throttling and its own failures in the same envelope as a refusal, so a client
    cannot tell them apart by the ``error`` key's presence: only the status and the ``error``
    value (``temporarily_unavailable``) say "try later". The empty 500 and the gateway HTML page
    stay the shared, non-OAuth defaults, because the load balancers in front of Entra answer
    like that — and azure-identity then raises its error without any status.
    """

    def __init__(self, sim: EntraSimulator) -> None:
        # The start of a real token answer, cut inside the access token.
        super().__init__(
            b'{"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, '
            b'"access_token": "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1'
        )
        self._sim = sim

    def rate_limited(self, request: web.Request, fault: Fault) -> web.StreamResponse:
        error = EntraError(
            429,
            "temporarily_unavailable",
            90055,
            "TenantThrottlingError - There are too many incoming requests. Please try again later.",
        )
        return self._sim._error(request, error, retry_after_header(fault))

    def server_error(self, request: web.Request, fault: Fault) -> web.StreamResponse:
        error = EntraError(
            fault.status,
            "temporarily_unavailable",
            90033,
            "A transient error has occurred. Please try again.",
        )
        return self._sim._error(request, error)


#: Entra never lets a token response be cached by an intermediary.
_NO_STORE: Final = {"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"}


def _json(obj: Any, *, status: int = 200) -> web.Response:
    return json_response(obj, status=status, headers=_NO_STORE)
