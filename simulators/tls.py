"""A throw-away certificate authority minted at start-up, so the simulators serve real TLS.

Clients trust it through ``SSL_CERT_FILE`` (our own clients and azure-identity's async
transport) exactly as production trusts a corporate CA: verification is never switched off.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class SimulatorCA:
    """The CA's PEM file (give it to clients) and a server context for every simulator."""

    ca_path: Path
    _ca: trustme.CA

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ca.issue_cert(*HOSTS).configure_cert(context)
        return context


def mint_ca(directory: Path) -> SimulatorCA:
    """Mint a CA and write its certificate to ``directory/ca.pem``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="mati2sentinel simulators")
    ca_path = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    return SimulatorCA(ca_path=ca_path, _ca=ca)
