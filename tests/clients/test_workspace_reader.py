"""The workspace reader with the real azure-monitor-query client and azure-identity credential,
over real TLS, against the Entra ID, Sentinel and Log Analytics simulators: every object read
exactly once with its fields, partitions planned from the count, partial answers split and never
taken as complete, and every failure mapped into the pipeline's error tree without a secret."""

from __future__ import annotations

import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest

from shared.adapters.credentials import credential_factory
from shared.adapters.http import open_session
from shared.adapters.tls import client_context
from shared.adapters.workspace_reader import ReadProgress, WorkspaceReader
from shared.core.errors import (
    AuthenticationFailed,
    DestinationNotFound,
    MalformedResponse,
    TlsVerificationFailed,
    UpstreamUnavailable,
)
from shared.core.fingerprint import EXTENSION_ID
from shared.core.indicator import HashType
from shared.core.secrets import Secret
from shared.core.stix import stix_id
from shared.core.workspace_objects import WorkspaceObject
from simulators.entra import EntraSimulator
from simulators.faults import FaultKind
from simulators.loganalytics import QUERY_ROUTE, LogAnalyticsSimulator
from simulators.sentinel import SentinelSimulator
from simulators.tokens import TokenMinter
from tests.clients.sentinel_world import assert_no_secret

TENANT = "00000000-0000-4000-8000-0000000000aa"
CLIENT_ID = "00000000-0000-4000-8000-0000000000c1"
CLIENT_SECRET = "sim-client-secret-0123456789"
WORKSPACE = "00000000-0000-4000-8000-0000000000b0"
SOURCE = "Mandiant Threat Intelligence"
UNTIL = datetime(2099, 5, 8, tzinfo=UTC)
_PATHS = {
    None: "ipv4-addr:value",
    HashType.MD5: "file:hashes.'MD5'",
    HashType.SHA256: "file:hashes.'SHA-256'",
}


def fp(n: int) -> str:
    return f"{n:032x}"


def ours(
    n: int,
    *,
    hash_type: HashType | None = None,
    generation: int = 0,
    revoked: bool = False,
    valid_until: str | None = "2099-05-08T00:00:00.000Z",
    fingerprint: str | None = None,
) -> dict[str, Any]:
    """An indicator as the product uploads it: MATI id n, its id minted from it."""
    mati_id = f"{'md5' if hash_type else 'ipv4'}--{n:08d}-0000-5000-8000-000000000000"
    extension: dict[str, Any] = {"extension_type": "property-extension", "mati_id": mati_id}
    extension["fingerprint"] = fingerprint or fp(n)
    obj: dict[str, Any] = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": stix_id(mati_id, hash_type, generation),
        "created": "2025-05-01T00:00:00.000Z",
        "modified": "2025-05-01T00:00:00.000Z",
        "pattern": f"[{_PATHS[hash_type]} = 'value-{n}']",
        "pattern_type": "stix",
        "valid_from": "2025-05-01T00:00:00.000Z",
        "extensions": {EXTENSION_ID: extension},
    }
    if valid_until is not None:
        obj["valid_until"] = valid_until
    if revoked:
        obj["revoked"] = True
    return obj


@dataclass
class World:
    entra: EntraSimulator
    sentinel: SentinelSimulator
    logs: LogAnalyticsSimulator
    session: aiohttp.ClientSession

    def reader(self, **options: Any) -> WorkspaceReader:
        """A reader as the services build one: azure-identity over our session."""
        factory = credential_factory(
            session=self.session,
            tenant_id=TENANT,
            client_id=CLIENT_ID,
            authority_host=self.entra.url,
            client_secret=Secret(options.pop("secret", CLIENT_SECRET)),
        )
        options.setdefault("endpoint", self.logs.url)
        options.setdefault("workspace_id", WORKSPACE)
        options.setdefault("source_system", SOURCE)
        options.setdefault("session", self.session)
        options.setdefault("retry_backoff_factor", 0.01)
        return WorkspaceReader(factory(), **options)

    def queries(self) -> list[str]:
        """The KQL of every query request, in order."""
        return [orjson.loads(r.body)["query"] for r in self._query_requests()]

    def timespans(self) -> list[str | None]:
        return [orjson.loads(r.body)["timespan"] for r in self._query_requests()]

    def _query_requests(self) -> list[Any]:
        return [r for r in self.logs.recorder.requests if r.route == QUERY_ROUTE]


