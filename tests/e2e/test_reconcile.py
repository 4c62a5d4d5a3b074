"""Issue 15 through the real services, the real CLI and the Log Analytics simulator read with
the real ``azure-monitor-query`` client: a lost Redis costs a query, not a re-upload, and
``reconcile`` reports exactly the drift made in the workspace, ``--repair`` removes it."""

from __future__ import annotations

import copy
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from harness.pipeline import DESTINATION, Pipeline, mati_properties
from shared.adapters.destination_state import DestinationState
from shared.adapters.workspace_state import WorkspaceState
from shared.core.fingerprint import EXTENSION_ID
from simulators.feed import Feed
from simulators.sentinel_validation import parse_timestamp


def _workspace(pipeline: Pipeline) -> WorkspaceState:
    assert pipeline.redis is not None
    return WorkspaceState(pipeline.redis, DestinationState(pipeline.redis, DESTINATION))


@pytest.mark.timeout(240)
async def test_a_lost_redis_is_rebuilt_from_the_workspace_without_re_uploading(
    tmp_path: Path, bus_env: dict[str, str]
) -> None:
    """Back-fill, FLUSHALL, sync again: the uploader rebuilds the seen cache from Log
    Analytics while the filter holds, and the second sync (a whole look-back again, since the
    checkpoint went with Redis) uploads at most 1% of the first; the workspace still equals
    the accepted set."""
    feed = Feed(seed=83, count=800, days=20)
    async with Pipeline(tmp_path, feed=feed, env=bus_env) as pipeline:
        filter_ = await pipeline.start_service("filter")
        uploader = await pipeline.start_service("uploader")
        assert await pipeline.sync_once() == 0
        await pipeline.wait_drained(timeout_s=120)
        sentinel = pipeline.sims.sentinel
        # An analyst's suppression lives in Redis too; the workspace remembers it.
        accepted = pipeline.expected().objects
        kept_out = sorted(accepted)[0]
        mati_id = mati_properties(sentinel.store[kept_out])["mati_id"]
        code = await pipeline.command(
            "suppress", "add", mati_id, "--reason", "our proxy", label="suppress"
        )
        assert code == 0
        await pipeline.wait_drained(timeout_s=60)
        assert kept_out in sentinel.revoked
        del accepted[kept_out]
        first = len(sentinel.rows)
        assert set(sentinel.store) - {kept_out} == set(accepted)
        assert first >= len(accepted)

        # A failover of a cache without persistence: every key is gone, the pods restart.
        assert await pipeline.stop_service(filter_) == 0
        assert await pipeline.stop_service(uploader) == 0
        assert pipeline.redis is not None
        await pipeline.redis.flushall()
        assert await _workspace(pipeline).born() is None
        await pipeline.start_service("filter")
        await pipeline.start_service("uploader")
        # On Service Bus the queues outlive Redis, and its duplicate detection would drop the
        # very records the first sync published minutes ago: a full sync's are re-judged.
        assert await pipeline.sync_once(full=bus_env.get("BUS") == "servicebus") == 0
        await pipeline.wait_drained(timeout_s=120)

        again = len(sentinel.rows) - first
        assert again <= first // 100, f"{again} uploads after the flush, {first} before"
        assert set(sentinel.store) - {kept_out} == set(accepted)
        assert kept_out in sentinel.revoked, "still suppressed: not published again"
        suppressed = await _workspace(pipeline).state.suppressions.snapshot()
        assert [s.reason for s in suppressed.by_id.values()] == ["our proxy"]
        for stix_id, fingerprint in accepted.items():
            assert mati_properties(sentinel.store[stix_id])["fingerprint"] == fingerprint
        born = await _workspace(pipeline).born()
        assert born is not None
        assert born["how"] == "rebuilt"
        assert born["objects"] == len(accepted) + 1, "the live ones and the revoked one"
        _, counters = await pipeline.counters()
        assert counters.get("dropped_unchanged", 0) >= len(accepted) - again


async def _reconcile(pipeline: Pipeline, *args: str, label: str) -> tuple[int, dict[str, Any]]:
    """``mati2sentinel reconcile --json --quiet [args]``: its exit code and its report."""
    code = await pipeline.command(
        "reconcile", "--json", "--quiet", *args, label=label, timeout_s=120
    )
    log = (pipeline.state_dir / "logs" / f"{label}.log").read_text()
    report, _ = json.JSONDecoder().raw_decode(log[log.index("{\n") :])  # past its log lines
    return code, report


def _drift(report: dict[str, Any]) -> dict[str, int]:
    return {kind: n for kind, n in report["counts"].items() if n and kind != "agreeing"}


@pytest.mark.timeout(300)
async def test_reconcile_reports_exactly_the_drift_and_repair_removes_it(
    tmp_path: Path, bus_env: dict[str, str]
) -> None:
    """Uploads still inside the grace are in flight, not missing; then, out of grace, 50
    objects removed from the workspace and 50 made stale are reported exactly, ``--repair``
    restores them through the pipeline, and a second reconcile finds no drift."""
    feed = Feed(seed=89, count=1200, days=5)  # every record reported within its expiration
    env = {**bus_env, "MATI_REQUESTS_PER_SECOND": "50"}
    async with Pipeline(tmp_path, feed=feed, env=env) as pipeline:
        analytics, sentinel = pipeline.sims.log_analytics, pipeline.sims.sentinel
        analytics.ingestion_delay = 3600.0  # nothing uploaded is visible yet
        await pipeline.first_sync()
        accepted = pipeline.expected().objects
        code, report = await _reconcile(pipeline, label="reconcile-in-grace")
        assert (code, _drift(report)) == (0, {"in_flight": len(accepted)})

        analytics.ingestion_delay = 0.0
        pipeline.change_settings({"RECONCILE_GRACE_MINUTES": "0"})
        ids = sorted(accepted)
        removed, fingerprints, validity = ids[:50], ids[50:75], ids[75:100]
        for stix_id in removed:
            sentinel.delete(stix_id)
        for stix_id in fingerprints:
            older = copy.deepcopy(sentinel.store[stix_id])
            older["extensions"][EXTENSION_ID]["fingerprint"] = "0" * 32
            sentinel.overwrite(older)
        for stix_id in validity:
            shorter = copy.deepcopy(sentinel.store[stix_id])
            until = parse_timestamp(shorter["valid_until"])
            assert until is not None
            earlier = until - timedelta(hours=1)
            shorter["valid_until"] = earlier.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
            sentinel.overwrite(shorter)

        code, report = await _reconcile(pipeline, label="reconcile-drift")
        assert code == 1
        assert _drift(report) == {"missing": 50, "stale": 50}
        assert set(report["samples"]["missing"]) <= set(removed)
        assert set(report["samples"]["stale"]) <= set(fingerprints + validity)
        assert report["counts"]["agreeing"] == len(accepted) - 100
        assert report["streak"] == 1

        mark = len(sentinel.rows)
        code, report = await _reconcile(pipeline, "--repair", label="reconcile-repair")
        assert code == 0, report
        assert report["repair"]["requeued"] == 100
        await pipeline.wait_drained(timeout_s=120)
        uploaded = {str(row["Data"]["id"]) for row in sentinel.rows[mark:]}
        assert uploaded == set(removed + fingerprints), "the stale validity is only re-learnt"
        for stix_id in removed + fingerprints:
            assert mati_properties(sentinel.store[stix_id])["fingerprint"] == accepted[stix_id]

        code, report = await _reconcile(pipeline, label="reconcile-after")
        assert (code, _drift(report), report["streak"]) == (0, {}, 0)
        assert report["counts"]["agreeing"] == len(accepted)
