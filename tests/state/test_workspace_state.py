"""What a destination remembers about its workspace, against a real Redis: the birth record, the
rebuild's writes (an entry committed meanwhile wins; a later generation overwrites), the ids a
commit keeps for ``reconcile``'s grace, the seen cache streamed by ``SCAN``, and the drift
streak the alert reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis

from shared.adapters.destination_state import REVOCATION_MEMORY, DestinationState, compact_id
from shared.adapters.workspace_state import SCAN_COUNT, Born, WorkspaceState
from shared.core.fingerprint import SeenEntry
from shared.core.stix import stix_id

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def lineage(n: int) -> str:
    return stix_id(f"ipv4--{n:08d}-0000-5000-8000-000000000000", None)


def entry(n: int, *, days: float = 7) -> SeenEntry:
    return SeenEntry(f"{n:032x}", NOW + timedelta(days=days))


def ws(dest: DestinationState, redis_client: Redis) -> WorkspaceState:
    return WorkspaceState(redis_client, dest)


async def test_a_state_is_born_once_and_an_empty_redis_is_not(
    dest: DestinationState, redis_client: Redis
) -> None:
    state = ws(dest, redis_client)
    assert await state.born() is None
    assert not await dest.born()
    assert await state.mark_born(Born.REBUILT, at=NOW, objects=3)
    assert not await state.mark_born(Born.OFF, at=NOW, objects=0), "another replica was first"
    assert await state.born() == {"how": "rebuilt", "at": int(NOW.timestamp() * 1000), "objects": 3}
    assert await dest.born()
    view = await dest.batch_view([lineage(1)])
    assert (view.entries, view.born) == ([None], True)
    await redis_client.flushall()
    assert not (await dest.batch_view([lineage(1)])).born


async def test_restore_keeps_what_was_committed_meanwhile_unless_told_to_overwrite(
    dest: DestinationState, redis_client: Redis
) -> None:
    state = ws(dest, redis_client)
    committed = entry(1, days=7)
    await dest.commit([(lineage(1), committed)], now=NOW - timedelta(days=1))
    older = entry(2, days=6)
    written = await state.restore([(lineage(1), older), (lineage(2), entry(2))], now=NOW)
    assert written == 1
    assert await dest.seen([lineage(1), lineage(2)]) == [committed, entry(2)]
    assert await state.restore([(lineage(1), older)], now=NOW, overwrite=True) == 1
    assert await dest.seen([lineage(1)]) == [older]


async def test_restore_expires_entries_as_commit_does(
    dest: DestinationState, redis_client: Redis
) -> None:
    """A live entry goes at its ``valid_until``; a later generation or a revoked one is kept
    ``REVOCATION_MEMORY``; one already past is removed (with ``overwrite``)."""
    state = ws(dest, redis_client)
    now = datetime.now(UTC)
    live = SeenEntry("1" * 32, now + timedelta(days=7))
    later = SeenEntry("2" * 32, now - timedelta(seconds=1), generation=2)
    await state.restore([(lineage(1), live), (lineage(2), later)], now=now)
    ttl_live = await redis_client.pttl(dest.seen_key(lineage(1)))
    ttl_later = await redis_client.pttl(dest.seen_key(lineage(2)))
    assert timedelta(days=6) < timedelta(milliseconds=ttl_live) <= timedelta(days=7)
    assert timedelta(milliseconds=ttl_later) > REVOCATION_MEMORY - timedelta(minutes=1)
    gone = SeenEntry("1" * 32, now - timedelta(seconds=1))
    assert await state.restore([(lineage(1), gone)], now=now, overwrite=True) == 0
    assert await dest.seen([lineage(1)]) == [None]


async def test_commit_keeps_the_batch_ids_for_the_grace_and_reconcile_reads_them(
    dest: DestinationState, redis_client: Redis
) -> None:
    state = ws(dest, redis_client)
    now = datetime.now(UTC)
    await dest.commit([(lineage(1), entry(1)), (lineage(2), entry(2))], now=now, recent_s=900)
    await dest.commit([(lineage(3), entry(3))], now=now - timedelta(minutes=20), recent_s=900)
    await dest.commit([(lineage(4), entry(4))], now=now)  # no grace asked: nothing kept
    recent = await state.recent_ids(now - timedelta(minutes=15))
    assert recent == {compact_id(lineage(1)), compact_id(lineage(2))}
    assert await state.recent_ids(now - timedelta(minutes=30)) == {
        compact_id(lineage(n)) for n in (1, 2, 3)
    }
    keys = [k async for k in redis_client.scan_iter(match=f"{dest.prefix}recent:*")]
    assert len(keys) == 2
    assert 0 < await redis_client.pttl(keys[0]) <= 900_000


async def test_seen_entries_stream_every_entry_and_forget_drops_by_compact_id(
    dest: DestinationState, redis_client: Redis
) -> None:
    state = ws(dest, redis_client)
    many = [(lineage(n), entry(n)) for n in range(SCAN_COUNT * 2 + 7)]
    await dest.commit(many, now=NOW - timedelta(days=1))
    await redis_client.set(f"{dest.prefix}s:garbled", b"not an entry")
    await redis_client.set("m2s:{other}:s:x", entry(9).encode())  # another destination
    seen: dict[str, SeenEntry | None] = {}
    async for step in state.seen_entries():
        assert len(step) <= SCAN_COUNT * 2
        seen.update(step)
    assert seen.pop("garbled") is None
    assert seen == {compact_id(i): e for i, e in many}
    assert await state.forget([compact_id(lineage(0)), "nothing"]) == 1
    assert await dest.seen([lineage(0)]) == [None]


async def test_the_drift_streak_counts_reconciles_in_a_row_that_found_drift(
    dest: DestinationState, redis_client: Redis
) -> None:
    state = ws(dest, redis_client)
    assert await state.last_reconcile() == {}
    counts = {"agreeing": 5, "missing": 2}
    assert await state.save_reconcile(counts, at=NOW, drift=True, extra={"mode": "report"}) == 1
    assert await state.save_reconcile(counts, at=NOW, drift=True, extra={"mode": "repair"}) == 2
    last = await state.last_reconcile()
    assert (last["streak"], last["missing"], last["mode"]) == ("2", "2", "repair")
    clean = {"agreeing": 7}
    assert await state.save_reconcile(clean, at=NOW, drift=False, extra={}) == 0
    assert "missing" not in await state.last_reconcile(), "the previous counts are replaced"


async def test_only_one_replica_rebuilds_at_a_time(
    dest: DestinationState, redis_client: Redis
) -> None:
    state = ws(dest, redis_client)
    a, b = (state.rebuild_lease(owner, ttl_s=30) for owner in "ab")
    assert await a.acquire()
    assert not await b.acquire()
    assert await a.renew()
    assert not await b.renew()
    await b.release()
    assert not await b.acquire(), "only the holder releases"
    await a.release()
    assert await b.acquire()
    await state.rebuild_progress({"state": "running", "written": 3}, fresh=True)
    await state.rebuild_progress({"written": 9})
    assert await state.rebuild_status() == {"state": "running", "written": "9"}