@contextlib.asynccontextmanager
async def world(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext, *, timeout_s: float = 30.0
) -> AsyncIterator[World]:
    minter = TokenMinter()
    async with (
        EntraSimulator(server_ssl, minter=minter, tenant_id=TENANT) as entra,
        SentinelSimulator(server_ssl, minter=minter, workspace_id=WORKSPACE) as sentinel,
        LogAnalyticsSimulator(server_ssl, minter=minter, sentinel=sentinel) as logs,
        open_session(client_ssl, timeout_s=timeout_s) as session,
    ):
        entra.add_client(CLIENT_ID, CLIENT_SECRET)
        yield World(entra, sentinel, logs, session)


@pytest.fixture
async def w(server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext) -> AsyncIterator[World]:
    async with world(server_ssl, client_ssl) as opened:
        yield opened


async def read_all(
    reader: WorkspaceReader, steps: list[ReadProgress] | None = None
) -> list[WorkspaceObject]:
    async with reader:
        return [obj async for obj in reader.read(progress=None if steps is None else steps.append)]


def by_id(objects: list[WorkspaceObject]) -> dict[str, WorkspaceObject]:
    found = {obj.stix_id: obj for obj in objects}
    assert len(found) == len(objects), "an object was read twice"
    return found


def issued(w: World) -> list[str]:
    return [t.access_token for t in w.entra.tokens_issued]


# --- reading ----------------------------------------------------------------------------------


async def test_each_object_is_read_once_with_its_fields(w: World) -> None:
    live = ours(1)
    sha256 = ours(2, hash_type=HashType.SHA256)
    endless = ours(3, valid_until=None)
    w.sentinel.seed([live, sha256, endless, ours(4), ours(5)])
    # Lineage 4 revoked, then published again under generation 1; lineage 5 deleted.
    w.sentinel.overwrite(ours(4, revoked=True))
    w.sentinel.overwrite(ours(4, generation=1, fingerprint=fp(41)))
    w.sentinel.delete(ours(5)["id"])
    foreign = {**ours(6), "id": "indicator--00000000-0000-4000-8000-000000000006"}
    no_extension = {k: v for k, v in ours(7).items() if k != "extensions"}
    w.sentinel.seed([foreign, no_extension])
    w.sentinel.seed([ours(8)], source="Someone Else")

    found = by_id(await read_all(w.reader()))

    assert set(found) == {
        live["id"],
        sha256["id"],
        endless["id"],
        ours(4)["id"],
        ours(4, generation=1)["id"],
        ours(5)["id"],
        foreign["id"],
        no_extension["id"],
    }
    one = found[live["id"]]
    assert (one.lineage, one.generation, one.mati_id) == (
        live["id"],
        0,
        "ipv4--00000001-0000-5000-8000-000000000000",
    )
    assert (one.fingerprint, one.valid_until, one.revoked, one.deleted) == (
        fp(1),
        UNTIL,
        False,
        False,
    )
    assert one.time_generated.tzinfo is not None
    assert datetime.now(UTC) - one.time_generated < timedelta(minutes=5)
    assert found[sha256["id"]].lineage == stix_id(
        "md5--00000002-0000-5000-8000-000000000000", HashType.SHA256
    )
    assert found[endless["id"]].valid_until is None
    revoked, again = found[ours(4)["id"]], found[ours(4, generation=1)["id"]]
    assert (revoked.revoked, revoked.generation) == (True, 0)
    assert (again.revoked, again.generation, again.lineage) == (False, 1, ours(4)["id"])
    assert again.fingerprint == fp(41)
    assert found[ours(5)["id"]].deleted
    assert found[foreign["id"]].lineage is None
    assert found[no_extension["id"]].lineage is None
    assert found[no_extension["id"]].mati_id is None


async def test_count_is_the_objects_of_our_source_system(w: World) -> None:
    w.sentinel.seed([ours(n) for n in range(30)])
    w.sentinel.seed([ours(n) for n in range(30, 40)], source="Someone Else")
    w.sentinel.overwrite(ours(0, revoked=True))  # a second row, still one object
    async with w.reader() as reader:
        assert await reader.count() == 30


async def test_an_empty_workspace_reads_as_nothing(w: World) -> None:
    steps: list[ReadProgress] = []
    assert await read_all(w.reader(), steps) == []
    assert steps == [ReadProgress(1, 1, 0, 0)]


