"""``suppress add|remove|list`` against real parts: a real Redis, the real RedisStreamsBus and
DestinationState, and the MATI simulator answering the look-ups (the ``ctx`` of
explain_rig.py). What the uploader and the filter then do with what ``suppress`` queued is
proved in test_filter_suppression.py and tests/e2e/test_suppress.py."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from redis.asyncio import Redis

from services.cli.lookup import find
from services.cli.query import read_query
from services.cli.redis_server import LocalRedis
from services.cli.suppress import SUPPRESSED_CLAIM, Added, Removed, add, remove
from shared.adapters.suppressions import Suppression, Suppressions
from shared.contract.messages import (
    FULL_SYNC,
    SYNC_PROPERTY,
    read_upload,
    revocation_queue,
    subscription,
    upload_queue,
)
from shared.core.errors import OperatorRefused
from shared.core.fingerprint import EXTENSION_ID, ForwardReason, SeenEntry
from shared.core.indicator import HashType
from shared.core.stix import SUPPRESSED_PROPERTY, stix_id
from tests.services.explain_rig import DEFAULT, DEST, FEED, Ctx, accepted_ipv4, upload
from tests.services.test_status import cli

REVOKE = revocation_queue(DEST)


async def suppress(ctx: Ctx, text: str, reason: str = "our own proxy") -> Added:
    return await add(
        read_query(text), reason, settings=DEFAULT, bus=ctx.bus, state=ctx.state,
        mati=ctx.mati, now=datetime.now(UTC),
    )  # fmt: skip


async def unsuppress(ctx: Ctx, text: str) -> Removed:
    return await remove(
        read_query(text), settings=DEFAULT, bus=ctx.bus, state=ctx.state, mati=ctx.mati
    )


async def live(ctx: Ctx, sid: str, fp: str) -> None:
    until = datetime.now(UTC) + timedelta(days=3)
    await ctx.state.commit([(sid, SeenEntry(fp, until))], now=datetime.now(UTC))


async def test_add_revokes_what_is_live_and_supersedes_a_queued_upload(ctx: Ctx) -> None:
    record, sid, fp = accepted_ipv4()
    await live(ctx, sid, fp)
    # A newer version is queued for upload behind a back-fill: it must not go out after all.
    newer = "c" * 32
    await ctx.state.claim([(sid, newer)], ttl_s=600)
    await ctx.bus.publish(upload_queue(DEST), [upload(record, sid, newer)])

    added = await suppress(ctx, record["value"])

    assert (added.new, added.revoking) == (True, 1)
    assert added.suppression.mati_id == record["id"]
    stored = await ctx.state.suppressions.get(record["id"])
    assert stored is not None
    assert stored.reason == "our own proxy"
    await ctx.bus.ensure(REVOKE)
    (message,) = await ctx.bus.receive(REVOKE, max_messages=10, max_wait_s=0.2)
    request = read_upload(message.body)
    assert (request.stix_id, request.draft.stix_id) == (sid, sid)
    assert request.reason is ForwardReason.REVOKE
    assert request.draft.body["revoked"] is True
    # The workspace remembers the suppression, for a cache rebuilt after a lost Redis.
    ours = request.draft.extensions[EXTENSION_ID]
    assert isinstance(ours, dict)
    assert ours[SUPPRESSED_PROPERTY] == stored.note()
    assert await ctx.state.claims([sid]) == [request.fingerprint], "the queued upload is superseded"
    counters = await ctx.state.counters()
    assert counters["revoked_suppressed"] == counters["forwarded_revoke"] == 1


async def test_add_again_updates_and_queues_the_revocation_anew(ctx: Ctx) -> None:
    record, sid, fp = accepted_ipv4()
    await live(ctx, sid, fp)
    await suppress(ctx, record["id"])
    again = await suppress(ctx, record["id"], "a better reason")
    assert (again.new, again.revoking) == (False, 1)
    stored = await ctx.state.suppressions.get(record["id"])
    assert stored is not None
    assert stored.reason == "a better reason"


async def test_add_revokes_what_an_upload_queued_or_in_flight_may_put_live(ctx: Ctx) -> None:
    """Never uploaded as far as the seen cache knows, but an upload holds its claim: queued in
    a back-fill, or already sent with its answer on the way (or lost with an uploader that died
    before committing). The revocation goes out under the id that upload carries and takes its
    claim: a queued upload is skipped, one that reached Sentinel is revoked after it."""
    record, sid, fp = accepted_ipv4()
    await ctx.state.claim([(sid, fp)], ttl_s=600)  # an upload queued or in flight
    added = await suppress(ctx, record["id"])
    assert added.revoking == 1
    assert await ctx.state.suppressions.get(record["id"]) is not None
    await ctx.bus.ensure(REVOKE)
    (message,) = await ctx.bus.receive(REVOKE, max_messages=10, max_wait_s=0.2)
    request = read_upload(message.body)
    assert (request.stix_id, request.draft.body["revoked"]) == (sid, True)
    assert await ctx.state.claims([sid]) == [request.fingerprint]


async def test_add_what_is_not_live_and_not_queued_keeps_it_out(ctx: Ctx) -> None:
    """Nothing uploaded, nothing queued (or revoked already, its revocation committed): nothing
    to revoke; the claim it leaves makes the uploader skip an upload queued later by a batch
    judged before the suppression."""
    record, sid, fp = accepted_ipv4()
    added = await suppress(ctx, record["id"])
    assert added.revoking == 0
    assert await ctx.state.claims([sid]) == [SUPPRESSED_CLAIM]
    # Suppressed again: its own claim is no upload to revoke.
    assert (await suppress(ctx, record["id"])).revoking == 0

    until = datetime.now(UTC) + timedelta(days=3)
    await ctx.state.commit([(sid, SeenEntry(fp, until, revoked=True))], now=datetime.now(UTC))
    assert (await suppress(ctx, record["id"])).revoking == 0
    assert await ctx.state.claims([sid]) == [SUPPRESSED_CLAIM]


async def test_add_revokes_every_live_hash_of_an_md5(ctx: Ctx) -> None:
    index = next(i for i in range(len(FEED)) if FEED.type_of(i) == "md5")
    record = FEED.record(index)
    ids = [stix_id(record["id"], h) for h in HashType]
    for sid in ids:
        await live(ctx, sid, "d" * 32)
    added = await suppress(ctx, record["id"])
    assert added.revoking == 3
    await ctx.bus.ensure(REVOKE)
    got = await ctx.bus.receive(REVOKE, max_messages=10, max_wait_s=0.2)
    assert sorted(read_upload(m.body).stix_id for m in got) == sorted(ids)


async def test_an_indicator_mati_does_not_know_is_refused(ctx: Ctx) -> None:
    with pytest.raises(OperatorRefused, match=r"MATI knows no indicator 203\.0\.113\.254"):
        await suppress(ctx, "203.0.113.254")
    assert (await ctx.state.suppressions.snapshot()).by_id == {}


async def test_remove_hands_the_record_to_the_filter_as_a_re_judging(ctx: Ctx) -> None:
    record, _, _ = accepted_ipv4()
    await suppress(ctx, record["id"])

    removed = await unsuppress(ctx, record["value"])

    assert removed.republished
    assert await ctx.state.suppressions.get(record["id"]) is None
    (raw,) = await ctx.bus.receive(subscription(DEST), max_messages=10, max_wait_s=0.2)
    assert orjson.loads(raw.body) == await find(read_query(record["id"]), ctx.mati, DEFAULT)
    assert raw.properties[SYNC_PROPERTY] == FULL_SYNC
    assert raw.properties["run_id"].startswith("unsuppress-")
    with pytest.raises(OperatorRefused, match="is not suppressed"):
        await unsuppress(ctx, record["id"])


async def test_remove_calls_off_a_revocation_not_yet_in_sentinel(ctx: Ctx) -> None:
    """Added and removed before the revocation went out: the live indicator must stay live,
    so its claim goes back to what Sentinel holds and the uploader skips the revocation."""
    record, sid, fp = accepted_ipv4()
    await live(ctx, sid, fp)
    assert (await suppress(ctx, record["id"])).revoking == 1
    assert await ctx.state.claims([sid]) != [fp]

    await unsuppress(ctx, record["id"])

    assert await ctx.state.claims([sid]) == [fp]


async def test_remove_by_value_of_an_indicator_mati_no_longer_knows(ctx: Ctx) -> None:
    gone = Suppression("ipv4--gone", "203.0.113.9", "ipv4", "old", datetime.now(UTC))
    await ctx.state.suppressions.add(gone)
    removed = await unsuppress(ctx, "203.0.113.9")
    assert (removed.suppression.mati_id, removed.republished) == ("ipv4--gone", False)
    assert (await ctx.state.suppressions.snapshot()).by_id == {}


# ---- as an operator runs it --------------------------------------------------------------------


async def test_list_and_usage_errors_from_the_command_line(
    redis_client: Redis, redis_server: LocalRedis
) -> None:
    store = Suppression("fqdn--1", "evil.example", "fqdn", "sinkholed", datetime.now(UTC))
    await Suppressions(redis_client, DEST).add(store)
    listed = await asyncio.to_thread(cli, redis_server.url, "suppress", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert orjson.loads(listed.stdout)["suppressions"] == [store.to_dict()]
    text = await asyncio.to_thread(cli, redis_server.url, "suppress", "list")
    assert "evil.example (fqdn--1): sinkholed" in text.stdout

    missing = await asyncio.to_thread(
        cli, redis_server.url, "suppress", "add", "evil.example", "--reason", "  "
    )
    assert missing.returncode == 2
    assert missing.stderr.strip() == (
        "mati2sentinel suppress add: --reason is required: say why it is kept out"
    )
    assert "Traceback" not in missing.stderr
