"""The chart's pods, the properties the deployment relies on: three deployments of one image
with their ``python -m`` entrypoints, probes on the health port, a grace period longer than the
drain, one fetcher, disruption budgets and a NetworkPolicy; secrets only by reference, each
service getting only the credentials it uses, and an environment the services' own validation
accepts; and the Dockerfile that builds the image they run. Pod security (non-root, read-only,
unprivileged) is checked on every pod the chart renders, in test_chart_security.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from shared.core.settings import Service, load_settings
from tests.chart.chart_rig import (
    COMPONENTS,
    SECRET_VARS,
    VARIANTS,
    _secret_refs,
    configmap_env,
    deployments,
    of_kind,
    one,
    render,
)
from tests.helm_tools import ROOT

pytestmark = pytest.mark.usefixtures("chart_tools")


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
# The rendered environment, as the services read it


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
