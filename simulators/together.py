"""All simulators together, wired to one CA and one token minter, as the demo and tests use them.

``Simulators.environment()`` gives the settings that point the product at them, so a service
started with that environment runs its production code paths unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Self

from simulators.entra import EntraSimulator
from simulators.feed import Feed
from simulators.loganalytics import LogAnalyticsSimulator
from simulators.mati import MatiSimulator
from simulators.sentinel import SentinelSimulator
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

    @property
    def servers(
        self,
    ) -> tuple[EntraSimulator, SentinelSimulator, LogAnalyticsSimulator, MatiSimulator]:
        return (self.entra, self.sentinel, self.log_analytics, self.mati)

    async def start(self) -> None:
        for server in self.servers:
            await server.start()

    async def stop(self) -> None:
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
