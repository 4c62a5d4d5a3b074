"""``explain`` against real parts: a real Redis, the real RedisStreamsBus and DestinationState,
and the MATI simulator over TLS answering the look-ups. Each case puts the indicator where the
services would have put it (a seen entry, a claim, a message in a queue, a dead letter), with
the same adapters and message builders the services use, and reads the answer back.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from services.cli.explain import (
    Verdict,
    read_query,
    render,
)
from shared.adapters.feed_state import FeedState
from shared.adapters.suppressions import Suppression
from shared.contract.messages import (
    INDICATORS,
    raw_message,
    subscription,
    upload_queue,
)
from shared.core.context import actors_of
from shared.core.filters import DropReason, evaluate
from shared.core.fingerprint import SeenEntry, fingerprint
from shared.core.indicator import Indicator, IndicatorType
from shared.core.parsing import parse_indicator
from shared.core.stix import content, stix_id
from tests.services.explain_rig import (
    DEFAULT,
    DEST,
    SENTINEL_MESSAGE,
    Ctx,
    accepted_ipv4,
    find,
    settings_with,
    upload,
)

# ---- dropped --------------------------------------------------------------------------------

ACCEPT_EVERY_SCORE = {
    "MINIMUM_CONFIDENCE": "0",
    "MINIMUM_THREAT_SCORE": "0",
    "EXCLUDE_OSINT": "false",
}


@pytest.mark.parametrize(
    ("reason", "env", "detail"),
    [
        (
            DropReason.LOW_CONFIDENCE,
            {},
            "< MINIMUM_CONFIDENCE 80",
        ),
        (DropReason.LOW_THREAT_SCORE, {"MINIMUM_CONFIDENCE": "0"}, "< MINIMUM_THREAT_SCORE 80"),
        (
            DropReason.OSINT,
            {"MINIMUM_CONFIDENCE": "0", "MINIMUM_THREAT_SCORE": "0"},
            "and EXCLUDE_OSINT=true",
        ),
        (DropReason.TYPE_EXCLUDED, {"INCLUDE_FQDN": "false"}, "INCLUDE_FQDN=false"),
        (DropReason.HASH_TYPE_MISSING, {"HASH_TYPE": "sha256"}, "(HASH_TYPE=sha256)"),
        # Found only if explain asks MATI for the flags, as the fetcher does.
        (
            DropReason.WARNINGLIST,
            {**ACCEPT_EVERY_SCORE, "EXCLUDE_WARNINGLISTS": "all"},
            ", excluded by EXCLUDE_WARNINGLISTS",
        ),
    ],
)
async def test_dropped_names_the_filter_and_the_numbers(
    ctx: Ctx, reason: DropReason, env: dict[str, str], detail: str
) -> None:
    settings = settings_with(**env)
    _, indicator = find(lambda i, v: v is reason, settings)

    answer = await ctx.explain(indicator.id, settings)

    assert answer.verdict is Verdict.DROPPED
    assert answer.filter_reason == reason.value
    assert detail in answer.headline
    if reason is DropReason.LOW_CONFIDENCE:
        assert f"mscore {indicator.mscore} < MINIMUM_CONFIDENCE 80" in answer.headline
    assert answer.stories == []
    assert render(answer).startswith(f"DROPPED: dropped by {reason}: ")


async def test_dropped_but_still_in_sentinel_from_an_earlier_upload(ctx: Ctx) -> None:
    record, sid, fp = accepted_ipv4()
    until = datetime.now(UTC) + timedelta(days=3)
    await ctx.state.commit([(sid, SeenEntry(fp, until))], now=datetime.now(UTC))

    answer = await ctx.explain(record["id"], settings_with(INCLUDE_IPV4="false"))

    assert answer.verdict is Verdict.DROPPED
    (story,) = answer.stories
    assert story.verdict is Verdict.UPLOADED
    assert "still in Sentinel from an earlier upload" in story.summary


async def test_dropped_and_revoked_is_said_revoked_not_in_sentinel(ctx: Ctx) -> None:
    """A revoked object matches nothing: explain says it was revoked, under which id, and
    never calls it still in Sentinel."""
    record, sid, fp = accepted_ipv4()
    until = datetime.now(UTC) + timedelta(days=3)
    await ctx.state.commit([(sid, SeenEntry(fp, until, revoked=True))], now=datetime.now(UTC))

    answer = await ctx.explain(record["id"], settings_with(INCLUDE_IPV4="false"))

    assert answer.verdict is Verdict.DROPPED
    (story,) = answer.stories
    assert (story.verdict, story.object_id) == (Verdict.REVOKED, sid)
    assert "passes again" not in story.summary


async def test_a_republished_indicator_is_up_to_date_under_its_generation_id(ctx: Ctx) -> None:
    """Revoked once and live again under generation 1: the fingerprint explain compares is
    the one of the object under that id, and the id shown is the one Sentinel holds."""
    record, sid, _ = accepted_ipv4()
    indicator = parse_indicator(record)
    assert isinstance(indicator, Indicator)
    verdict = evaluate(indicator, DEFAULT.filter_policy())
    assert isinstance(verdict, tuple)
    object_id = stix_id(record["id"], None, 1)
    fp = fingerprint(content(verdict[0], DEFAULT.stix_policy(), object_id=object_id))
    until = datetime.now(UTC) + timedelta(days=3)
    await ctx.state.commit([(sid, SeenEntry(fp, until, generation=1))], now=datetime.now(UTC))

    answer = await ctx.explain(record["id"])

    assert answer.verdict is Verdict.UPLOADED
    (story,) = answer.stories
    assert (story.stix_id, story.object_id) == (sid, object_id)
    assert story.fingerprint == fp


# ---- on its way -----------------------------------------------------------------------------


async def test_queued_in_the_upload_queue(ctx: Ctx) -> None:
    record, sid, fp = accepted_ipv4()
    await ctx.state.claim([(sid, fp)], ttl_s=600)
    await ctx.bus.publish(upload_queue(DEST), [upload(record, sid, fp)])

    answer = await ctx.explain(record["id"])

    assert answer.verdict is Verdict.QUEUED
    assert answer.headline.startswith(f"queued for upload in upload.{DEST} since ")
    assert answer.headline.endswith(", new")
    (story,) = answer.stories
    assert (story.stix_id, story.fingerprint, story.claim) == (sid, fp, fp)


async def test_in_flight_while_an_uploader_holds_it(ctx: Ctx) -> None:
    record, sid, fp = accepted_ipv4()
    await ctx.bus.publish(upload_queue(DEST), [upload(record, sid, fp)])
    await ctx.bus.receive(upload_queue(DEST), max_messages=1, max_wait_s=1)

    answer = await ctx.explain(record["id"])

    assert answer.verdict is Verdict.IN_FLIGHT
    assert "an uploader holds it" in answer.headline


async def test_in_flight_when_claimed_and_not_found_in_the_queue(ctx: Ctx) -> None:
    record, sid, fp = accepted_ipv4()
    await ctx.state.claim([(sid, fp)], ttl_s=600)

    answer = await ctx.explain(record["value"])  # by value, too

    assert answer.verdict is Verdict.IN_FLIGHT
    assert f"claimed for upload (fingerprint {fp[:12]}" in answer.headline


async def test_waiting_for_the_filter(ctx: Ctx) -> None:
    record, _, _ = accepted_ipv4()
    await ctx.bus.publish(INDICATORS, [raw_message(record, run_id="r1")])

    answer = await ctx.explain(record["id"])

    assert answer.verdict is Verdict.WAITING_FOR_FILTER
    assert f"waiting for the filter in indicators/{DEST}" in answer.headline


# ---- in Sentinel ----------------------------------------------------------------------------


async def test_uploaded_and_up_to_date(ctx: Ctx) -> None:
    record, sid, fp = accepted_ipv4()
    until = datetime.now(UTC).replace(microsecond=0) + timedelta(days=6)
    await ctx.state.commit([(sid, SeenEntry(fp, until))], now=datetime.now(UTC))

    answer = await ctx.explain(record["id"])

    assert answer.verdict is Verdict.UPLOADED
    at = (until - timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    valid = until.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert answer.headline == f"uploaded ≈{at}, valid until {valid}; up to date"
    (story,) = answer.stories
    assert (story.uploaded_fingerprint, story.valid_until) == (fp, valid)


async def test_uploaded_with_a_refresh_due(ctx: Ctx) -> None:
    record, sid, fp = accepted_ipv4()
    until = datetime.now(UTC) + timedelta(days=1)  # 6 of 7 days gone: past the 0.5 ratio
    await ctx.state.commit([(sid, SeenEntry(fp, until))], now=datetime.now(UTC))

    answer = await ctx.explain(record["id"])

    assert answer.verdict is Verdict.UPLOADED
    assert answer.headline.endswith("up to date; a refresh is due (the next sync re-uploads it)")


async def test_stale_when_mati_has_a_newer_version(ctx: Ctx) -> None:
    record, sid, fp = accepted_ipv4()
    old = "0" * 32
    until = datetime.now(UTC) + timedelta(days=6)
    await ctx.state.commit([(sid, SeenEntry(old, until))], now=datetime.now(UTC))

    answer = await ctx.explain(record["id"])

    assert answer.verdict is Verdict.STALE
    assert f"MATI's current version differs (fingerprint {fp[:12]}… ≠ {old[:12]}…)" in (
        answer.headline
    )


# ---- set aside ------------------------------------------------------------------------------


async def test_rejected_by_sentinel_with_its_message(ctx: Ctx) -> None:
    record, sid, fp = accepted_ipv4()
    await ctx.bus.publish(upload_queue(DEST), [upload(record, sid, fp)])
    (held,) = await ctx.bus.receive(upload_queue(DEST), max_messages=1, max_wait_s=1)
    await ctx.bus.dead_letter(
        upload_queue(DEST), held, reason="rejected_by_sentinel", description=SENTINEL_MESSAGE
    )

    answer = await ctx.explain(record["id"])

    assert answer.verdict is Verdict.REJECTED
    assert answer.headline.startswith(f"rejected by Sentinel: {SENTINEL_MESSAGE} (")
    assert render(answer).startswith("REJECTED: rejected by Sentinel")


async def test_refused_by_the_parser(ctx: Ctx) -> None:
    record, _, _ = accepted_ipv4()
    broken = {**record, "value": 12345}  # what a PARTIAL_ERRORS page does to a record
    await ctx.bus.publish(INDICATORS, [raw_message(broken, run_id="r1")])
    (held,) = await ctx.bus.receive(subscription(DEST), max_messages=1, max_wait_s=1)
    description = "bad_field: 'value' must be a non-empty string, got number"
    await ctx.bus.dead_letter(
        subscription(DEST), held, reason="invalid_record", description=description
    )

    answer = await ctx.explain(record["id"])

    assert answer.verdict is Verdict.REFUSED
    assert answer.headline.startswith(f"refused by the parser: {description} (")


# ---- not known ------------------------------------------------------------------------------


async def test_unknown_to_mati_by_id_and_by_value(ctx: Ctx) -> None:
    missing = "fqdn--00000000-0000-5000-8000-000000000000"
    by_id = await ctx.explain(missing)
    by_value = await ctx.explain("no-such-host.example")

    assert by_id.verdict is Verdict.UNKNOWN
    assert by_id.headline == f"unknown to MATI: no indicator {missing}"
    assert by_value.verdict is Verdict.UNKNOWN
    assert by_value.indicator is None
    statuses = [
        r.status for r in ctx.sim.recorder.requests if (r.route or "").startswith("indicator_by")
    ]
    assert statuses == [404, 404]


def of_type(kind: IndicatorType, *, tricky: bool = False) -> Callable[[Indicator, Any], bool]:
    """Records of ``kind``; ``tricky``: a value with characters a URL path must escape."""
    return lambda i, v: i.type is kind and (not tricky or "?" in i.value or "\\" in i.value)


async def test_lookup_by_value_finds_each_type(ctx: Ctx) -> None:
    for kind in IndicatorType:
        record, _ = find(of_type(kind, tricky=kind is IndicatorType.URL))
        answer = await ctx.explain(record["value"])
        assert answer.indicator is not None
        assert answer.indicator["id"] == record["id"], (kind, record["value"])
    assert [r.status for r in ctx.sim.recorder.of("indicator_by_value")] == [200] * 4


async def test_a_cut_scan_is_said(ctx: Ctx) -> None:
    record, sid, fp = accepted_ipv4()
    other, other_sid, other_fp = find_other(record["id"])
    await ctx.bus.publish(
        upload_queue(DEST), [upload(other, other_sid, other_fp), upload(record, sid, fp)]
    )

    answer = await ctx.explain(record["id"], scan_limit=1)

    assert answer.verdict is Verdict.NOT_UPLOADED
    assert f"upload.{DEST}: only the first 1 were scanned" in answer.notes
    shown = orjson.loads(answer.to_json())
    assert shown["verdict"] == "not_uploaded"
    assert shown["notes"] == answer.notes


def find_other(not_id: str) -> tuple[dict[str, Any], str, str]:
    record, indicator = find(
        lambda i, v: i.type is IndicatorType.IPV4 and isinstance(v, tuple) and i.id != not_id
    )
    return record, stix_id(indicator.id, None), "1" * 32


def test_read_query_types_values_by_their_shape() -> None:
    assert read_query(" ipv4--5f9c7a1e-1c1e-5a3b-9d3c-0a1b2c3d4e5f ").indicator_id
    assert read_query("10.1.2.3").indicator_type is IndicatorType.IPV4
    assert read_query("D41D8CD98F00B204E9800998ECF8427E").indicator_type is IndicatorType.MD5
    assert read_query("http://a.example/x").indicator_type is IndicatorType.URL
    assert read_query("a.example").indicator_type is IndicatorType.FQDN
    with pytest.raises(ValueError, match="give an indicator"):
        read_query("  ")


async def test_nothing_found_anywhere_says_what_the_checkpoint_means(ctx: Ctx) -> None:
    record, _, _ = accepted_ipv4()
    await FeedState(ctx.redis).advance(datetime.now(UTC), "run-1")

    answer = await ctx.explain(record["id"])

    assert answer.verdict is Verdict.NOT_UPLOADED
    assert "before the checkpoint" in answer.headline


# ---- suppressed -----------------------------------------------------------------------------


async def test_suppressed_with_its_reason_and_time(ctx: Ctx) -> None:
    record, _, _ = accepted_ipv4()
    added = datetime(2026, 5, 4, 3, 2, 1, tzinfo=UTC)
    keep_out = Suppression(record["id"], record["value"], "ipv4", "our own proxy", added)
    await ctx.state.suppressions.add(keep_out)

    answer = await ctx.explain(record["value"])

    assert answer.verdict is Verdict.SUPPRESSED
    assert answer.headline.startswith("suppressed since 2026-05-04T03:02:01.000Z: our own proxy")
    assert answer.suppression == keep_out.to_dict()


async def test_an_attributed_indicator_names_its_threat_actors(ctx: Ctx) -> None:
    """Whose infrastructure it is, as MATI attributes it: each threat actor once, by name and
    MATI id, in the answer and its text; malware stays out (it is a label)."""
    record, indicator = find(lambda i, v: len(actors_of(i)) > 0 and len(i.malware) > 0)
    answer = await ctx.explain(record["id"])
    assert answer.indicator is not None
    expected = [{"id": a.mati_id, "name": a.name} for a in actors_of(indicator)]
    assert answer.indicator["threat_actors"] == expected
    line = next(line for line in render(answer).splitlines() if "attributed" in line)
    assert line == "  attributed   " + ", ".join(f"{a['name']} ({a['id']})" for a in expected)
    assert not any(name in line for name in indicator.malware)
    plain, _ = find(lambda i, v: not i.associations)
    unattributed = await ctx.explain(plain["id"])
    assert unattributed.indicator is not None
    assert unattributed.indicator["threat_actors"] == []
    assert "attributed" not in render(unattributed)
