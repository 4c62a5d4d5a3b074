"""The Entra ID simulator, driven by the real azure-identity code paths over real TLS.

If these pass, the product's credential wiring (authority host, CA trust, scopes) is tested
against the same client code that runs in production, not against a stub credential.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.core.pipeline.transport import AioHttpTransport
from azure.identity import ClientSecretCredential as SyncClientSecretCredential
from azure.identity.aio import ClientSecretCredential, WorkloadIdentityCredential

from simulators.entra import EntraSimulator
from simulators.faults import FaultKind
from simulators.tls import SimulatorCA
from simulators.tokens import TokenError, TokenMinter, TokenProblem

TENANT = "00000000-0000-0000-0000-0000000000aa"
CLIENT = "11111111-1111-1111-1111-111111111111"
SECRET = "s3cr3t~value"
FEDERATED = "22222222-2222-2222-2222-222222222222"
MANAGEMENT_SCOPE = "https://management.azure.com/.default"
MANAGEMENT = ("https://management.azure.com",)


@pytest.fixture
async def entra(server_ssl: ssl.SSLContext, minter: TokenMinter) -> AsyncIterator[EntraSimulator]:
    sim = EntraSimulator(server_ssl, minter=minter, tenant_id=TENANT)
    sim.add_client(CLIENT, SECRET)
    sim.add_federated_client(FEDERATED)
    async with sim:
        yield sim


def _transport(session: aiohttp.ClientSession) -> AioHttpTransport:
    return AioHttpTransport(session=session, session_owner=False)


async def _post_token(
    session: aiohttp.ClientSession,
    entra: EntraSimulator,
    form: dict[str, str],
    *,
    tenant: str = TENANT,
    path: str = "oauth2/v2.0/token",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    async with session.post(f"{entra.url}/{tenant}/{path}", data=form, headers=headers) as resp:
        return resp.status, await resp.json()


def _form(**overrides: str) -> dict[str, str]:
    form = {
        "client_id": CLIENT,
        "client_secret": SECRET,
        "grant_type": "client_credentials",
        "scope": MANAGEMENT_SCOPE,
    }
    form.update(overrides)
    return {k: v for k, v in form.items() if v != "<omit>"}


async def test_async_client_secret_credential_gets_a_management_token(
    entra: EntraSimulator, session: aiohttp.ClientSession, minter: TokenMinter
) -> None:
    async with ClientSecretCredential(
        TENANT, CLIENT, SECRET, authority=entra.url, transport=_transport(session)
    ) as credential:
        token = await credential.get_token(MANAGEMENT_SCOPE)
        again = await credential.get_token(MANAGEMENT_SCOPE)

    claims = minter.validate(token.token, MANAGEMENT)
    assert claims.aud == "https://management.azure.com"
    assert claims.appid == CLIENT
    assert claims.tid == TENANT
    assert claims.iss == f"{entra.url}/{TENANT}/v2.0"
    assert token.expires_on == pytest.approx(time.time() + 3599, abs=5)
    assert again.token == token.token  # cached: one request only
    assert len(entra.tokens_issued) == 1
    (request,) = entra.recorder.of("token")
    form = dict(x.split("=", 1) for x in request.body.decode().split("&"))
    assert form["grant_type"] == "client_credentials"
    assert "client_info" not in form  # the async path is azure-identity's own AadClient


async def test_bad_secret_raises_client_authentication_error(
    entra: EntraSimulator, session: aiohttp.ClientSession
) -> None:
    async with ClientSecretCredential(
        TENANT, CLIENT, "wrong", authority=entra.url, transport=_transport(session)
    ) as credential:
        with pytest.raises(ClientAuthenticationError, match="AADSTS7000215"):
            await credential.get_token(MANAGEMENT_SCOPE)
    status, body = await _post_token(session, entra, _form(client_secret="wrong"))
    assert status == 401
    assert body["error"] == "invalid_client"
    assert body["error_codes"] == [7000215]
    assert body["error_description"].startswith("AADSTS7000215: ")
    assert {"trace_id", "correlation_id", "timestamp"} <= body.keys()


def _workload_credential(
    entra: EntraSimulator, session: aiohttp.ClientSession, tmp_path: Path, assertion: str
) -> WorkloadIdentityCredential:
    """What a pod builds: the credential reading the service-account token the cluster
    projected into a file."""
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(assertion)
    return WorkloadIdentityCredential(
        tenant_id=TENANT,
        client_id=FEDERATED,
        token_file_path=str(token_file),
        authority=entra.url,
        transport=_transport(session),
    )


async def test_workload_identity_credential_with_federated_token_file(
    entra: EntraSimulator,
    session: aiohttp.ClientSession,
    minter: TokenMinter,
    tmp_path: Path,
) -> None:
    assertion = entra.issue_federated_assertion(FEDERATED)
    async with _workload_credential(entra, session, tmp_path, assertion) as credential:
        token = await credential.get_token(MANAGEMENT_SCOPE)
    assert minter.validate(token.token, MANAGEMENT).appid == FEDERATED
    form = entra.recorder.of("token")[0].body.decode()
    assert (
        "client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer"
        in form
    )


async def test_workload_identity_rejects_a_foreign_subject(
    entra: EntraSimulator, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    assertion = entra.issue_federated_assertion(FEDERATED, subject="system:other")
    async with _workload_credential(entra, session, tmp_path, assertion) as credential:
        with pytest.raises(ClientAuthenticationError, match="AADSTS700213"):
            await credential.get_token(MANAGEMENT_SCOPE)


async def test_sync_msal_path_discovers_and_gets_a_token(
    entra: EntraSimulator, sim_ca: SimulatorCA, minter: TokenMinter
) -> None:
    credential = SyncClientSecretCredential(
        TENANT,
        CLIENT,
        SECRET,
        authority=entra.url,
        disable_instance_discovery=True,
        connection_verify=str(sim_ca.ca_path),
    )
    with credential:
        token = await asyncio.to_thread(credential.get_token, MANAGEMENT_SCOPE)
    assert minter.validate(token.token, MANAGEMENT).appid == CLIENT
    assert [r.route for r in entra.recorder.requests] == ["openid_configuration", "token"]


async def test_openid_configuration_points_at_the_simulator(
    entra: EntraSimulator, session: aiohttp.ClientSession
) -> None:
    url = f"{entra.url}/{TENANT}/v2.0/.well-known/openid-configuration"
    async with session.get(url) as resp:
        doc = await resp.json()
    assert doc["token_endpoint"] == f"{entra.url}/{TENANT}/oauth2/v2.0/token"
    assert doc["authorization_endpoint"].startswith(f"{entra.url}/{TENANT}/")
    assert doc["issuer"] == f"{entra.url}/{TENANT}/v2.0"


async def test_expired_token_fault_issues_a_dead_token(
    entra: EntraSimulator, session: aiohttp.ClientSession, minter: TokenMinter
) -> None:
    entra.faults.inject(FaultKind.EXPIRED_TOKEN, route="token")
    async with ClientSecretCredential(
        TENANT, CLIENT, SECRET, authority=entra.url, transport=_transport(session)
    ) as credential:
        token = await credential.get_token(MANAGEMENT_SCOPE)
    with pytest.raises(TokenError) as caught:
        minter.validate(token.token, MANAGEMENT)
    assert caught.value.problem is TokenProblem.EXPIRED
    assert entra.tokens_issued[0].already_expired
    status, body = await _post_token(session, entra, _form())  # the fault is used up
    assert status == 200
    assert minter.validate(body["access_token"], MANAGEMENT).appid == CLIENT


@pytest.mark.parametrize(
    ("form", "tenant", "status", "error", "code"),
    [
        (_form(client_id="99999999-9999-9999-9999-999999999999"), TENANT, 400,
         "unauthorized_client", 700016),
        (_form(scope="https://management.azure.com/user_impersonation"), TENANT, 400,
         "invalid_scope", 70011),
        (_form(scope=f"{MANAGEMENT_SCOPE} https://api.loganalytics.io/.default"), TENANT, 400,
         "invalid_scope", 70011),
        (_form(scope="https://127.0.0.1:8443/.default"), TENANT, 400, "invalid_resource", 500011),
        (_form(grant_type="<omit>"), TENANT, 400, "invalid_request", 900144),
        (_form(grant_type="password"), TENANT, 400, "unsupported_grant_type", 70003),
        (_form(scope="<omit>"), TENANT, 400, "invalid_request", 900144),
        (_form(client_secret="<omit>"), TENANT, 401, "invalid_client", 7000218),
        (_form(), "contoso.example", 400, "invalid_request", 90002),
    ],
)  # fmt: skip
async def test_aadsts_errors(
    entra: EntraSimulator,
    session: aiohttp.ClientSession,
    form: dict[str, str],
    tenant: str,
    status: int,
    error: str,
    code: int,
) -> None:
    got_status, body = await _post_token(
        session, entra, form, tenant=tenant, headers={"client-request-id": "corr-1"}
    )
    assert (got_status, body["error"], body["error_codes"]) == (status, error, [code])
    assert body["error_description"].startswith(f"AADSTS{code}: ")
    assert body["correlation_id"] == "corr-1"
    assert "access_token" not in body


async def test_http_basic_client_authentication(
    entra: EntraSimulator, session: aiohttp.ClientSession, minter: TokenMinter
) -> None:
    basic = base64.b64encode(f"{CLIENT}:{SECRET.replace('~', '%7E')}".encode()).decode()
    status, body = await _post_token(
        session,
        entra,
        _form(client_id="<omit>", client_secret="<omit>"),
        headers={"Authorization": f"Basic {basic}"},
    )
    assert status == 200, body
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == body["ext_expires_in"] == 3599
    assert minter.validate(body["access_token"], MANAGEMENT).appid == CLIENT


async def test_v1_endpoint_takes_resource_and_answers_strings(
    entra: EntraSimulator, session: aiohttp.ClientSession, minter: TokenMinter
) -> None:
    form = _form(scope="<omit>", resource="https://management.azure.com/", client_info="1")
    status, body = await _post_token(session, entra, form, path="oauth2/token")
    assert status == 200, body
    assert body["expires_in"] == "3599"
    assert int(body["expires_on"]) == pytest.approx(time.time() + 3599, abs=5)
    claims = minter.validate(body["access_token"], ["https://management.azure.com/"])
    assert claims.raw["ver"] == "1.0"


async def _post_raw(
    session: aiohttp.ClientSession, entra: EntraSimulator
) -> tuple[int, str, dict[str, str], bytes]:
    async with session.post(f"{entra.url}/{TENANT}/oauth2/v2.0/token", data=_form()) as resp:
        return resp.status, resp.content_type, dict(resp.headers), await resp.read()


def _assert_oauth_error(body: bytes, error: str, code: int) -> None:
    """The envelope Entra uses for every error, refusals and outages alike."""
    data = orjson.loads(body)
    assert data["error"] == error
    assert data["error_codes"] == [code]
    assert data["error_description"].startswith(f"AADSTS{code}: ")
    assert {"trace_id", "correlation_id", "timestamp"} <= data.keys()


async def test_throttling_is_an_oauth_error_with_retry_after(
    entra: EntraSimulator, session: aiohttp.ClientSession
) -> None:
    entra.faults.inject(FaultKind.RATE_LIMIT, route="token", retry_after_s=12)
    status, content_type, headers, body = await _post_raw(session, entra)
    assert (status, content_type, headers["Retry-After"]) == (429, "application/json", "12")
    _assert_oauth_error(body, "temporarily_unavailable", 90055)
    entra.faults.inject(FaultKind.RATE_LIMIT, route="token")
    status, _, headers, body = await _post_raw(session, entra)
    assert status == 429
    assert "Retry-After" not in headers
    _assert_oauth_error(body, "temporarily_unavailable", 90055)


@pytest.mark.parametrize("status", [500, 503, 504])
async def test_an_outage_is_an_oauth_error(
    entra: EntraSimulator, session: aiohttp.ClientSession, status: int
) -> None:
    entra.faults.inject(FaultKind.SERVER_ERROR, route="token", status=status)
    got, content_type, _, body = await _post_raw(session, entra)
    assert (got, content_type) == (status, "application/json")
    _assert_oauth_error(body, "temporarily_unavailable", 90033)
    assert (await _post_token(session, entra, _form()))[0] == 200  # one request per fault


async def test_what_a_load_balancer_answers_is_not_oauth_shaped(
    entra: EntraSimulator, session: aiohttp.ClientSession
) -> None:
    entra.faults.inject(FaultKind.EMPTY_500, route="token")
    entra.faults.inject(FaultKind.GATEWAY_ERROR, route="token", status=502)
    assert (await _post_raw(session, entra))[::3] == (500, b"")
    status, content_type, _, body = await _post_raw(session, entra)
    assert (status, content_type) == (502, "text/html")
    assert b"<title>502 Bad Gateway</title>" in body


async def test_malformed_json_is_a_truncated_token_answer(
    entra: EntraSimulator, session: aiohttp.ClientSession
) -> None:
    entra.faults.inject(FaultKind.MALFORMED_JSON, route="token")
    status, content_type, _, body = await _post_raw(session, entra)
    assert (status, content_type) == (200, "application/json")
    assert body.startswith(b'{"token_type": "Bearer"')
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(body)
    assert entra.tokens_issued == []


async def test_timeout_and_reset_on_the_token_route(
    entra: EntraSimulator, session: aiohttp.ClientSession
) -> None:
    entra.faults.inject(FaultKind.TIMEOUT, route="token", delay_s=0.05)
    assert (await _post_raw(session, entra))[0] == 504  # held, then a gateway timeout
    entra.faults.inject(FaultKind.RESET, route="token")
    with pytest.raises(aiohttp.ClientConnectionError):  # a POST: aiohttp never re-sends it
        await _post_raw(session, entra)
    assert [r.fault for r in entra.recorder.of("token")] == [FaultKind.TIMEOUT, FaultKind.RESET]
    assert entra.tokens_issued == []


def test_minter_revocation_and_cut_off() -> None:
    minter = TokenMinter()
    issued = time.time() - 10

    def token() -> str:
        return minter.mint_access_token(
            audience=MANAGEMENT[0], client_id=CLIENT, tenant_id=TENANT, issuer="i", now=issued
        )

    first, second = token(), token()
    minter.revoke(first)
    with pytest.raises(TokenError) as caught:
        minter.validate(first, MANAGEMENT)
    assert caught.value.problem is TokenProblem.REVOKED
    assert minter.validate(second, MANAGEMENT).appid == CLIENT
    with pytest.raises(TokenError) as caught:
        minter.validate(second, ["https://api.loganalytics.io"])
    assert caught.value.problem is TokenProblem.WRONG_AUDIENCE
    minter.invalidate_issued_before(time.time())
    with pytest.raises(TokenError) as caught:
        minter.validate(second, MANAGEMENT)
    assert caught.value.problem is TokenProblem.REVOKED
