"""The uploader's cache guard (``services.workspace.CacheGuard``) with a real Redis and the real
reader against the Entra ID, Sentinel and Log Analytics simulators over TLS: an empty state is
rebuilt from the workspace (later generations over earlier ones, deleted objects left out) and
born; ``CACHE_REBUILD=off`` starts empty; a refused identity or a workspace unreachable past
the deadline starts empty too, loudly; a replica that does not hold the lease stays out."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from services.workspace import CacheGuard
from shared.adapters.destination_state import DestinationState
from shared.adapters.workspace_state import WorkspaceState
from shared.core.fingerprint import EXTENSION_ID, SeenEntry
from simulators.faults import FaultKind
from simulators.loganalytics import QUERY_ROUTE
from tests.clients.test_workspace_reader import UNTIL, World, fp, ours, world

DEST = "acme"


@pytest.fixture
async def w(server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext) -> AsyncIterator[World]:
    async with world(server_ssl, client_ssl) as opened:
        yield opened


@pytest.fixture
def state(redis_client: Redis) -> WorkspaceState:
    return WorkspaceState(redis_client, DestinationState(redis_client, DEST))


def guard(w: World, state: WorkspaceState, **options: object) -> CacheGuard:
    secret = options.pop("secret", None)
    reader_options = {} if secret is None else {"secret": secret}
    return CacheGuard(state, lambda: w.reader(**reader_options), **options)  # type: ignore[arg-type]


async def test_an_empty_state_is_rebuilt_from_the_workspace_and_born(
    w: World, state: WorkspaceState
) -> None:
    w.sentinel.seed([ours(n) for n in range(1, 301)])
    # Lineage 4 revoked then published again (generation 1); lineage 5 deleted.
    w.sentinel.overwrite(ours(4, revoked=True))
    w.sentinel.overwrite(ours(4, generation=1, fingerprint=fp(41)))
    w.sentinel.delete(ours(5)["id"])

    await guard(w, state).check(asyncio.Event())

    born = await state.born()
    assert born is not None
    # Writes: 299 lineages, lineage 4 twice (its revoked generation 0, then generation 1 over it).
    assert (born["how"], born["objects"]) == ("rebuilt", 300)
    lineages = [ours(n)["id"] for n in range(1, 301)]
    entries = dict(zip(lineages, await state.state.seen(lineages), strict=True))
    assert entries.pop(ours(4)["id"]) == SeenEntry(fp(41), UNTIL, generation=1)
    assert entries.pop(ours(5)["id"]) is None, "deleted: the workspace no longer holds it"
    for lineage, entry in entries.items():
        assert entry is not None, lineage
        assert (entry.valid_until, entry.revoked, entry.generation) == (UNTIL, False, 0)
        assert entry.source == b""
    assert entries[ours(1)["id"]] == SeenEntry(fp(1), UNTIL)
    status = await state.rebuild_status()
    assert (status["state"], status["written"]) == ("done", "300")
    assert await state.rebuild_lease("next", ttl_s=5).acquire(), "the lease was released"

    # Born once: a second look reads nothing more.
    queried = len(w.queries())
    await guard(w, state).check(asyncio.Event())
    assert len(w.queries()) == queried


async def test_off_starts_empty_without_reading_the_workspace(
    w: World, state: WorkspaceState
) -> None:
    w.sentinel.seed([ours(1)])
    await guard(w, state, mode="off").check(asyncio.Event())
    born = await state.born()
    assert born is not None
    assert born["how"] == "off"
    assert w.queries() == []
    assert await state.state.seen([ours(1)["id"]]) == [None]


async def test_a_refused_identity_starts_empty_and_says_why(
    w: World, state: WorkspaceState
) -> None:
    w.sentinel.seed([ours(1)])
    await guard(w, state, secret="not-the-secret").check(asyncio.Event())
    born = await state.born()
    assert born is not None
    assert born["how"] == "skipped"
    status = await state.rebuild_status()
    assert status["state"] == "skipped"
    assert "Entra" in status["error"] or "Log Analytics Reader" in status["error"]
    assert "not-the-secret" not in str(status)


async def test_a_failing_workspace_is_retried_then_given_up_on(
    w: World, state: WorkspaceState, redis_client: Redis
) -> None:
    w.sentinel.seed([ours(1)])
    w.logs.faults.inject(FaultKind.SERVER_ERROR, route=QUERY_ROUTE, status=503, times=4)
    await guard(w, state).check(asyncio.Event())
    born = await state.born()
    assert born is not None
    assert (born["how"], born["objects"]) == ("rebuilt", 1), "the second attempt read it"

    await state.state.forget([ours(1)["id"]])
    await state.state._client.delete(state.born_key)
    w.logs.faults.inject(FaultKind.SERVER_ERROR, route=QUERY_ROUTE, status=503, times=100)
    await guard(w, state, give_up_after_s=0.0).check(asyncio.Event())
    born = await state.born()
    assert born is not None
    assert born["how"] == "skipped"
    assert "503" in (await state.rebuild_status())["error"]


async def test_a_replica_without_the_lease_leaves_the_rebuild_to_its_holder(
    w: World, state: WorkspaceState
) -> None:
    assert await state.rebuild_lease("another replica", ttl_s=30).acquire()
    await guard(w, state).check(asyncio.Event())
    assert await state.born() is None
    assert w.queries() == []


async def test_the_rebuild_brings_back_suppressions_the_workspace_remembers(
    w: World, state: WorkspaceState
) -> None:
    """A revocation ``suppress add`` caused carries the suppression; it is added back when
    its object is still the lineage's latest, not when the lineage went out again since (it
    was un-suppressed)."""
    note = {
        "value": "value-1",
        "type": "ipv4",
        "reason": "our egress proxy",
        "added_at": "2026-12-01T08:00:00+00:00",
    }
    suppressed = ours(1, revoked=True)
    suppressed["extensions"][EXTENSION_ID]["suppressed"] = note
    lifted = ours(2, revoked=True)
    lifted["extensions"][EXTENSION_ID]["suppressed"] = {**note, "value": "value-2"}
    w.sentinel.seed([suppressed, lifted, ours(2, generation=1, fingerprint=fp(21)), ours(3)])

    await guard(w, state).check(asyncio.Event())

    current = await state.state.suppressions.snapshot()
    assert list(current.by_id) == [suppressed["extensions"][EXTENSION_ID]["mati_id"]]
    (restored,) = current.by_id.values()
    assert restored.note() == note
    assert (await state.rebuild_status())["suppressions"] == "1"
