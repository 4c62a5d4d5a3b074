"""The world every Sentinel client test runs in: the Entra ID and Sentinel simulators over real
TLS, a session, the real azure-identity credentials, and a one-route peer for answers the
simulator never sends."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest
from aiohttp import web

from shared.adapters.credentials import TokenProvider, credential_factory
from shared.adapters.http import open_session
from shared.adapters.sentinel_client import SentinelApi, SentinelClient, UploadResult
from shared.core.secrets import Secret
from simulators.entra import EntraSimulator
from simulators.sentinel import SentinelSimulator
from simulators.tokens import TokenMinter
from tests.clients.peers import one_route

TENANT = "00000000-0000-4000-8000-0000000000aa"
CLIENT_ID = "00000000-0000-4000-8000-0000000000c1"
FEDERATED_CLIENT_ID = "00000000-0000-4000-8000-0000000000c2"
CLIENT_SECRET = "sim-client-secret-0123456789"
WORKSPACE = "00000000-0000-4000-8000-0000000000b0"
MISSING_PATTERN = "Error for Property=pattern: Required property is missing. Actual value: NULL."
ROUTES = {SentinelApi.STIX_OBJECTS: "stix_upload", SentinelApi.UPLOAD_INDICATORS: "legacy_upload"}
STIX_PATH = "/workspaces/{ws}/threat-intelligence-stix-objects:upload"


def indicator(n: int, **overrides: Any) -> dict[str, Any]:
    """A valid STIX 2.1 indicator, distinct per ``n``."""
    obj: dict[str, Any] = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--{uuid.uuid5(uuid.NAMESPACE_URL, f'test-{n}')}",
        "created": "2025-05-01T00:00:00.000Z",
        "modified": "2025-05-01T00:00:00.000Z",
        "name": f"10.0.0.{n}",
        "pattern": f"[ipv4-addr:value = '10.0.0.{n}']",
        "pattern_type": "stix",
        "valid_from": "2025-05-01T00:00:00.000Z",
        "valid_until": "2099-05-08T00:00:00.000Z",
        "confidence": 80,
    }
    obj.update(overrides)
    return obj


@contextlib.asynccontextmanager
async def world(
    server_ssl: ssl.SSLContext,
    client_ssl: ssl.SSLContext,
    *,
    api: SentinelApi = SentinelApi.STIX_OBJECTS,
    workspace_id: str = WORKSPACE,
    timeout_s: float = 10.0,
    federated_token_file: Path | None = None,
    **sentinel: Any,
) -> AsyncIterator[SimpleNamespace]:
    minter = TokenMinter()
    async with (
        EntraSimulator(server_ssl, minter=minter, tenant_id=TENANT) as entra,
        SentinelSimulator(server_ssl, minter=minter, workspace_id=WORKSPACE, **sentinel) as sen,
        open_session(client_ssl, timeout_s=timeout_s) as session,
    ):
        entra.add_client(CLIENT_ID, CLIENT_SECRET)
        entra.add_federated_client(FEDERATED_CLIENT_ID)
        if federated_token_file is not None:
            assertion = entra.issue_federated_assertion(FEDERATED_CLIENT_ID)
            await asyncio.to_thread(federated_token_file.write_text, assertion)
        factory = credential_factory(
            session=session,
            tenant_id=TENANT,
            client_id=FEDERATED_CLIENT_ID if federated_token_file else CLIENT_ID,
            authority_host=entra.url,
            client_secret=None if federated_token_file else Secret(CLIENT_SECRET),
            federated_token_file=federated_token_file,
        )
        tokens = TokenProvider(factory, redact=(Secret(CLIENT_SECRET),))
        try:
            yield SimpleNamespace(
                entra=entra,
                sentinel=sen,
                tokens=tokens,
                client=SentinelClient(
                    session, tokens, api=api, base_url=sen.url, workspace_id=workspace_id
                ),
            )
        finally:
            await tokens.aclose()


E = TypeVar("E", bound=BaseException)


async def upload_fails(
    w: SimpleNamespace, error: type[E], objects: list[dict[str, Any]] | None = None
) -> E:
    """The error uploading ``objects`` (one valid indicator unless told) ends in, for the test
    to examine."""
    with pytest.raises(error) as caught:
        await w.client.upload(objects or [indicator(0)])
    return caught.value


def issued(entra: EntraSimulator) -> list[str]:
    return [t.access_token for t in entra.tokens_issued]


def uploads(sentinel: SentinelSimulator, api: SentinelApi = SentinelApi.STIX_OBJECTS) -> list[Any]:
    return sentinel.recorder.of(ROUTES[api])


def assert_no_secret(exc: BaseException, *secrets: str) -> None:
    """Neither the error nor anything it chains to shows a secret in ``str`` or ``repr``."""
    seen: BaseException | None = exc
    while seen is not None:
        for text in (str(seen), repr(seen), repr(seen.args)):
            for secret in secrets:
                assert secret not in text, f"secret leaked in {type(seen).__name__}"
        seen = seen.__cause__ or seen.__context__


def assert_keeps_secrets(w: SimpleNamespace, exc: BaseException) -> None:
    """Neither the client secret nor any token Entra issued in ``w`` shows in the error."""
    assert_no_secret(exc, CLIENT_SECRET, *issued(w.entra))


class FixedTokens:
    """Hands out one made-up bearer token: for peers that do not check it."""

    TOKEN = "eyJ.fixed-bearer-token.sig"

    def __init__(self, token: str = TOKEN) -> None:
        self._token = token

    async def token(self, scope: str) -> str:
        return self._token

    async def refresh(self, scope: str) -> str:
        return self._token


async def upload_to_one_route(
    server_ssl: ssl.SSLContext,
    client_ssl: ssl.SSLContext,
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    objects: list[dict[str, Any]],
    *,
    token: str = FixedTokens.TOKEN,
) -> UploadResult:
    """Upload ``objects`` to a one-route server whose STIX upload answers with ``handler``."""
    async with (
        one_route(server_ssl, STIX_PATH, handler) as url,
        open_session(client_ssl) as session,
    ):
        client = SentinelClient(session, FixedTokens(token), base_url=url, workspace_id=WORKSPACE)
        return await client.upload(objects)
