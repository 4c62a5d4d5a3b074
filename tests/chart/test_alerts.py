"""The Prometheus alert rules, evaluated by Prometheus's own rule engine: ``promtool test rules``
on ``deploy/prometheus/alerts.test.yaml``, where every alert of ``alerts.yaml`` has cases in
which it must fire (with its labels and rendered annotations) and cases in which it must not,
and where it must fire for one broken destination alone beside healthy ones.

promtool comes with Debian's ``prometheus`` package; ``scripts/ensure-prometheus.sh`` (run by
``make chart``, and here) installs it when it is missing and we are root.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.prometheus_tools import ensure_prometheus

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yaml"
DESTINATION = re.compile(r'\bdestination="([^"]+)"')


@pytest.fixture(scope="module")
def promtool() -> str:
    return ensure_prometheus("promtool")


def _alert_names() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {str(rule["alert"]) for group in groups for rule in group["rules"] if "alert" in rule}


def _rule_tests() -> dict[str, Any]:
    tests: dict[str, Any] = yaml.safe_load(RULE_TESTS.read_text())
    return tests


def test_the_rules_are_valid(promtool: str) -> None:
    result = subprocess.run(
        [promtool, "check", "rules", str(RULES)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alerts_fire_and_stay_silent_as_their_unit_tests_say(promtool: str) -> None:
    result = subprocess.run(
        [promtool, "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    assert [str(f) for f in _rule_tests()["rule_files"]] == [RULES.name]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in _rule_tests()["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    alerts = _alert_names()
    assert alerts
    assert not (firing | silent) - alerts, "tests of alerts that do not exist (they pass vacuously)"
    assert not alerts - firing, f"alerts never shown to fire: {sorted(alerts - firing)}"
    assert not alerts - silent, f"alerts never shown to stay silent: {sorted(alerts - silent)}"


def test_every_alert_fires_for_the_broken_destination_alone() -> None:
    """Each alert has a firing check whose series hold several destinations, of which it fires
    for some only, each alert labelled with its own: promtool compares the labels exactly, so a
    rule that added destinations up or lost the label could not pass it."""
    shown: set[str] = set()
    unlabelled = []
    for case in _rule_tests()["tests"]:
        present = {
            name
            for series in case.get("input_series", [])
            for name in DESTINATION.findall(series["series"])
        }
        for check in case.get("alert_rule_test", []):
            expected = check.get("exp_alerts") or []
            firing = {alert.get("exp_labels", {}).get("destination") for alert in expected}
            if None in firing:
                unlabelled.append(f"{check['alertname']} at {check['eval_time']}")
            elif expected and len(present) >= 2 and firing < present:
                shown.add(check["alertname"])
    assert not unlabelled, f"expected alerts without their destination: {unlabelled}"
    missing = sorted(_alert_names() - shown)
    assert not missing, f"alerts never shown to fire for one destination among others: {missing}"