async def test_the_query_is_the_documented_one(w: World) -> None:
    """The shape the simulator is taught and the real service runs, escaping included."""
    odd = 'Odd "Source" \\ System'
    w.sentinel.seed([ours(1), ours(2)], source=odd)
    assert len(await read_all(w.reader(source_system=odd, partition_target=1))) == 2
    (count, first, *_), timespans = w.queries(), w.timespans()
    head = (
        "ThreatIntelIndicators\n"
        '| where SourceSystem == "Odd \\"Source\\" \\\\ System"\n'
        "| extend StixId = tostring(Data.id)\n"
    )
    ours_ = f'Data.extensions["{EXTENSION_ID}"]'
    assert count == head + "| summarize arg_max(TimeGenerated, *) by Id\n| count"
    assert first == (
        head + '| where StixId startswith "indicator--0"\n'
        "| summarize arg_max(TimeGenerated, *) by Id\n"
        f"| extend MatiId = tostring({ours_}.mati_id), "
        f"Fingerprint = tostring({ours_}.fingerprint), "
        f"Suppressed = tostring({ours_}.suppressed)\n"
        "| project StixId, TimeGenerated, ValidUntil, Revoked, IsDeleted, IsActive, Pattern, "
        "MatiId, Fingerprint, Suppressed"
    )
    assert set(timespans) == {"PT1209600.0S"}  # 14 days


async def test_partitions_when_the_count_exceeds_the_target(w: World) -> None:
    objects = [ours(n) for n in range(1000)]
    w.sentinel.seed(objects)
    steps: list[ReadProgress] = []
    found = by_id(await read_all(w.reader(partition_target=50), steps))
    assert set(found) == {obj["id"] for obj in objects}
    # 1000 / 16 > 50, 1000 / 256 <= 50: two hex digits, 256 partitions.
    assert len(steps) == 256
    assert steps[-1] == ReadProgress(256, 256, 1000, 1000)
    assert [s.partitions_done for s in steps] == list(range(1, 257))
    assert sum(1 for q in w.queries() if 'startswith "indicator--' in q) == 256


async def test_a_partial_answer_is_split_and_still_read_fully(w: World) -> None:
    objects = [ours(n) for n in range(1000)]
    w.sentinel.seed(objects)
    w.logs.max_rows = 100  # the whole set is partial, a sixteenth (~62) is not
    steps: list[ReadProgress] = []
    found = by_id(await read_all(w.reader(partition_target=1000), steps))
    assert set(found) == {obj["id"] for obj in objects}
    assert steps[-1] == ReadProgress(16, 16, 1000, 1000)


async def test_a_partial_answer_fault_is_never_taken_as_complete(w: World) -> None:
    objects = [ours(n) for n in range(40)]
    w.sentinel.seed(objects)
    w.logs.faults.inject(FaultKind.PARTIAL_ERRORS, route=QUERY_ROUTE, after=1, record_indexes=(0,))
    steps: list[ReadProgress] = []
    found = by_id(await read_all(w.reader(), steps))
    assert set(found) == {obj["id"] for obj in objects}
    assert steps[-1].partitions_total == 16


async def test_a_persistently_partial_answer_raises(w: World) -> None:
    w.sentinel.seed([ours(n) for n in range(1000)])
    w.logs.max_rows = 10
    with pytest.raises(MalformedResponse, match="only partially"):
        await read_all(w.reader(partition_target=1000, max_splits=1))


async def test_a_partial_count_is_never_taken_as_the_count(w: World) -> None:
    w.sentinel.seed([ours(1)])
    w.logs.faults.inject(FaultKind.PARTIAL_ERRORS, route=QUERY_ROUTE, record_indexes=(0,))
    with pytest.raises(MalformedResponse, match="count query only partially"):
        await read_all(w.reader())


async def test_unreadable_rows_are_counted_not_fatal(w: World) -> None:
    w.sentinel.seed([ours(1), ours(2)])
    for row in w.sentinel.rows:
        if row["Data"]["id"] == ours(2)["id"]:
            row["Revoked"] = "maybe"  # kept by the simulator, refused by the parser
    reader = w.reader()
    async with reader:
        found = [obj.stix_id async for obj in reader.read()]
    assert found == [ours(1)["id"]]
    assert reader.unreadable == 1


# --- failures ---------------------------------------------------------------------------------


async def test_401_is_authentication_failed_naming_the_role(w: World) -> None:
    w.logs.faults.inject(FaultKind.EXPIRED_TOKEN, route=QUERY_ROUTE)
    with pytest.raises(AuthenticationFailed, match="Log Analytics Reader") as caught:
        await read_all(w.reader())
    assert caught.value.status == 401
    assert_no_secret(caught.value, CLIENT_SECRET, *issued(w))


async def test_403_is_authentication_failed_naming_the_role(w: World) -> None:
    w.logs.faults.inject(FaultKind.SERVER_ERROR, route=QUERY_ROUTE, status=403)
    with pytest.raises(AuthenticationFailed, match="Log Analytics Reader") as caught:
        await read_all(w.reader())
    assert caught.value.status == 403
    assert_no_secret(caught.value, CLIENT_SECRET, *issued(w))


