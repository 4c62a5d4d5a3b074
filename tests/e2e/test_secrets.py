"""No secret leaves the product: not in a log line, a span, a /metrics scrape, ``status``,
``explain``, a ``dlq`` listing or replay, ``reconcile``, ``check-config``, nor in what a failed
command says.

One small pipeline runs with everything that makes the product talk: a Redis that checks a
password (an ACL user of the pipeline's own Redis; the harness keeps its password-free default
user), dead letters on both queues (malformed MATI records, records Sentinel rejects), and
faults that get logged and retried (an expired MATI token, a Sentinel 503, an Entra 503, a
Sentinel 401 that forces a new token). Traces go to an OTLP sink, logs to files at DEBUG. Then
every operator command prints, commands fail against peers that refuse their credentials, and
every text is searched for every secret: the configured ones (MATI key and secret, the client
secret, the Redis password, a SAS key) and the tokens the simulators issued during the run.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator, Mapping
from functools import partial

import aiohttp
import pytest

from harness.pipeline import ACCEPT_ALL, Pipeline, mati_properties
from simulators.faults import FaultKind
from simulators.feed import Feed
from simulators.sentinel import STIX_ROUTE
from simulators.together import Simulators
from tests.commands import CliResult, run_command
from tests.e2e.pipeline_tools import PipelineFactory, run_cli, synced_and_drained
from tests.e2e.test_metrics import health_port
from tests.e2e.test_traces import OtlpSink
from tests.helpers import REDIS_PASSWORD, wait_for

SERVICES = ("fetcher", "filter", "uploader")
#: The Redis user the services log in as; the password is ``tests.helpers.REDIS_PASSWORD``.
REDIS_USER = "m2s"
#: Malformed MATI records (``simulators.mati_bad_records``: the 1st, 2nd and 4th kinds cannot
#: be parsed, so the filter dead-letters them) and records Sentinel rejects.
BAD_MATI_POSITIONS = (3, 50, 101, 222)
REJECTED_BY_SENTINEL = (1, 17)
#: Credentials the failing commands offer, refused by their peers: they must not echo either.
WRONG = {
    "MATI_API_SECRET": "wrong-mati-secret-4Kq9",
    "AZURE_CLIENT_SECRET": "wrong-client-secret-7Zp2",
    "REDIS_PASSWORD": "wrong-redis-pw-3Xv8",
    "SAS_KEY": "d3Jvbmctc2FzLWtleS1MOXc=",
}

Texts = list[tuple[str, str]]
#: ``(label, environment changes, arguments)`` of one command.
Run = tuple[str, Mapping[str, str], tuple[str, ...]]


def configured_secrets(pipeline: Pipeline) -> dict[str, str]:
    env = pipeline.env
    key, secret = env["MATI_API_KEY"], env["MATI_API_SECRET"]
    return {
        "MATI_API_KEY": key,
        "MATI_API_SECRET": secret,
        "MATI's Basic credentials": base64.b64encode(f"{key}:{secret}".encode()).decode(),
        "AZURE_CLIENT_SECRET": env["AZURE_CLIENT_SECRET"],
        "the password in REDIS_URL": REDIS_PASSWORD,
        **{f"the refused {name}": value for name, value in WRONG.items()},
    }


def issued_tokens(sims: Simulators) -> dict[str, str]:
    """Every token the simulators handed out or were shown during the run: Entra's (and each
    JWT's signature alone, the part that makes it a credential), and MATI's bearer tokens."""
    tokens = {}
    for n, issued in enumerate(sims.entra.tokens_issued):
        tokens[f"Entra token {n}"] = issued.access_token
        tokens[f"Entra token {n}'s signature"] = issued.access_token.rsplit(".", 1)[1]
    for server in sims.servers:
        shown = {
            token
            for request in server.recorder.requests
            for scheme, _, token in [request.headers.get("Authorization", "").partition(" ")]
            if scheme.lower() == "bearer" and token
        }
        for n, token in enumerate(sorted(shown)):
            tokens[f"bearer token {n} shown to {server.name}"] = token
    return tokens


def leaks(secrets: dict[str, str], texts: Texts) -> list[str]:
    """``"<secret> in <where>"`` for each secret found; secrets named, never shown."""
    assert all(len(value) >= 8 for value in secrets.values()), "too short to mean anything"
    return [
        f"{name} in {where}"
        for name, value in secrets.items()
        for where, text in texts
        if value in text
    ]


def printed(where: str, result: CliResult) -> Iterator[tuple[str, str]]:
    yield f"{where} (stdout)", result.stdout
    yield f"{where} (stderr)", result.stderr


async def scrape_metrics(pipeline: Pipeline) -> Texts:
    ports = {label: await wait_for(partial(health_port, pipeline, label), 30) for label in SERVICES}
    texts = []
    async with aiohttp.ClientSession() as http:
        for label, port in ports.items():
            async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                assert response.status == 200
                texts.append((f"{label}'s /metrics", await response.text()))
    return texts


def operator_runs(pipeline: Pipeline) -> list[Run]:
    """The printing operator commands, on what this run left: the state, the dead letters of
    both kinds, where an indicator, a rejected one and a malformed one are, the workspace check
    and the settings."""
    sims = pipeline.sims
    first = next(r for r in sims.sentinel.recorder.of(STIX_ROUTE) if r.status == 200)
    rejected = mati_properties(first.json()["stixobjects"][REJECTED_BY_SENTINEL[0]])["mati_id"]
    malformed = next(b.id for b in sims.mati.bad_records if b.kind == "missing_value")
    return [
        ("status --json", {}, ("status", "--json")),
        ("dlq list", {}, ("dlq", "list")),
        ("dlq list --json", {}, ("dlq", "list", "--json")),
        ("dlq list indicators", {}, ("dlq", "list", "--queue", "indicators", "--json")),
        ("explain (the feed's first)", {}, ("explain", pipeline.feed.record(0)["id"])),
        ("explain (rejected)", {}, ("explain", rejected, "--json")),
        ("explain (malformed)", {}, ("explain", malformed)),
        ("reconcile --json", {}, ("reconcile", "--json")),
        ("check-config", {}, ("check-config",)),
    ]


def failing_runs(pipeline: Pipeline) -> list[Run]:
    """Commands whose peer refuses what they offer: MATI a secret, Entra a client secret,
    Redis a password; and a Service Bus namespace nobody answers for."""
    port = pipeline.redis_server.port
    redis_url = f"redis://{REDIS_USER}:{WRONG['REDIS_PASSWORD']}@127.0.0.1:{port}/0"
    sas = (
        "Endpoint=sb://127.0.0.1:9/;SharedAccessKeyName=RootManageSharedAccessKey;"
        f"SharedAccessKey={WRONG['SAS_KEY']};UseDevelopmentEmulator=true"
    )
    return [
        ("sync, MATI refusing", {"MATI_API_SECRET": WRONG["MATI_API_SECRET"]}, ("sync", "--once")),
        (
            "reconcile, Entra refusing",
            {"AZURE_CLIENT_SECRET": WRONG["AZURE_CLIENT_SECRET"]},
            ("reconcile",),
        ),
        ("status, Redis refusing", {"REDIS_URL": redis_url}, ("status",)),
        (
            "status, no Service Bus",
            {"BUS": "servicebus", "SERVICEBUS_CONNECTION_STRING": sas},
            ("status",),
        ),
    ]


async def command_outputs(pipeline: Pipeline) -> Texts:
    """Every run of ``operator_runs`` and ``failing_runs``, then a replay of the upload dead
    letters (last: it empties what the others read). Run a few at a time: each is a Python
    start-up, and the machine's cores are shared."""
    gate = asyncio.Semaphore(4)

    async def one(changes: Mapping[str, str], args: tuple[str, ...]) -> CliResult:
        async with gate:
            return await run_command({**pipeline.env, **changes}, *args, timeout_s=60)

    operators, failing = operator_runs(pipeline), failing_runs(pipeline)
    runs = operators + failing
    results = await asyncio.gather(*(one(changes, args) for _, changes, args in runs))
    texts: Texts = []
    for n, ((label, _, _), result) in enumerate(zip(runs, results, strict=True)):
        if n < len(operators):
            assert result.code in (0, 1), f"{label}: {result.output}"
        else:
            assert result.code != 0, f"{label} succeeded: {result.output}"
            assert result.output.strip(), f"{label} said nothing"
        texts += printed(label, result)
    letters = {label: result for (label, _, _), result in zip(runs, results, strict=True)}
    assert len(letters["dlq list --json"].json()) == len(REJECTED_BY_SENTINEL)
    assert len(letters["dlq list indicators"].json()) == 3
    replayed = await run_cli(pipeline, "dlq", "replay", "--queue", "upload")
    return texts + list(printed("dlq replay", replayed))


