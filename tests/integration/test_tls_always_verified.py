"""TLS verification cannot be turned off: by no setting, and by no environment variable the
product or its libraries read.

Every peer here serves a certificate the product has no reason to trust: the simulators (MATI,
Entra ID, Log Analytics) with a CA of their own, a real Redis behind a TLS front with another.
The product runs as the operator runs it, a process, in an environment holding every switch
some TLS stack has been known to read as "don't verify" (``HOSTILE``); it must refuse each
peer before sending it anything, and accept the very same peer once told to trust its CA, so
the refusal is TLS's and nothing else's. What the environment cannot switch off, a setting
cannot either: a ``REDIS_URL`` whose query string weakens verification, and a Service Bus
connection string in plain-AMQP emulator mode to a host other than this one, are refused at
start-up in one line.

``SSL_CERT_FILE`` (and OpenSSL's ``SSL_CERT_DIR``, ``REQUESTS_CA_BUNDLE`` for requests) name
CAs to trust *as well*: choosing whom to trust is the operator's (a corporate proxy's CA), not a
way around verification, so a file of some other CA changes nothing here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from services.cli.redis_server import LocalRedis
from shared.adapters.redis_connect import connect
from shared.core.errors import ConfigError
from shared.core.settings import Service, load_settings
from simulators.feed import Feed
from simulators.tls import SimulatorCA, mint_ca
from simulators.together import Simulators
from tests.commands import CliResult, run_bare
from tests.helpers import assert_one_line, wait_for

#: Every environment switch known to turn verification off somewhere, or to move trust:
#: CPython's (distribution-patched) urllib default, requests' CA bundles (an empty one meant
#: "verify nothing" in old releases; the OTLP exporter uses requests), the OTLP exporter's own
#: certificate and "insecure" switches, azure-identity's token proxy (honoured only where a
#: credential enables it), and, in ``hostile``, OpenSSL's CA directory and key log (not
#: verification, but the session keys of every connection in a file).
HOSTILE: Mapping[str, str] = {
    "PYTHONHTTPSVERIFY": "0",
    "CURL_CA_BUNDLE": "",
    "REQUESTS_CA_BUNDLE": "",
    "OTEL_EXPORTER_OTLP_CERTIFICATE": "",
    "OTEL_EXPORTER_OTLP_INSECURE": "true",
    "AZURE_KUBERNETES_TOKEN_PROXY": "https://127.0.0.1:9",
    "AZURE_KUBERNETES_SNI_NAME": "localhost",
    "AIOHTTP_NO_EXTENSIONS": "1",
}
SB_KEY = "c2FzLWtleS1uZXZlci1wcmludGVk"


def hostile(tmp_path: Path) -> dict[str, str]:
    """``HOSTILE``, an empty ``SSL_CERT_DIR``, a key log, and ``SSL_CERT_FILE`` naming a fresh
    CA that signed none of the peers."""
    empty = tmp_path / "no-certs"
    empty.mkdir(exist_ok=True)
    return {
        **HOSTILE,
        "SSL_CERT_DIR": str(empty),
        "SSLKEYLOGFILE": str(tmp_path / "keys.log"),
        "SSL_CERT_FILE": str(mint_ca(tmp_path / "other-ca").ca_path),
    }


def invalid_setting(result: CliResult, *needles: str) -> str:
    """A start-up refusal as ``services.runtime`` states it: exit 2, the heading, and one line
    for the one bad value, holding every needle."""
    assert result.code == 2, result.output
    assert "Traceback" not in result.output, result.output
    heading, *problems = [line for line in result.stderr.splitlines() if line.strip()]
    assert heading == "mati2sentinel: invalid settings:", result.stderr
    (line,) = problems
    for needle in needles:
        assert needle in line, line
    return line


def session_keys(path: Path) -> list[str]:
    """The key lines of an OpenSSL key log (the file is created, with a comment, as soon as a
    context reads ``SSLKEYLOGFILE``; keys are written only per handshake)."""
    if not path.exists():
        return []
    return [line for line in path.read_text().splitlines() if line and not line.startswith("#")]


# ---- HTTPS peers: MATI, Entra ID, Log Analytics --------------------------------------------


@pytest.fixture
async def sims(tmp_path: Path) -> AsyncIterator[Simulators]:
    async with Simulators(tmp_path / "sims", feed=Feed(seed=5, count=30, days=3)) as together:
        yield together


@pytest.mark.parametrize(
    ("command", "peers"),
    [
        (("sync", "--once"), ("mati",)),
        (("reconcile", "--quiet"), ("entra", "loganalytics")),
    ],
)
async def test_https_peers_are_verified_whatever_the_environment_says(
    command: tuple[str, ...],
    peers: tuple[str, ...],
    sims: Simulators,
    redis_client: Redis,
    redis_server: LocalRedis,
    tmp_path: Path,
) -> None:
    env = {
        **sims.environment(),
        "REDIS_URL": redis_server.url,
        "MATI_REQUESTS_PER_SECOND": "20",
        **hostile(tmp_path),
    }
    servers = {server.name: server for server in sims.servers}

    refused = await run_bare(env, *command)
    assert refused.code != 0, refused.output
    assert "TlsVerificationFailed" in refused.output, refused.output
    assert "Traceback" not in refused.output
    # Refused at the handshake: no request (no credential, no token) reached any peer.
    assert not [s.name for s in sims.servers if s.recorder.requests]

    # The same peers, their CA trusted: the refusal above was the certificate's alone.
    trusted = await run_bare({**env, "SSL_CERT_FILE": str(sims.ca.ca_path)}, *command)
    assert "TlsVerificationFailed" not in trusted.output, trusted.output
    assert all(servers[name].recorder.requests for name in peers), trusted.output
    assert session_keys(tmp_path / "keys.log") == []


# ---- Redis over TLS ------------------------------------------------------------------------


class TlsFront:
    """TLS in front of a plain Redis on loopback, as a managed Redis terminates it: the bytes
    go through unchanged, so the product talks to a real Redis over real TLS whichever
    redis-server this machine has (not every build speaks TLS itself)."""

    def __init__(self, upstream: LocalRedis, context: ssl.SSLContext, host: str) -> None:
        self.upstream = upstream
        self.context = context
        self.host = host
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._pipe, self.host, 0, ssl=self.context)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def url(self, query: str = "") -> str:
        return f"rediss://{self.host}:{self.port}/0{query}"

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream.port)

        async def copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))


@pytest.fixture
async def fronts(
    redis_server: LocalRedis, redis_client: Redis, sim_ca: SimulatorCA
) -> AsyncIterator[dict[str, TlsFront]]:
    """The session's Redis behind TLS with the session CA's certificate (for 127.0.0.1,
    localhost and ::1): ``named`` on 127.0.0.1, ``misnamed`` on 127.0.0.2, an address the
    certificate does not name."""
    started = {
        "named": TlsFront(redis_server, sim_ca.server_context(), "127.0.0.1"),
        "misnamed": TlsFront(redis_server, sim_ca.server_context(), "127.0.0.2"),
    }
    for front in started.values():
        await front.start()
    yield started
    for front in started.values():
        await front.stop()


async def test_redis_over_tls_is_verified_whatever_the_environment_says(
    fronts: dict[str, TlsFront], sim_ca: SimulatorCA, tmp_path: Path
) -> None:
    env = {**hostile(tmp_path), "REDIS_URL": fronts["named"].url()}
    refused = await run_bare(env, "status")
    assert refused.code == 1, refused.output
    assert_one_line(refused, "certificate verify failed")

    # Its CA trusted, the same Redis answers; under a name its certificate lacks, it does not.
    trusted = await run_bare({**env, "SSL_CERT_FILE": str(sim_ca.ca_path)}, "status")
    assert trusted.code == 0, trusted.output
    misnamed = {**env, "SSL_CERT_FILE": str(sim_ca.ca_path), "REDIS_URL": fronts["misnamed"].url()}
    wrong_host = await run_bare(misnamed, "status")
    assert wrong_host.code == 1, wrong_host.output
    assert_one_line(wrong_host, "certificate verify failed")
    assert session_keys(tmp_path / "keys.log") == []


async def test_a_redis_client_verifies_even_when_its_caller_asks_it_not_to(
    fronts: dict[str, TlsFront],
    sim_ca: SimulatorCA,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Keywords in code, not the URL (which settings and connect() refuse): the connection
    # verifies all the same.
    careless = connect(fronts["named"].url(), ssl_cert_reqs="none", ssl_check_hostname=False)
    try:
        with pytest.raises(RedisConnectionError, match="certificate verify failed"):
            await careless.ping()
    finally:
        await careless.aclose()
    trusting = connect(
        fronts["misnamed"].url(), ssl_ca_certs=str(sim_ca.ca_path), ssl_check_hostname=False
    )
    try:
        with pytest.raises(RedisConnectionError, match="certificate verify failed"):
            await trusting.ping()
    finally:
        await trusting.aclose()

    # A working connection with SSLKEYLOGFILE set writes no session key.
    keys = tmp_path / "keys.log"
    monkeypatch.setenv("SSLKEYLOGFILE", str(keys))
    good = connect(fronts["named"].url(), ssl_ca_certs=str(sim_ca.ca_path))
    try:
        assert await wait_for(good.ping, 5, what="Redis over TLS")
    finally:
        await good.aclose()
    assert session_keys(keys) == []


#: Query parameters redis-py would pass to its TLS connection, each weakening it (or, the last
#: two, hiding a password where no mask looks).
WEAKENING_QUERIES = [
    ("?ssl_cert_reqs=none", "ssl_cert_reqs=none"),
    ("?ssl_cert_reqs=optional", "ssl_cert_reqs=optional"),
    ("?ssl_check_hostname=false", "ssl_check_hostname=false"),
    ("?ssl_cert_reqs=required&ssl_check_hostname=0", "ssl_check_hostname=0"),
    ("?ssl_exclude_verify_flags=VERIFY_X509_STRICT", "ssl_exclude_verify_flags"),
    ("?ssl_include_verify_flags=VERIFY_ALLOW_PROXY_CERTS", "ssl_include_verify_flags"),
    ("?ssl_ciphers=aNULL", "ssl_ciphers"),
    ("?ssl_min_version=769", "ssl_min_version=769"),
    ("?password=hunter2-in-query", "password in the query string"),
    ("?ssl_password=hunter2-in-query", "ssl_password in the query string"),
]


@pytest.mark.parametrize(("query", "named"), WEAKENING_QUERIES)
def test_a_redis_url_that_weakens_tls_is_refused(query: str, named: str) -> None:
    url = f"rediss://cache.example:6380/0{query}"
    with pytest.raises(ConfigError) as refused:
        load_settings({"REDIS_URL": url}, Service.ADMIN)
    (line,) = refused.value.problems
    assert line.startswith("REDIS_URL='rediss://cache.example:6380/0?"), line
    assert named in line
    assert "hunter2" not in line
    # Whoever opens a client without settings (a script, the harness) is refused alike.
    with pytest.raises(ConfigError) as again:
        connect(url)
    assert again.value.problems == [line]


def test_a_redis_url_may_ask_for_what_is_already_so() -> None:
    url = "rediss://cache.example:6380/0?ssl_cert_reqs=required&ssl_check_hostname=true"
    for query in ("", "?ssl_min_version=772", "?ssl_ca_certs=/etc/ssl/corporate.pem"):
        load_settings({"REDIS_URL": url + query.replace("?", "&")}, Service.ADMIN)


async def test_a_weakening_redis_url_stops_a_command_in_one_line() -> None:
    url = "rediss://:hunter2-pw@cache.example:6380/0?ssl_cert_reqs=none"
    done = await run_bare({"REDIS_URL": url}, "status")
    line = invalid_setting(done, "REDIS_URL=", "ssl_cert_reqs=none", "is refused")
    assert "hunter2-pw" not in done.output, line


# ---- Service Bus: the emulator switch is plain AMQP ----------------------------------------


def servicebus_env(host: str, *, emulator: bool = True) -> dict[str, str]:
    connection_string = (
        f"Endpoint=sb://{host}/;SharedAccessKeyName=RootManageSharedAccessKey;"
        f"SharedAccessKey={SB_KEY}" + (";UseDevelopmentEmulator=true" if emulator else "")
    )
    return {"BUS": "servicebus", "SERVICEBUS_CONNECTION_STRING": connection_string}


async def test_plain_amqp_to_a_namespace_elsewhere_is_refused_in_one_line() -> None:
    done = await run_bare(servicebus_env("m2s.servicebus.windows.net"), "status")
    invalid_setting(
        done, "SERVICEBUS_CONNECTION_STRING", "UseDevelopmentEmulator", "m2s.servicebus.windows.net"
    )
    assert SB_KEY not in done.output


@pytest.mark.parametrize("host", ["m2s.servicebus.windows.net:5672", "10.0.0.4:5672", "[::2]"])
def test_the_emulator_switch_is_refused_for_any_host_but_this_one(host: str) -> None:
    with pytest.raises(ConfigError, match="UseDevelopmentEmulator"):
        load_settings(servicebus_env(host), Service.ADMIN)


@pytest.mark.parametrize("host", ["127.0.0.1:5672", "localhost:5672", "[::1]:5672"])
def test_the_emulator_switch_stays_for_an_emulator_on_this_machine(host: str) -> None:
    # The local tests' fake Service Bus peer listens on 127.0.0.1 in emulator mode.
    assert load_settings(servicebus_env(host), Service.ADMIN).bus == "servicebus"
    assert load_settings(
        servicebus_env("m2s.servicebus.windows.net", emulator=False), Service.ADMIN
    )


# ---- No peer URL takes plain http (MATI's and the authority's: tests/unit/test_settings.py)


@pytest.mark.parametrize("name", ["SENTINEL_BASE_URL", "LOG_ANALYTICS_BASE_URL"])
def test_peer_urls_are_https_only(name: str) -> None:
    with pytest.raises(ConfigError, match=f"{name}='http://"):
        load_settings({name: "http://api.example"}, Service.ADMIN)
