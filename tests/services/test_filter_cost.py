"""What a batch costs in Redis round trips: the same few commands whatever its size, so the
filter's cost grows with the number of batches, not of records."""

from __future__ import annotations

from redis.asyncio import Redis

from tests.services.filter_rig import FEED, SOURCE, Rig, assert_settled, publish, take


async def calls(client: Redis) -> dict[str, int]:
    """Top-level calls per command so far (``INFO commandstats``)."""
    stats = await client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in stats.items()}


async def test_a_batch_costs_the_same_redis_commands_whatever_its_size(
    rig: Rig, redis_client: Redis
) -> None:
    """The seen ``MGET``, the claims ``MGET`` of what now fails (an upload of it may be
    queued), the claim script, the publish, the complete and the count: six calls for 50
    records as for 500. Scripts inside the server (``evalsha``) run their own commands, which
    ``INFO`` counts under those names but which cost no round trip, so only ``mget`` and
    ``evalsha`` are compared. The first batch pays the one-time script loads."""
    worker = rig.worker(batch_size=500)
    start = 0
    per_size: dict[int, dict[str, int]] = {}
    for size in (5, 50, 500):
        await publish(rig.bus, *(FEED.record(i) for i in range(start, start + size)))
        batch = await take(rig.bus, SOURCE, size)
        before = await calls(redis_client)
        outcome = await worker.handle(batch)
        after = await calls(redis_client)
        assert outcome["forwarded"] > 0
        assert outcome["received"] == size
        per_size[size] = {c: after.get(c, 0) - before.get(c, 0) for c in ("mget", "evalsha")}
        start += size
    assert per_size[50] == per_size[500] == {"mget": 2, "evalsha": 4}
    await assert_settled(rig)