@pytest.mark.timeout(150)
async def test_no_secret_in_any_output(make_pipeline: PipelineFactory) -> None:
    sink = OtlpSink()
    await sink.start()
    try:
        pipeline = await make_pipeline(
            feed=Feed(seed=61, count=300, days=10),
            env={
                **ACCEPT_ALL,
                "LOG_LEVEL": "DEBUG",
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_ENDPOINT": sink.url,
                "OTEL_BSP_SCHEDULE_DELAY": "100",
            },
        )
        await run_the_pipeline(pipeline)
        texts = await scrape_metrics(pipeline)
        texts += await command_outputs(pipeline)
        # What the services log and export on the way out counts too.
        assert pipeline.processes is not None
        await pipeline.processes.stop_all(grace_s=30)
    finally:
        await sink.stop()

    logs = sorted((pipeline.state_dir / "logs").glob("*.log"))
    assert {p.stem for p in logs} == set(SERVICES)
    texts += [(f"{p.name}", p.read_text(errors="replace")) for p in logs]
    spans = [text for span in sink.spans for text in span.texts]
    assert len(spans) > 100, "the services exported no spans"
    texts.append(("the exported spans", "\n".join(spans)))

    secrets = configured_secrets(pipeline) | issued_tokens(pipeline.sims)
    assert len(pipeline.sims.entra.tokens_issued) >= 2, "Sentinel's 401 should have cost a token"
    assert sum(name.endswith("shown to mati") for name in secrets) >= 2, "MATI's token expired"
    found = leaks(secrets, texts)
    assert not found, "\n".join(found)


