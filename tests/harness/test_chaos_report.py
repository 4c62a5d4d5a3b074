"""The chaos run's table and results file (``harness.chaos.report``): kills counted by service
and phase with how many were seen in their phase, the faults by simulator and kind, the
duplicates per kill, the dead letters against the planted records, and each check as pass or
FAIL with its problems; the results file holds every run and passes only if all did."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.chaos.report import Outcome, kills_by_phase, rows, table, write


def kill(service: str, phase: str, observed: bool) -> dict[str, Any]:
    return {"service": service, "phase": phase, "observed": observed, "at_s": 1.0}


def outcome(**checks: list[str]) -> Outcome:
    return Outcome(
        bus="redis",
        seed=16,
        command="python -m harness.chaos --bus redis",
        indicators=50_000,
        planted=12,
        duration_s=612.4,
        window_s=400.0,
        kills=[
            kill("uploader", "mid-commit", True),
            kill("uploader", "mid-commit", False),
            kill("fetcher", "mid-page", True),
        ],
        redis_kills=[{"at_s": 10.0, "down_s": 0.8}, {"at_s": 90.0, "down_s": 2.5}],
        faults={"sentinel": {"5xx": 3, "stall_halfway": 2}, "mati": {}},
        peer_faults=None,
        tokens={"minted (life 120 s)": 40, "revoked": 1},
        cursor_expiries=1,
        operator={"suppressed": 3},
        ledger={
            "versions": 52_000,
            "uploads": 52_600,
            "duplicates": 600,
            "duplicates_per_kill": 600 / 5,
            "worst": [["indicator--a", "fp"], 3, 4],
            "explained_by": {"uploader_kill": 500},
            "disruptions": 9,
        },
        dead_letters={"indicators": 12, "upload": 0, "revoke": 0},
        drain_after_last_fault_s=41.0,
        checks=dict(checks),
    )


def test_kills_are_counted_by_service_and_phase_with_those_seen() -> None:
    assert kills_by_phase(outcome().kills) == {
        "fetcher mid-page": "1 (1 seen)",
        "uploader mid-commit": "2 (1 seen)",
    }


def test_the_table_names_every_figure_and_each_check() -> None:
    result = outcome(**{"workspace": [], "no process needed a hand": ["filter-0.3 exited"]})
    shown = dict(rows(result))
    assert shown["service kills"] == "3: fetcher 1, uploader 2; phase seen 2, random 1"
    assert shown["Redis kills"] == "2, down 0.8-2.5 s"
    assert shown["faults fired"] == "sentinel 5 (5xx 3, stall_halfway 2); mati 0 ()"
    assert shown["duplicates"].startswith("600 (120.00 per kill)")
    assert shown["most uploads of one version"] == "3 (bound 4): ['indicator--a', 'fp']"
    assert shown["dead letters"] == "indicators 12, upload 0, revoke 0 (planted 12)"
    assert shown["drain after the last fault"] == "41 s"
    assert shown["check: workspace"] == "pass"
    assert shown["check: no process needed a hand"] == "FAIL: filter-0.3 exited"
    lines = table(result).splitlines()
    assert lines[:2] == ["| figure | value |", "|---|---|"]
    assert len(lines) == 2 + len(shown)


def test_the_results_file_passes_only_if_every_run_did(tmp_path: Path) -> None:
    path = tmp_path / "chaos-results.json"
    passed, failed = outcome(workspace=[]), outcome(workspace=["3 objects missing"])
    failed.bus = "servicebus"
    write([passed], path)
    assert json.loads(path.read_text())["passed"] is True
    write([passed, failed], path)
    document = json.loads(path.read_text())
    assert document["passed"] is False
    assert document["runs"]["redis"]["passed"] is True
    assert document["runs"]["servicebus"]["checks"] == {"workspace": ["3 objects missing"]}
