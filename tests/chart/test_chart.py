"""The Helm chart, rendered by the real (pinned) helm: what Kubernetes will run.

Each variant is the chart's values.yaml (or values-redis.yaml) with an example site on top
(``ci/*.yaml``), as an operator installs it. The tests assert the properties the deployment
relies on: pod security, probes on the health port, secrets only by reference, a grace period
longer than the drain, one fetcher, KEDA scaling on the entities the services really read, OTLP
egress only towards a configured collector, optional Prometheus Operator monitors that find the
pods' /metrics, and a values schema that refuses bad settings. ``scripts/check-chart.sh`` adds
lint, kubernetes-validate, the KEDA and Prometheus Operator schemas on the same renders.
"""

from __future__ import annotations

import math
import os
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from redis.asyncio import Redis

from shared.adapters.redis_streams import GROUP, RedisStreamsBus
from shared.contract.messages import INDICATORS, subscription, upload_queue
from shared.core.settings import Service, Settings, load_settings
from shared.telemetry import metrics, tracing
from tests.helm_tools import CHART, ROOT, TOOLS, helm_template, install_chart_tools

VARIANTS: dict[str, list[Path]] = {
    "servicebus": [CHART / "ci" / "site-values.yaml"],
    "redis": [CHART / "values-redis.yaml", CHART / "ci" / "redis-site-values.yaml"],
    "keyvault": [CHART / "ci" / "keyvault-values.yaml"],
    "telemetry": [CHART / "ci" / "site-values.yaml", CHART / "ci" / "telemetry-values.yaml"],
    "servicemonitor": [
        CHART / "values-redis.yaml",
        CHART / "ci" / "redis-site-values.yaml",
        CHART / "ci" / "servicemonitor-values.yaml",
    ],
}
COMPONENTS = ("fetcher", "filter", "uploader")
SECRET_VARS = {
    "MATI_API_KEY",
    "MATI_API_SECRET",
    "AZURE_CLIENT_SECRET",
    "SERVICEBUS_CONNECTION_STRING",
    "REDIS_URL",
}
#: Chart settings the services do not read yet (the Service Bus backend is being added).
CHART_ONLY_SETTINGS = {"SERVICEBUS_NAMESPACE"}

Manifest = dict[str, Any]


@pytest.fixture(scope="session", autouse=True)
def _chart_tools() -> None:
    install_chart_tools()


@cache
def _render(variant: str, sets: tuple[str, ...] = ()) -> tuple[Manifest, ...]:
    result = helm_template(*VARIANTS[variant], sets=sets)
    assert result.returncode == 0, result.stderr
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


def render(variant: str, *sets: str) -> list[Manifest]:
    return list(_render(variant, tuple(sets)))


def of_kind(docs: list[Manifest], kind: str) -> list[Manifest]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[Manifest], kind: str, name_suffix: str = "") -> Manifest:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"{kind} *{name_suffix}: {[d['metadata']['name'] for d in found]}"
    return found[0]


def deployments(docs: list[Manifest]) -> Iterator[tuple[str, Manifest]]:
    for d in of_kind(docs, "Deployment"):
        yield d["metadata"]["labels"]["app.kubernetes.io/component"], d


def configmap_env(docs: list[Manifest]) -> dict[str, str]:
    data: dict[str, str] = one(docs, "ConfigMap", "-settings")["data"]
    return data


# --------------------------------------------------------------------------------------------
# What the chart renders


@pytest.mark.parametrize("variant", VARIANTS)
def test_three_deployments_one_image_python_m_entrypoints(variant: str) -> None:
    docs = render(variant)
    found = dict(deployments(docs))
    assert set(found) == set(COMPONENTS)
    images = set()
    for component, d in found.items():
        (container,) = d["spec"]["template"]["spec"]["containers"]
        assert container["command"] == ["python", "-m", f"services.{component}"]
        images.add(container["image"])
    assert len(images) == 1