async def run_the_pipeline(pipeline: Pipeline) -> None:
    """The services logged in to Redis as ``REDIS_USER`` with its password, through a sync
    that meets malformed records, rejected records and faults on every peer."""
    assert pipeline.redis is not None
    port = pipeline.redis_server.port
    await pipeline.redis.execute_command(
        "ACL", "SETUSER", REDIS_USER, "on", f">{REDIS_PASSWORD}", "~*", "&*", "+@all"
    )
    pipeline.change_settings(
        {"REDIS_URL": f"redis://{REDIS_USER}:{REDIS_PASSWORD}@127.0.0.1:{port}/0"}
    )
    sims = pipeline.sims
    sims.mati.faults.inject(
        FaultKind.PARTIAL_ERRORS, route="indicator", record_indexes=BAD_MATI_POSITIONS
    )
    sims.mati.faults.inject(FaultKind.EXPIRED_TOKEN, route="indicator", after=1)
    sims.sentinel.faults.inject(
        FaultKind.PARTIAL_ERRORS, route=STIX_ROUTE, record_indexes=REJECTED_BY_SENTINEL
    )
    sims.sentinel.faults.inject(FaultKind.SERVER_ERROR, route=STIX_ROUTE, after=1)
    sims.sentinel.faults.inject(FaultKind.EXPIRED_TOKEN, route=STIX_ROUTE, after=1)
    sims.entra.faults.inject(FaultKind.SERVER_ERROR, route="token", after=1)
    for label in SERVICES:
        await pipeline.start_service(label)
    await synced_and_drained(pipeline)
    assert not [f.kind for s in sims.servers for f in s.faults.pending], "a fault was never met"

    async def logged_in() -> bool:
        assert pipeline.redis is not None
        clients = await pipeline.redis.client_list()
        return sum(c.get("user") == REDIS_USER for c in clients) >= len(SERVICES)

    assert await wait_for(logged_in, 10, what="the services' Redis logins")
