"""Telemetry in the chart: OTLP egress only towards a configured collector, and optional
Prometheus Operator monitors that find the pods' /metrics and pass the operator's own schema.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.telemetry import metrics, tracing
from tests.chart.chart_rig import (
    VARIANTS,
    Manifest,
    configmap_env,
    deployments,
    of_kind,
    one,
    render,
)
from tests.helm_tools import ROOT, TOOLS, helm_template

OTLP_PORTS = {(4317, "TCP"), (4318, "TCP")}
MONITORS = ("PodMonitor", "ServiceMonitor")

pytestmark = pytest.mark.usefixtures("chart_tools")


def _egress_rules(docs: list[Manifest]) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = one(docs, "NetworkPolicy")["spec"]["egress"]
    return rules


def _ports(rule: dict[str, Any]) -> set[tuple[int, str]]:
    return {(p["port"], p.get("protocol", "TCP")) for p in rule["ports"]}


@pytest.mark.parametrize("variant", ["servicebus", "redis", "keyvault", "servicemonitor"])
def test_no_otlp_egress_or_variables_without_an_endpoint(variant: str) -> None:
    docs = render(variant)
    for rule in _egress_rules(docs):
        assert not _ports(rule) & OTLP_PORTS, rule
    assert not [name for name in configmap_env(docs) if name.startswith("OTEL_")]


def test_otlp_endpoint_opens_egress_to_the_collector_and_configures_the_exporters() -> None:
    docs = render("telemetry")
    env = configmap_env(docs)
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.monitoring.svc:4318"
    assert env["OTEL_TRACES_EXPORTER"] == "otlp"
    assert env["OTEL_METRICS_EXPORTER"] == "otlp"
    assert env["OTEL_TRACES_SAMPLER_ARG"] == "0.1"
    (otlp,) = [rule for rule in _egress_rules(docs) if _ports(rule) & OTLP_PORTS]
    assert _ports(otlp) == OTLP_PORTS
    assert otlp["to"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    # The other egress rules stay as they were, to any destination.
    others = [rule for rule in _egress_rules(docs) if rule is not otlp]
    assert others == _egress_rules(render("servicebus"))
    # What the services make of these variables: OTLP exporters, nothing they refuse.
    assert tracing.exporter_names(env) == ["otlp"]
    readers = metrics.exporter_readers(env)
    try:
        assert len(readers) == 1
    finally:
        for reader in readers:
            reader.shutdown()


def test_otlp_ports_and_signals_are_values() -> None:
    docs = render(
        "servicebus",
        "opentelemetry.endpoint=http://collector:4319",
        "networkPolicy.otlp.ports[0].port=4319",
        "opentelemetry.traces=false",
    )
    (otlp,) = [rule for rule in _egress_rules(docs) if (4319, "TCP") in _ports(rule)]
    assert _ports(otlp) == {(4319, "TCP")}
    assert "to" not in otlp, "no peers given: any destination"
    env = configmap_env(docs)
    assert env["OTEL_TRACES_EXPORTER"] == "none"
    assert env["OTEL_METRICS_EXPORTER"] == "otlp"
    env = configmap_env(render("telemetry", "opentelemetry.metrics=false"))
    assert env["OTEL_METRICS_EXPORTER"] == "prometheus"


def test_otlp_endpoint_on_a_port_the_policy_does_not_open_is_refused() -> None:
    site = VARIANTS["servicebus"]
    result = helm_template(*site, sets=("opentelemetry.endpoint=http://collector:9999",))
    assert result.returncode != 0
    assert "port 9999, which the NetworkPolicy does not open" in result.stderr
    # HTTPS on 443 is open already; without a NetworkPolicy nothing needs opening.
    assert (
        helm_template(*site, sets=("opentelemetry.endpoint=https://otlp.example",)).returncode == 0
    )
    result = helm_template(
        *site, sets=("opentelemetry.endpoint=http://collector:9999", "networkPolicy.enabled=false")
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("variant", ["servicebus", "redis", "keyvault"])
def test_no_monitors_by_default(variant: str) -> None:
    docs = render(variant)
    for kind in (*MONITORS, "Service"):
        assert not of_kind(docs, kind), kind


def _pod_labels(docs: list[Manifest]) -> dict[str, dict[str, str]]:
    return {c: d["spec"]["template"]["metadata"]["labels"] for c, d in deployments(docs)}


def _container_port_names(docs: list[Manifest]) -> dict[str, set[str]]:
    names = {}
    for component, d in deployments(docs):
        (c,) = d["spec"]["template"]["spec"]["containers"]
        names[component] = {p["name"] for p in c["ports"]}
    return names


def test_pod_monitor_scrapes_metrics_on_every_services_health_port() -> None:
    docs = render("telemetry")
    assert not of_kind(docs, "ServiceMonitor")
    monitor = one(docs, "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selector = monitor["spec"]["selector"]["matchLabels"]
    for component, labels in _pod_labels(docs).items():
        assert selector.items() <= labels.items(), component
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    for names in _container_port_names(docs).values():
        assert endpoint["port"] in names
    assert "app.kubernetes.io/component" in monitor["spec"]["podTargetLabels"]


def test_service_monitor_scrapes_every_pod_through_a_headless_service() -> None:
    docs = render("servicemonitor")
    assert not of_kind(docs, "PodMonitor")
    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service", "-metrics")
    assert service["spec"]["clusterIP"] == "None"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["mati2sentinel"]}
    for component, labels in _pod_labels(docs).items():
        assert service["spec"]["selector"].items() <= labels.items(), component
    (port,) = service["spec"]["ports"]
    assert port["port"] == int(configmap_env(docs)["HEALTH_PORT"])
    for names in _container_port_names(docs).values():
        assert port["targetPort"] in names
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint == {"port": port["name"], "path": "/metrics", "interval": "15s",
                        "scrapeTimeout": "5s"}  # fmt: skip


def test_one_monitor_kind_at_a_time() -> None:
    result = helm_template(*VARIANTS["telemetry"], sets=("monitoring.serviceMonitor.enabled=true",))
    assert result.returncode != 0
    assert "podMonitor or serviceMonitor, not both" in result.stderr


def _monitoring_validate(path: Path) -> subprocess.CompletedProcess[str]:
    command = ["node", str(ROOT / "scripts" / "monitoring-validate.mjs"), str(path)]
    env = {"MONITORING_TOOLS_DIR": str(TOOLS / "node"), "PATH": os.environ["PATH"]}
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=30, env=env)


@pytest.mark.parametrize("variant", ["telemetry", "servicemonitor"])
def test_monitors_pass_the_operator_schema_and_a_broken_one_does_not(
    variant: str, tmp_path: Path
) -> None:
    docs = render(variant)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump_all(docs))
    result = _monitoring_validate(good)
    assert result.returncode == 0, result.stderr
    assert "1 Prometheus Operator object(s) valid" in result.stdout
    kind = "PodMonitor" if variant == "telemetry" else "ServiceMonitor"
    monitor = one(docs, kind)
    spec = monitor["spec"]
    key = "podMetricsEndpoints" if kind == "PodMonitor" else "endpoints"
    endpoint = spec[key][0]
    broken_specs = [
        {**spec, "podTargetLabelz": ["x"]},  # a field the operator does not know
        {**spec, "selector": {"matchLabels": {"a": "b"}}},  # selects nothing rendered
        {**spec, key: [{**endpoint, "port": "metrics"}]},  # a port nobody has
        {**spec, key: [{**endpoint, "interval": "every 30s"}]},  # not a duration
        {**spec, key: [{**endpoint, "scrapeTimeout": "2m"}]},  # longer than the interval
    ]
    for i, bad in enumerate(broken_specs):
        path = tmp_path / f"bad-{i}.yaml"
        path.write_text(
            yaml.safe_dump_all([{**d, "spec": bad} if d is monitor else d for d in docs])
        )
        result = _monitoring_validate(path)
        assert result.returncode == 1, f"accepted {bad}"
        assert f"{kind}/{monitor['metadata']['name']}" in result.stderr