async def test_a_refused_credential_is_authentication_failed(w: World) -> None:
    with pytest.raises(AuthenticationFailed, match="Entra ID refused") as caught:
        await read_all(w.reader(secret="wrong-secret-0123456789"))
    assert_no_secret(caught.value, CLIENT_SECRET, "wrong-secret-0123456789")


async def test_404_is_destination_not_found(w: World) -> None:
    other = "00000000-0000-4000-8000-0000000000ff"
    with pytest.raises(DestinationNotFound, match=other):
        await read_all(w.reader(workspace_id=other))


@pytest.mark.parametrize(
    ("kind", "status", "options"),
    [
        (FaultKind.RATE_LIMIT, 429, {"retry_after_s": 0.01}),
        (FaultKind.SERVER_ERROR, 500, {}),
        (FaultKind.SERVER_ERROR, 503, {}),
    ],
)
async def test_throttling_and_outages_are_upstream_unavailable_after_retries(
    w: World, kind: FaultKind, status: int, options: dict[str, Any]
) -> None:
    w.logs.faults.inject(kind, route=QUERY_ROUTE, status=status, times=4, **options)
    with pytest.raises(UpstreamUnavailable) as caught:
        await read_all(w.reader(retry_total=3))
    assert caught.value.status == status
    assert len(w.queries()) == 4  # azure-core tried 1 + 3 times
    assert_no_secret(caught.value, CLIENT_SECRET, *issued(w))


async def test_a_429_without_retry_after_is_not_retried_by_azure_core(w: World) -> None:
    """azure-core retries a POST on 429 only when told when: the caller backs off instead."""
    w.logs.faults.inject(FaultKind.RATE_LIMIT, route=QUERY_ROUTE)
    with pytest.raises(UpstreamUnavailable, match="HTTP 429") as caught:
        await read_all(w.reader(retry_total=3))
    assert caught.value.status == 429
    assert len(w.queries()) == 1


async def test_a_passing_outage_is_retried_by_azure_core(w: World) -> None:
    w.sentinel.seed([ours(1)])
    w.logs.faults.inject(FaultKind.SERVER_ERROR, route=QUERY_ROUTE, status=500, times=2)
    assert len(await read_all(w.reader(retry_total=3))) == 1


async def test_a_connection_reset_is_upstream_unavailable(w: World) -> None:
    w.logs.faults.inject(FaultKind.RESET, route=QUERY_ROUTE, times=10)
    with pytest.raises(UpstreamUnavailable):
        await read_all(w.reader(retry_total=1))


async def test_a_timeout_is_upstream_unavailable(w: World) -> None:
    w.logs.faults.inject(FaultKind.TIMEOUT, route=QUERY_ROUTE, delay_s=5.0, times=10)
    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable):
        await read_all(w.reader(retry_total=0, timeout_s=0.5))
    assert time.monotonic() - started < 4.0


async def test_a_body_that_is_not_json_is_malformed(w: World) -> None:
    w.logs.faults.inject(FaultKind.MALFORMED_JSON, route=QUERY_ROUTE)
    with pytest.raises(MalformedResponse):
        await read_all(w.reader(retry_total=0))


async def test_an_untrusted_certificate_is_tls_verification_failed(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    """The token comes over a trusting session; the query goes over one that does not
    trust the simulators' CA. Verification stays on: the handshake is refused."""
    async with (
        world(server_ssl, client_ssl) as w,
        open_session(client_context(None)) as untrusting,
    ):
        with pytest.raises(TlsVerificationFailed):
            await read_all(w.reader(session=untrusting, retry_total=0))


# --- scale ------------------------------------------------------------------------------------

BIG = 300_000


@pytest.mark.timeout(300)
async def test_a_workspace_of_300_000_objects_is_read_exactly_once(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    """The default target against the simulator's real limits (500,000 rows / 64 MiB): more
    than one partition, each object once, progress reaching the count."""
    async with world(server_ssl, client_ssl, timeout_s=120.0) as w:
        big_objects = [ours(n) for n in range(BIG)]
        started = time.monotonic()
        w.sentinel.seed(big_objects)
        print(f"seeded {BIG} objects in {time.monotonic() - started:.1f} s")
        steps: list[ReadProgress] = []
        seen: set[str] = set()
        duplicates = 0
        reader = w.reader()
        async with reader:
            async for obj in reader.read(progress=steps.append):
                if obj.stix_id in seen:
                    duplicates += 1
                seen.add(obj.stix_id)
                assert obj.lineage == obj.stix_id
        assert duplicates == 0
        assert seen == {obj["id"] for obj in big_objects}
        assert reader.unreadable == 0
        assert steps[-1].partitions_total > 1
        assert steps[-1] == ReadProgress(
            steps[-1].partitions_total, steps[-1].partitions_total, BIG, BIG
        )
