"""The simulators together: one CA, settings that point the product at them, and the
standalone ``mati2sentinel simulate`` command."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import sys
from pathlib import Path

import aiohttp
import pytest

from harness.pipeline import MATI_EXTENSION, mati_properties
from shared.adapters.tls import client_context
from shared.core.fingerprint import EXTENSION_ID
from shared.core.settings import load_settings
from simulators.feed import Feed
from simulators.together import Simulators


async def test_environment_points_the_product_at_every_simulator(tmp_path: Path) -> None:
    async with Simulators(tmp_path, feed=Feed(count=10)) as sims:
        settings = load_settings(sims.environment())
        assert settings.mati_base_url == sims.mati.url
        assert settings.sentinel_base_url == sims.sentinel.url
        assert settings.log_analytics_base_url == sims.log_analytics.url
        assert settings.azure_authority_host == sims.entra.url
        assert settings.ssl_cert_file == sims.ca.ca_path
        context = client_context(settings.ssl_cert_file)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http:
            for server in sims.servers:
                async with http.get(f"{server.url}/_sim/requests") as response:
                    assert response.status == 200


async def test_system_store_alone_does_not_trust_the_simulators(tmp_path: Path) -> None:
    async with Simulators(tmp_path, feed=Feed(count=1)) as sims:
        context = client_context(None)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await http.get(f"{sims.mati.url}/_sim/requests")


def test_client_context_always_verifies(tmp_path: Path) -> None:
    context = client_context(None)
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname is True


async def test_python_m_simulators_serves_until_sigterm(tmp_path: Path) -> None:
    env_file = tmp_path / "sim.env"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulators",
        "--indicators",
        "50",
        "--state-dir",
        str(tmp_path / "state"),
        "--env-file",
        str(env_file),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ},
    )
    assert process.stdout is not None
    lines: list[str] = []
    while not lines or lines[-1] != "ready":
        raw = await asyncio.wait_for(process.stdout.readline(), timeout=20)
        assert raw, f"simulate exited early: {lines}"
        lines.append(raw.decode().strip())
    names = [line.split()[0] for line in lines[:-1]]
    assert names[:5] == ["MATI", "Entra", "Sentinel", "Log", "CA"]
    environment = dict(
        line.split("=", 1) for line in env_file.read_text().splitlines() if line.strip()
    )
    settings = load_settings(environment)
    context = client_context(settings.ssl_cert_file)
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http,
        http.get(f"{settings.mati_base_url}/_sim/requests") as response,
    ):
        assert response.status == 200
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), timeout=20) == 0


def test_the_checks_read_the_extension_the_product_writes() -> None:
    # The pipeline's checks spell the extension id out; it must be the product's.
    assert MATI_EXTENSION == EXTENSION_ID
    assert mati_properties({"extensions": {EXTENSION_ID: {"mati_id": "ipv4--1"}}}) == {
        "mati_id": "ipv4--1"
    }
    assert mati_properties({"x_mati_id": "ipv4--1"}) == {}