@pytest.mark.parametrize("variant", VARIANTS)
def test_pod_security_on_every_pod_and_container(variant: str) -> None:
    for component, d in deployments(render(variant)):
        pod = d["spec"]["template"]["spec"]
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True, component
        assert isinstance(psc["runAsUser"], int)
        assert psc["runAsUser"] > 0
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        containers = pod["containers"] + pod.get("initContainers", [])
        for c in containers:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["privileged"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
            assert "add" not in sc["capabilities"]
            # A read-only root needs a writable /tmp.
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert "/tmp" in mounts  # noqa: S108 - the pod's own emptyDir
            (tmp,) = [v for v in pod["volumes"] if v["name"] == mounts["/tmp"]]  # noqa: S108
            assert "emptyDir" in tmp
            assert c["resources"]["requests"]
            assert c["resources"]["limits"]["memory"]
        assert "hostNetwork" not in pod
        assert "hostPID" not in pod


@pytest.mark.parametrize("variant", VARIANTS)
def test_probes_on_livez_and_readyz_at_the_health_port(variant: str) -> None:
    docs = render(variant)
    port = int(configmap_env(docs)["HEALTH_PORT"])
    assert port == 8080
    for component, d in deployments(docs):
        (c,) = d["spec"]["template"]["spec"]["containers"]
        assert c["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
        assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}, component
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert c["startupProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
        # /readyz runs its checks with a 2 s timeout each; the probe must wait longer.
        assert c["readinessProbe"]["timeoutSeconds"] > 2


def test_health_port_setting_moves_port_probe_and_policy_together() -> None:
    docs = render("servicebus", "settings.HEALTH_PORT=9090")
    assert configmap_env(docs)["HEALTH_PORT"] == "9090"
    for _, d in deployments(docs):
        (c,) = d["spec"]["template"]["spec"]["containers"]
        assert c["ports"][0]["containerPort"] == 9090
    policy = one(docs, "NetworkPolicy")
    assert policy["spec"]["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}]


@pytest.mark.parametrize(("drain", "grace"), [(None, 40), ("60.5", 76), ("1", 16)])
def test_termination_grace_period_outlasts_the_drain(drain: str | None, grace: int) -> None:
    sets = () if drain is None else (f"settings.DRAIN_TIMEOUT_SECONDS={drain}",)
    docs = render("servicebus", *sets)
    drain_s = float(configmap_env(docs)["DRAIN_TIMEOUT_SECONDS"])
    assert drain_s == float(drain or 25)
    for _, d in deployments(docs):
        period = d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert period == grace
        assert period >= math.ceil(drain_s) + 5


@pytest.mark.parametrize("variant", VARIANTS)
def test_one_fetcher_recreated_never_two(variant: str) -> None:
    fetcher = dict(deployments(render(variant)))["fetcher"]
    assert fetcher["spec"]["replicas"] == 1
    assert fetcher["spec"]["strategy"] == {"type": "Recreate"}
    assert not [
        s
        for s in of_kind(render(variant), "ScaledObject")
        if s["metadata"]["name"].endswith("-fetcher")
    ]


def test_scaled_deployments_leave_replicas_to_keda_and_plain_ones_keep_them() -> None:
    scaled = dict(deployments(render("servicebus")))
    assert "replicas" not in scaled["filter"]["spec"]
    assert "replicas" not in scaled["uploader"]["spec"]
    plain = dict(deployments(render("keyvault")))
    assert plain["filter"]["spec"]["replicas"] == 2
    assert plain["uploader"]["spec"]["replicas"] == 2
    assert not of_kind(render("keyvault"), "ScaledObject")


@pytest.mark.parametrize("variant", VARIANTS)
def test_pdb_per_component_selects_its_pods(variant: str) -> None:
    docs = render(variant)
    for component, d in deployments(docs):
        pdb = one(docs, "PodDisruptionBudget", f"-{component}")
        assert pdb["spec"]["selector"]["matchLabels"] == d["spec"]["selector"]["matchLabels"]
        assert pdb["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("variant", VARIANTS)
def test_network_policy_health_port_in_dns_https_bus_out(variant: str) -> None:
    docs = render(variant)
    policy = one(docs, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}]
    egress = {
        (p["port"], p.get("protocol", "TCP")) for rule in policy["egress"] for p in rule["ports"]
    }
    assert {(53, "UDP"), (53, "TCP"), (443, "TCP")} <= egress
    if configmap_env(docs)["BUS"] == "redis":
        assert (6379, "TCP") in egress
    else:
        assert {(5671, "TCP"), (6380, "TCP")} <= egress
    selector = policy["podSelector"]["matchLabels"]
    for _, d in deployments(docs):
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items()


# --------------------------------------------------------------------------------------------
# Secrets only by reference


def _secret_refs(d: Manifest) -> dict[str, dict[str, str]]:
    (c,) = d["spec"]["template"]["spec"]["containers"]
    refs = {}
    for e in c.get("env", []):
        assert "value" not in e, f"literal env {e['name']} in {d['metadata']['name']}"
        refs[e["name"]] = e["valueFrom"]["secretKeyRef"]
    return refs


@pytest.mark.parametrize("variant", VARIANTS)
def test_secrets_only_via_secret_key_ref_and_each_service_only_its_own(variant: str) -> None:
    docs = render(variant)
    env = configmap_env(docs)
    assert not SECRET_VARS & (env.keys() - {"REDIS_URL"})
    assert "@" not in env.get("REDIS_URL", ""), "a Redis URL with credentials in a ConfigMap"
    assert not of_kind(docs, "Secret"), "the chart never writes a Secret itself"
    refs = {component: _secret_refs(d) for component, d in deployments(docs)}
    assert {"MATI_API_KEY", "MATI_API_SECRET"} <= refs["fetcher"].keys()
    assert not {"MATI_API_KEY", "MATI_API_SECRET"} & (
        refs["filter"].keys() | refs["uploader"].keys()
    )
    assert "AZURE_CLIENT_SECRET" not in refs["fetcher"].keys() | refs["filter"].keys()
    for component_refs in refs.values():
        assert component_refs.keys() <= SECRET_VARS
        for ref in component_refs.values():
            assert ref["name"]
            assert ref["key"]
    if variant == "keyvault":
        # REDIS_URL carries a password here: from the Secret, for every service, not in the map.
        assert "REDIS_URL" not in env
        assert all("REDIS_URL" in r for r in refs.values())


def test_workload_identity_service_account_and_pod_label() -> None:
    docs = render("servicebus")
    sa = one(docs, "ServiceAccount")
    assert sa["metadata"]["annotations"]["azure.workload.identity/client-id"] == (
        "0d3c6a9e-2b7f-4c1d-8e5a-6f4b3a2c1d0e"
    )
    for component, d in deployments(docs):
        pod = d["spec"]["template"]
        assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true", component
        assert pod["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    refs = {component: _secret_refs(d) for component, d in deployments(docs)}
    assert "AZURE_CLIENT_SECRET" not in refs["uploader"], "no client secret with workload identity"


def test_client_secret_instead_of_workload_identity_reaches_only_the_uploader() -> None:
    docs = render("redis")
    refs = {component: _secret_refs(d) for component, d in deployments(docs)}
    assert refs["uploader"]["AZURE_CLIENT_SECRET"] == {
        "name": "mati2sentinel-credentials",
        "key": "azure-client-secret",
    }
    for _, d in deployments(docs):
        assert "azure.workload.identity/use" not in d["spec"]["template"]["metadata"]["labels"]


def test_key_vault_synced_secret_is_the_one_referenced_and_mounted_to_sync() -> None:
    docs = render("keyvault")
    spc = one(docs, "SecretProviderClass")
    (synced,) = spc["spec"]["secretObjects"]
    assert spc["spec"]["provider"] == "azure"
    assert spc["spec"]["parameters"]["clientID"] == "0d3c6a9e-2b7f-4c1d-8e5a-6f4b3a2c1d0e"
    objects = yaml.safe_load(spc["spec"]["parameters"]["objects"])["array"]
    object_names = {yaml.safe_load(o)["objectName"] for o in objects}
    assert {item["objectName"] for item in synced["data"]} == object_names
    keys = {item["key"] for item in synced["data"]}
    for component, d in deployments(docs):
        pod = d["spec"]["template"]["spec"]
        for ref in _secret_refs(d).values():
            assert ref["name"] == synced["secretName"]
            assert ref["key"] in keys
        (csi,) = [v for v in pod["volumes"] if "csi" in v]
        assert csi["csi"]["volumeAttributes"]["secretProviderClass"] == spc["metadata"]["name"]
        (c,) = pod["containers"]
        assert csi["name"] in {m["name"] for m in c["volumeMounts"]}, component


def test_ca_bundle_is_mounted_and_named_by_ssl_cert_file() -> None:
    docs = render("keyvault")
    path = configmap_env(docs)["SSL_CERT_FILE"]
    for _, d in deployments(docs):
        pod = d["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        (mount,) = [m for m in c["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
        assert mount["readOnly"] is True


# --------------------------------------------------------------------------------------------
# KEDA


def _triggers(docs: list[Manifest], component: str) -> list[dict[str, Any]]:
    so = one(docs, "ScaledObject", f"-{component}")
    target = dict(deployments(docs))[component]["metadata"]["name"]
    assert so["spec"]["scaleTargetRef"]["name"] == target
    triggers: list[dict[str, Any]] = so["spec"]["triggers"]
    return triggers


@pytest.mark.parametrize("destination", ["default", "prod-eu"])
def test_keda_service_bus_scales_on_the_subscription_and_the_upload_queue(destination: str) -> None:
    docs = render("servicebus", f"settings.DESTINATION={destination}")
    (f,) = _triggers(docs, "filter")
    (u,) = _triggers(docs, "uploader")
    assert f["type"] == u["type"] == "azure-servicebus"
    assert f["metadata"]["topicName"] == INDICATORS.name == subscription(destination).topic
    assert f["metadata"]["subscriptionName"] == subscription(destination).name == destination
    assert u["metadata"]["queueName"] == upload_queue(destination).name == f"upload.{destination}"
    for t in (f, u):
        assert t["metadata"]["namespace"] == "m2s-example"
        assert t["metadata"]["cloud"] == "AzurePublicCloud"
        assert int(t["metadata"]["messageCount"]) > 0
    auth = one(docs, "TriggerAuthentication")
    assert auth["spec"] == {"podIdentity": {"provider": "azure-workload"}}
    assert (
        f["authenticationRef"]["name"] == u["authenticationRef"]["name"] == auth["metadata"]["name"]
    )


def test_keda_uploader_replicas_stay_within_what_one_quota_uses() -> None:
    docs = render("servicebus")
    uploader = one(docs, "ScaledObject", "-uploader")
    assert 1 <= uploader["spec"]["maxReplicaCount"] <= 10
    assert one(docs, "ScaledObject", "-filter")["spec"]["maxReplicaCount"] >= 1


def test_keda_sovereign_cloud_namespace() -> None:
    docs = render(
        "servicebus", "settings.SERVICEBUS_NAMESPACE=m2s-gov.servicebus.usgovcloudapi.net"
    )
    (f,) = _triggers(docs, "filter")
    assert f["metadata"]["namespace"] == "m2s-gov"
    assert f["metadata"]["cloud"] == "AzureUSGovernmentCloud"


async def test_keda_redis_streams_scale_on_the_streams_the_bus_uses() -> None:
    client = Redis()
    try:
        bus = RedisStreamsBus(client, consumer="chart-test")
        for destination in ("default", "prod-eu"):
            docs = render("redis", f"settings.DESTINATION={destination}")
            (f,) = _triggers(docs, "filter")
            (u,) = _triggers(docs, "uploader")
            assert f["type"] == u["type"] == "redis-streams"
            assert f["metadata"]["stream"] == bus.keys(subscription(destination)).stream
            assert u["metadata"]["stream"] == bus.keys(upload_queue(destination)).stream
            assert f["metadata"]["stream"] == f"m2s:{{indicators/{destination}}}:stream"
            assert u["metadata"]["stream"] == f"m2s:{{upload.{destination}}}:stream"
            for t in (f, u):
                # Completed entries are deleted, so XLEN is the backlog; a consumerGroup would
                # switch KEDA to pending entries, which miss what was never delivered.
                assert "streamLength" in t["metadata"]
                assert t["metadata"].get("consumerGroup", GROUP) == GROUP
                assert t["metadata"]["address"] == "redis-master.redis.svc.cluster.local:6379"
                assert t["metadata"]["enableTLS"] == "false"
    finally:
        await client.aclose()


# --------------------------------------------------------------------------------------------
# Telemetry: OTLP egress towards a configured collector only, Prometheus Operator monitors

OTLP_PORTS = {(4317, "TCP"), (4318, "TCP")}
MONITORS = ("PodMonitor", "ServiceMonitor")


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


# --------------------------------------------------------------------------------------------
# Values: every setting, the services' defaults, and a schema that refuses bad ones


def _chart_values(name: str = "values.yaml") -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / name).read_text())
    return values


def _env_text(value: object) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    return str(value)


def test_values_expose_every_setting_of_the_services() -> None:
    chart_settings = set(_chart_values()["settings"])
    service_settings = {f.upper() for f in Settings.__dataclass_fields__ if f != "warnings"}
    missing = service_settings - chart_settings - SECRET_VARS
    assert not missing, f"settings the chart does not expose: {sorted(missing)}"
    unknown = chart_settings - service_settings - CHART_ONLY_SETTINGS
    assert not unknown, f"chart settings the services do not know: {sorted(unknown)}"
    assert set(_chart_values()["secrets"]["keys"]) == SECRET_VARS


def test_values_defaults_are_the_services_defaults() -> None:
    settings = _chart_values()["settings"]
    env = {k: _env_text(v) for k, v in settings.items() if v not in ("", None)}
    assert env.pop("BUS") == "servicebus"  # the one deliberate difference, documented
    # In a pod all three services listen on the one port the probes, the container port and the
    # NetworkPolicy name, whatever a service's own default is when it runs beside the others.
    assert env.pop("HEALTH_PORT") == "8080"
    loaded = load_settings(env, Service.ADMIN)
    assert loaded == Settings(), "values.yaml drifted from shared/core/settings.py defaults"


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("component", COMPONENTS)
def test_rendered_environment_passes_the_services_own_validation(
    variant: str, component: str, tmp_path: Path
) -> None:
    docs = render(variant)
    d = dict(deployments(docs))[component]
    env = dict(configmap_env(docs))
    for name in _secret_refs(d):
        env[name] = "rediss://:pw@cache.example:6380/0" if name == "REDIS_URL" else "x"
    if "azure.workload.identity/use" in d["spec"]["template"]["metadata"]["labels"]:
        token = tmp_path / "token"
        token.write_text("jwt")
        env["AZURE_FEDERATED_TOKEN_FILE"] = str(token)  # what the webhook injects
    if "SSL_CERT_FILE" in env:
        ca = tmp_path / "ca.crt"
        ca.write_text("-----BEGIN CERTIFICATE-----\n")
        env["SSL_CERT_FILE"] = str(ca)  # the mounted ConfigMap key
    load_settings(env, Service(component))


def test_site_values_are_required() -> None:
    result = helm_template()
    assert result.returncode != 0
    assert "secrets.existingSecret" in result.stderr
    result = helm_template(sets=("secrets.existingSecret=creds",))
    assert "AZURE_WORKSPACE_ID is required" in result.stderr
    site = CHART / "ci" / "site-values.yaml"
    result = helm_template(site, sets=("settings.SERVICEBUS_NAMESPACE=",))
    assert "SERVICEBUS_NAMESPACE is required" in result.stderr
    result = helm_template(site, sets=("settings.REDIS_URL=redis://127.0.0.1:6379/0",))
    assert "localhost" in result.stderr
    result = helm_template(site, sets=("keda.scaler=redis-streams",))
    assert "redis-streams needs settings.BUS=redis" in result.stderr


BAD_VALUES = [
    "settings.HASH_TYPE=sha512",
    "filter.replicas=-1",
    "uploader.replicas=-3",
    "fetcher.replicas=2",
    "filter.autoscaling.minReplicas=-1",
    "uploader.autoscaling.maxReplicas=11",
    "settings.MINIMUM_CONFIDENCE=101",
    "settings.MINIMUM_THREAT_SCORE=-1",
    "settings.INITIAL_LOOKBACK=91",
    "settings.INITIAL_LOOKBACK=0",
    "settings.IP_INDICATOR_EXPIRATION=366",
    "settings.SYNC_SCHEDULE=0",
    "settings.VALIDITY_REFRESH_RATIO=1.5",
    "settings.SENTINEL_REQUESTS_PER_MINUTE=101",
    "settings.SENTINEL_API=graph",
    "settings.DEFAULT_ACTION=drop",
    "settings.EXCLUDE_OSINT=maybe",
    "settings.BUS=kafka",
    "settings.DESTINATION=Prod_EU",
    "settings.HEALTH_PORT=0",
    "settings.DRAIN_TIMEOUT_SECONDS=0",
    "settings.MATI_BASE_URL=http://api.intelligence.mandiant.com",
    "settings.AZURE_WORKSPACE_ID=not-a-guid",
    "settings.SENTINEL_SOURCE_SYSTEM=Microsoft Sentinel",
    # Secrets never as values.
    "settings.MATI_API_KEY=abc",
    "settings.AZURE_CLIENT_SECRET=abc",
    "settings.REDIS_URL=rediss://:hunter2@cache.example:6380/0",
    "secrets.keys.MATI_API_KEY=",
    # Security is not a knob.
    "podSecurity.runAsUser=0",
    "drain.marginSeconds=0",
    "keda.scaler=cpu",
    "image.digest=latest",
    "unknownTopLevel=1",
    # Telemetry: an OTLP/HTTP URL without credentials; no endpoint or header by the back door.
    "opentelemetry.endpoint=grpc://otel-collector:4317",
    "opentelemetry.endpoint=https://user:pw@otlp.example:4318",
    "opentelemetry.env.OTEL_EXPORTER_OTLP_HEADERS=api-key=x",
    "opentelemetry.env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://elsewhere:4318",
    "opentelemetry.env.OTEL_TRACES_EXPORTER=console",
    "opentelemetry.env.PATH=/tmp",
    "networkPolicy.otlp.ports[0].port=0",
    "monitoring.podMonitor.enabled=yes",
    "monitoring.serviceMonitor.interval=soon",
    "monitoring.podMonitor.scrapeTimeout=",
]


@pytest.mark.parametrize("bad", BAD_VALUES)
def test_schema_rejects_bad_values(bad: str) -> None:
    result = helm_template(*VARIANTS["servicebus"], sets=(bad,))
    assert result.returncode != 0, f"accepted {bad}"
    assert "don't meet the specifications of the schema" in result.stderr, result.stderr


def test_schema_accepts_the_services_other_spellings() -> None:
    docs = render(
        "servicebus",
        "settings.EXCLUDE_OSINT=FALSE",
        "settings.HASH_TYPE=all",
        "settings.AZURE_AUTHORITY_HOST=https://login.example:8443",
    )
    env = configmap_env(docs)
    assert env["EXCLUDE_OSINT"] == "FALSE"
    assert env["HASH_TYPE"] == "all"
    assert env["AZURE_AUTHORITY_HOST"] == "https://login.example:8443"


# --------------------------------------------------------------------------------------------
# The image


def test_dockerfile_multi_stage_slim_base_arg_non_root_runtime_only() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    ]
    assert lines[0].startswith("ARG PYTHON_IMAGE=python:3.11-slim")
    froms = [line for line in lines if line.startswith("FROM ")]
    assert froms == ["FROM ${PYTHON_IMAGE} AS build", "FROM ${PYTHON_IMAGE} AS runtime"]
    runtime = text.split("AS runtime", 1)[1]
    assert "USER 10001:10001" in runtime
    assert "pip install" not in runtime
    assert "apt-get" not in runtime
    code = "\n".join(lines)
    assert "[dev]" not in code
    assert "[simulators]" not in code
    assert "trustme" not in code
    assert 'CMD ["python", "-m", "services.' in code
    # The build context is an allow-list: nothing else (.env, .venv, .git, tests) reaches it.
    assert "*" in (ROOT / ".dockerignore").read_text().splitlines()
