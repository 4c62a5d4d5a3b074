"""All simulators together, wired to one CA and one token minter, as the demo and tests use them.

``Simulators.environment()`` gives the settings that point the product at them, so a service
started with that environment runs its production code paths unchanged.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Self

from simulators.entra import EntraSimulator
from simulators.feed import Feed
from simulators.loganalytics import LogAnalyticsSimulator
from simulators.mati import MatiSimulator
from simulators.sentinel import SentinelSimulator
from simulators.server import SimServer
from simulators.tls import SimulatorCA, mint_ca
from simulators.tokens import TokenMinter


@dataclass(frozen=True)
class SimulatorCredentials:
    """Made-up credentials the simulators accept; never real ones."""

    mati_api_key: str = "sim-mati-key"
    mati_api_secret: str = "sim-mati-secret"
    tenant_id: str = "00000000-0000-4000-8000-0000000000aa"
    client_id: str = "00000000-0000-4000-8000-0000000000c1"
    client_secret: str = "sim-client-secret"
    workspace_id: str = "00000000-0000-4000-8000-0000000000b0"


@dataclass
class SimulatedWorkspace:
    """One more destination: a workspace (Sentinel and Log Analytics of its own, with its own
    quota) and an app registration, in the main tenant's Entra or in a tenant of its own."""

    name: str
    credentials: SimulatorCredentials
    entra: EntraSimulator
    sentinel: SentinelSimulator
    log_analytics: LogAnalyticsSimulator
    #: Servers started for this workspace alone (a shared Entra is not among them).
    own: list[SimServer] = field(default_factory=list)

    @property
    def secret_variable(self) -> str:
        """The variable its block in a destinations file takes the client secret from."""
        return f"{self.name.upper().replace('-', '_')}_CLIENT_SECRET"

    def block(self) -> dict[str, Any]:
        """Its settings for a destinations file: every endpoint and identity, the secret by
        reference."""
        creds = self.credentials
        return {
            "AZURE_AUTHORITY_HOST": self.entra.url,
            "AZURE_TENANT_ID": creds.tenant_id,
            "AZURE_CLIENT_ID": creds.client_id,
            "AZURE_CLIENT_SECRET": {"env": self.secret_variable},
            "AZURE_WORKSPACE_ID": creds.workspace_id,
            "SENTINEL_BASE_URL": self.sentinel.url,
            "LOG_ANALYTICS_BASE_URL": self.log_analytics.url,
        }

    def rotate_secret(self) -> str:
        """Replace the app's client secret, as an admin revoking the old one does: Entra
        refuses the old one from now on (``AADSTS7000215``). Returns the new one."""
        self.credentials = replace(self.credentials, client_secret=secrets.token_urlsafe(18))
        self.entra.add_client(self.credentials.client_id, self.credentials.client_secret)
        return self.credentials.client_secret


class Simulators:
    """MATI, Entra ID, Sentinel and Log Analytics on loopback, over TLS from one fresh CA."""

    def __init__(
        self,
        state_dir: Path,
        *,
        feed: Feed,
        credentials: SimulatorCredentials | None = None,
        sentinel_requests_per_minute: int = 100,
        sentinel_window_s: float = 60.0,
    ) -> None:
        self.credentials = credentials or SimulatorCredentials()
        self.ca: SimulatorCA = mint_ca(state_dir)
        context = self.ca.server_context()
        creds = self.credentials
        self.minter = TokenMinter()
        self.entra = EntraSimulator(context, minter=self.minter, tenant_id=creds.tenant_id)
        self.entra.add_client(creds.client_id, creds.client_secret)
        self.sentinel = SentinelSimulator(
            context,
            minter=self.minter,
            workspace_id=creds.workspace_id,
            requests_per_minute=sentinel_requests_per_minute,
            window_s=sentinel_window_s,
        )
        self.log_analytics = LogAnalyticsSimulator(
            context, minter=self.minter, sentinel=self.sentinel
        )
        self.mati = MatiSimulator(
            context, feed=feed, api_key=creds.mati_api_key, api_secret=creds.mati_api_secret
        )
        self.workspaces: dict[str, SimulatedWorkspace] = {}

    async def add_workspace(
        self,
        name: str,
        *,
        own_tenant: bool = False,
        token_ttl_s: int = 3599,
        requests_per_minute: int = 100,
        window_s: float = 60.0,
    ) -> SimulatedWorkspace:
        """Start one more destination's workspace; ``own_tenant``: its app lives in another
        tenant, behind an Entra of its own (another cloud's authority host, say), whose tokens
        last ``token_ttl_s``."""
        context = self.ca.server_context()
        ids = {part: str(uuid.uuid5(uuid.NAMESPACE_URL, f"{name}/{part}")) for part in "tcw"}
        creds = SimulatorCredentials(
            tenant_id=ids["t"] if own_tenant else self.credentials.tenant_id,
            client_id=ids["c"],
            client_secret=secrets.token_urlsafe(18),
            workspace_id=ids["w"],
        )
        sentinel = SentinelSimulator(
            context,
            minter=self.minter,
            workspace_id=creds.workspace_id,
            requests_per_minute=requests_per_minute,
            window_s=window_s,
        )
        log_analytics = LogAnalyticsSimulator(context, minter=self.minter, sentinel=sentinel)
        own: list[SimServer] = [sentinel, log_analytics]
        entra = self.entra
        if own_tenant:
            entra = EntraSimulator(
                context, minter=self.minter, tenant_id=creds.tenant_id, token_ttl_s=token_ttl_s
            )
            own.insert(0, entra)
        entra.add_client(creds.client_id, creds.client_secret)
        workspace = SimulatedWorkspace(name, creds, entra, sentinel, log_analytics, own)
        for server in own:
            await server.start()
        self.workspaces[name] = workspace
        return workspace

    @property
    def servers(
        self,
    ) -> tuple[EntraSimulator, SentinelSimulator, LogAnalyticsSimulator, MatiSimulator]:
        return (self.entra, self.sentinel, self.log_analytics, self.mati)

    async def start(self) -> None:
        for server in self.servers:
            await server.start()

    async def stop(self) -> None:
        for workspace in self.workspaces.values():
            for server in reversed(workspace.own):
                await server.stop()
        for server in reversed(self.servers):
            await server.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def environment(self) -> dict[str, str]:
        """The product's settings that point every client at these simulators."""
        creds = self.credentials
        return {
            "MATI_BASE_URL": self.mati.url,
            "MATI_API_KEY": creds.mati_api_key,
            "MATI_API_SECRET": creds.mati_api_secret,
            "AZURE_AUTHORITY_HOST": self.entra.url,
            "AZURE_TENANT_ID": creds.tenant_id,
            "AZURE_CLIENT_ID": creds.client_id,
            "AZURE_CLIENT_SECRET": creds.client_secret,
            "AZURE_WORKSPACE_ID": creds.workspace_id,
            "SENTINEL_BASE_URL": self.sentinel.url,
            "LOG_ANALYTICS_BASE_URL": self.log_analytics.url,
            "SSL_CERT_FILE": str(self.ca.ca_path),
        }
