"""Several destinations in one release (values ``destinations``, DESIGN §6): one fetcher feeds
every Sentinel workspace through the destinations file; each destination gets its own filter and
uploader Deployments (``DESTINATION=<name>``), KEDA scaling on its own subscription and queues,
disruption budgets, optionally its own workload identity or client secret, and its own reconcile
CronJob. Secrets only by reference, and each only in the pods of its destination that use it.

The example (ci/destinations-values.yaml): ``contoso`` in another tenant with its own workload
identity, ``fabrikam-gov`` in US Government cloud with a client secret from its own Secret,
``northwind`` on the deployment's identity; different filters each. The rendered file is read
with the services' own loader in the environment each pod would have, so the chart and the code
agree on what every pod runs with.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from redis.asyncio import Redis

from services.configuration import settings_from
from shared.adapters.redis_streams import RedisStreamsBus
from shared.contract.messages import INDICATORS, revocation_queue, subscription, upload_queue
from shared.core.destinations import NAME, PER_DESTINATION, SECRETS
from shared.core.filters import HashSelection
from shared.core.settings import Service, Settings
from tests.chart.chart_rig import (
    DESTINATION_VARIANTS,
    VARIANTS,
    Manifest,
    configmap_env,
    of_kind,
    one,
    pod_templates,
    render,
)
from tests.helm_tools import CHART, HELM, KUBE_VERSION, ROOT, TOOLS, helm_template

pytestmark = pytest.mark.usefixtures("chart_tools")

NAMES = ("contoso", "fabrikam-gov", "northwind")
SERVICES = ("filter", "uploader")
#: ci/site-values.yaml (and redis-site-values.yaml): the deployment's identity and tenant.
DEPLOYMENT_CLIENT_ID = "0d3c6a9e-2b7f-4c1d-8e5a-6f4b3a2c1d0e"
DEPLOYMENT_TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
#: ci/destinations-values.yaml
CONTOSO_CLIENT_ID = "11aa22bb-33cc-44dd-85ee-66ff77008899"
CONTOSO_TENANT = "9a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
FABRIKAM_CLIENT_ID = "2c3d4e5f-6a7b-4c8d-9e0f-1a2b3c4d5e6f"
FABRIKAM_SECRET_VAR = "AZURE_CLIENT_SECRET_FABRIKAM_GOV"
WORKSPACES = {
    "contoso": "6f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f",
    "fabrikam-gov": "0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e",
    "northwind": "3f2b8c1e-5d4a-4e6b-9c7d-1a2b3c4d5e6f",
}
WI = "azure.workload.identity/use"
DEST = "mati2sentinel/destination"
FILE = "/etc/mati2sentinel/destinations/destinations.yaml"
SCHEMA_FAILED = "don't meet the specifications of the schema"
CRD_KINDS = {"ScaledObject", "TriggerAuthentication", "SecretProviderClass"}


def _own(docs: list[Manifest], kind: str) -> dict[tuple[str, str], Manifest]:
    """``(component, destination)`` → the object of ``kind`` that belongs to that destination."""
    found: dict[tuple[str, str], Manifest] = {}
    for d in of_kind(docs, kind):
        labels = d["metadata"]["labels"]
        if DEST in labels:
            key = (labels["app.kubernetes.io/component"], labels[DEST])
            assert key not in found, key
            found[key] = d
    return found


def _pod(d: Manifest) -> dict[str, Any]:
    """The pod template of a Deployment or a CronJob."""
    spec = d["spec"]
    pod: dict[str, Any] = (
        spec["jobTemplate"]["spec"]["template"] if "jobTemplate" in spec else (spec["template"])
    )
    return pod


def _container(d: Manifest) -> dict[str, Any]:
    (c,) = _pod(d)["spec"]["containers"]
    container: dict[str, Any] = c
    return container


def _env(d: Manifest) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in _container(d).get("env", [])}


def _files(docs: list[Manifest]) -> dict[str, Any]:
    """The destinations ConfigMap's files, parsed."""
    data = one(docs, "ConfigMap", "-destinations")["data"]
    return {key: yaml.safe_load(text) for key, text in data.items()}


def _mounted_key(docs: list[Manifest], d: Manifest) -> str:
    """The ConfigMap key a pod reads as DESTINATIONS_FILE (checking where it is mounted)."""
    pod = _pod(d)["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "destinations"]
    assert (
        volume["configMap"]["name"] == one(docs, "ConfigMap", "-destinations")["metadata"]["name"]
    )
    (item,) = volume["configMap"]["items"]
    (mount,) = [m for m in _container(d)["volumeMounts"] if m["name"] == "destinations"]
    assert mount["readOnly"] is True
    assert f"{mount['mountPath']}/{item['path']}" == configmap_env(docs)["DESTINATIONS_FILE"]
    key: str = item["key"]
    return key


def _helm(command: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HELM), command, *args, "--kube-version", KUBE_VERSION],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def _files_args(variant: str) -> list[str]:
    args = []
    for f in DESTINATION_VARIANTS[variant]:
        args += ["-f", str(f)]
    return args


# --------------------------------------------------------------------------------------------
# What the chart renders


def test_without_destinations_the_chart_renders_one_destination_as_before() -> None:
    for variant in VARIANTS:
        docs = render(variant)
        env = configmap_env(docs)
        assert env["DESTINATION"] == "default"
        assert "DESTINATIONS_FILE" not in env
        assert [c["metadata"]["name"] for c in of_kind(docs, "ConfigMap")] == [
            "m2s-mati2sentinel-settings"
        ]
        names = sorted(d["metadata"]["name"] for d in of_kind(docs, "Deployment"))
        assert names == [f"m2s-mati2sentinel-{c}" for c in ("fetcher", "filter", "uploader")]
        for name, pod in pod_templates(docs):
            assert "destinations" not in {v["name"] for v in pod["volumes"]}, name
        for d in of_kind(docs, "Deployment"):
            assert d["metadata"]["labels"][DEST] == "default"
            assert _pod(d)["metadata"]["labels"][DEST] == "default"
            assert "DESTINATION" not in _env(d)


@pytest.mark.parametrize("variant", DESTINATION_VARIANTS)
def test_one_fetcher_for_all_and_a_filter_and_an_uploader_per_destination(variant: str) -> None:
    docs = render(variant)
    own = _own(docs, "Deployment")
    assert set(own) == {(c, n) for c in SERVICES for n in NAMES}
    names = {d["metadata"]["name"] for d in of_kind(docs, "Deployment")}
    assert names == {"m2s-mati2sentinel-fetcher"} | {
        f"m2s-mati2sentinel-{c}-{n}" for c, n in own
    }, "no single-destination filter or uploader beside the destinations' own"
    fetcher = one(docs, "Deployment", "-fetcher")
    assert DEST not in fetcher["metadata"]["labels"]
    assert DEST not in _pod(fetcher)["metadata"]["labels"]
    assert "DESTINATION" not in _env(fetcher), "the fetcher feeds every destination"
    for (component, name), d in own.items():
        assert d["metadata"]["name"] == f"m2s-mati2sentinel-{component}-{name}"
        c = _container(d)
        assert c["command"] == ["python", "-m", f"services.{component}"]
        assert c["image"] == _container(fetcher)["image"]
        assert _env(d)["DESTINATION"] == {"name": "DESTINATION", "value": name}
        selector = d["spec"]["selector"]["matchLabels"]
        assert selector[DEST] == name
        assert selector["app.kubernetes.io/component"] == component
        assert selector.items() <= _pod(d)["metadata"]["labels"].items()
    env = configmap_env(docs)
    assert env["DESTINATIONS_FILE"] == FILE
    # The file names the destinations: a DESTINATION here would make the fetcher's operator
    # commands look for a destination called "default".
    assert "DESTINATION" not in env


def test_each_destination_scales_on_its_own_subscription_and_queues() -> None:
    docs = render("destinations")
    scaled = _own(docs, "ScaledObject")
    deployments = _own(docs, "Deployment")
    assert set(scaled) == set(deployments)
    (auth,) = of_kind(docs, "TriggerAuthentication")
    for (component, name), so in scaled.items():
        spec = so["spec"]
        assert spec["scaleTargetRef"]["name"] == deployments[(component, name)]["metadata"]["name"]
        assert so["metadata"]["name"] == spec["scaleTargetRef"]["name"]
        for t in spec["triggers"]:
            assert t["type"] == "azure-servicebus"
            assert t["metadata"]["namespace"] == "m2s-example"
            assert t["authenticationRef"]["name"] == auth["metadata"]["name"]
        if component == "filter":
            (t,) = spec["triggers"]
            assert t["metadata"]["topicName"] == INDICATORS.name
            assert t["metadata"]["subscriptionName"] == subscription(name).name == name
        else:
            queues = [t["metadata"]["queueName"] for t in spec["triggers"]]
            assert queues == [upload_queue(name).name, revocation_queue(name).name]
    # Overrides of ci/destinations-values.yaml; the rest from filter/uploader.autoscaling.
    maxima = {key: so["spec"]["maxReplicaCount"] for key, so in scaled.items()}
    assert maxima == {
        ("filter", "contoso"): 4,
        ("filter", "fabrikam-gov"): 10,
        ("filter", "northwind"): 10,
        ("uploader", "contoso"): 3,
        ("uploader", "fabrikam-gov"): 2,
        ("uploader", "northwind"): 3,
    }


async def test_on_redis_streams_each_destination_scales_on_its_own_streams() -> None:
    docs = render("destinations-redis")
    scaled = _own(docs, "ScaledObject")
    client = Redis()
    try:
        bus = RedisStreamsBus(client, consumer="chart-test")
        for name in NAMES:
            (f,) = scaled[("filter", name)]["spec"]["triggers"]
            u, lane = scaled[("uploader", name)]["spec"]["triggers"]
            assert f["type"] == u["type"] == lane["type"] == "redis-streams"
            assert f["metadata"]["stream"] == bus.keys(subscription(name)).stream
            assert u["metadata"]["stream"] == bus.keys(upload_queue(name)).stream
            assert lane["metadata"]["stream"] == bus.keys(revocation_queue(name)).stream
    finally:
        await client.aclose()


def test_a_disruption_budget_per_destination_selects_only_its_own_pods() -> None:
    docs = render("destinations")
    budgets = _own(docs, "PodDisruptionBudget")
    deployments = _own(docs, "Deployment")
    assert set(budgets) == set(deployments)
    one(docs, "PodDisruptionBudget", "-fetcher")
    for key, pdb in budgets.items():
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert selector == deployments[key]["spec"]["selector"]["matchLabels"]
        assert pdb["spec"]["maxUnavailable"] == 1
        selected = [
            other
            for other, d in deployments.items()
            if selector.items() <= _pod(d)["metadata"]["labels"].items()
        ]
        assert selected == [key]


def test_replicas_and_resources_can_differ_per_destination() -> None:
    docs = render(
        "destinations",
        "keda.enabled=false",
        "destinations.northwind.filter.replicas=0",
        "destinations.contoso.uploader.replicas=2",
        "destinations.contoso.filter.pdb.maxUnavailable=0",
    )
    deployments = _own(docs, "Deployment")
    replicas = {key: d["spec"]["replicas"] for key, d in deployments.items()}
    assert replicas[("filter", "northwind")] == 0, "an explicit 0 counts"
    assert replicas[("uploader", "contoso")] == 2
    assert replicas[("filter", "contoso")] == replicas[("uploader", "northwind")] == 1
    assert not of_kind(docs, "ScaledObject")
    assert _own(docs, "PodDisruptionBudget")[("filter", "contoso")]["spec"]["maxUnavailable"] == 0
    resources = {key: _container(d)["resources"] for key, d in deployments.items()}
    # fabrikam-gov's uploader: its memory limit, the rest from uploader.resources.
    assert resources[("uploader", "fabrikam-gov")] == {
        "requests": {"cpu": "50m", "memory": "128Mi"},
        "limits": {"cpu": "1", "memory": "1Gi"},
    }
    assert resources[("uploader", "northwind")]["limits"]["memory"] == "512Mi"


# --------------------------------------------------------------------------------------------
# Identities and secrets


def test_a_destination_with_its_own_workload_identity_has_its_own_service_account() -> None:
    docs = render("destinations")
    accounts = {sa["metadata"]["name"]: sa for sa in of_kind(docs, "ServiceAccount")}
    assert set(accounts) == {"m2s-mati2sentinel", "m2s-mati2sentinel-uploader-contoso"}
    own = accounts["m2s-mati2sentinel-uploader-contoso"]
    assert own["metadata"]["annotations"] == {
        "azure.workload.identity/client-id": CONTOSO_CLIENT_ID
    }
    assert own["metadata"]["labels"][DEST] == "contoso"
    assert own["automountServiceAccountToken"] is False
    deployments = _own(docs, "Deployment")
    cronjobs = _own(docs, "CronJob")
    for key, d in [*deployments.items(), *cronjobs.items()]:
        pod = _pod(d)
        expected = "m2s-mati2sentinel-uploader-contoso"
        if key[1] != "contoso" or key[0] == "filter":
            expected = "m2s-mati2sentinel"  # the filter uses no Sentinel credential
        assert pod["spec"]["serviceAccountName"] == expected, key
        assert pod["metadata"]["labels"][WI] == "true", key
    # The uploader reaches Service Bus as the deployment (the webhook would put contoso's id in
    # its environment); the destinations file gives Sentinel contoso's identity.
    for d in (deployments[("uploader", "contoso")], cronjobs[("reconcile", "contoso")]):
        env = _env(d)
        assert env["AZURE_CLIENT_ID"] == {"name": "AZURE_CLIENT_ID", "value": DEPLOYMENT_CLIENT_ID}
    for key in [("uploader", "northwind"), ("uploader", "fabrikam-gov"), ("filter", "contoso")]:
        assert "AZURE_CLIENT_ID" not in _env(deployments[key])
    block = _files(docs)["destination-contoso.yaml"]["destinations"]["contoso"]
    assert block["AZURE_CLIENT_ID"] == CONTOSO_CLIENT_ID
    assert block["AZURE_TENANT_ID"] == CONTOSO_TENANT


def test_without_the_deployments_workload_identity_only_the_destinations_own_pods_use_one() -> None:
    docs = render("destinations-redis")
    for (component, name), d in [*_own(docs, "Deployment").items(), *_own(docs, "CronJob").items()]:
        labels = _pod(d)["metadata"]["labels"]
        uses = (component, name) in {("uploader", "contoso"), ("reconcile", "contoso")}
        assert (labels.get(WI) == "true") is uses, (component, name)
        assert "AZURE_CLIENT_ID" not in _env(d), "no Service Bus: nothing to keep for it"
    assert WI not in _pod(one(docs, "Deployment", "-fetcher"))["metadata"]["labels"]


@pytest.mark.parametrize("variant", DESTINATION_VARIANTS)
def test_a_client_secret_reaches_only_its_destinations_uploader_and_reconcile_job(
    variant: str,
) -> None:
    docs = render(variant, "reconcile.enabled=true")
    assert not of_kind(docs, "Secret"), "the chart never writes a Secret itself"
    holders = set()
    for name, pod in pod_templates(docs):
        (c,) = pod["containers"]
        for e in c.get("env", []):
            if "value" in e:
                # Literal values are names and ids, never credentials.
                assert e["name"] in {"DESTINATION", "AZURE_CLIENT_ID", "AZURE_TENANT_ID"}, name
            elif e["name"].startswith("AZURE_CLIENT_SECRET_"):
                assert e["name"] == FABRIKAM_SECRET_VAR
                assert e["valueFrom"]["secretKeyRef"] == {
                    "name": "fabrikam-sentinel",
                    "key": "client-secret",
                }
                holders.add(name)
    assert holders == {
        "Deployment/m2s-mati2sentinel-uploader-fabrikam-gov",
        "CronJob/m2s-mati2sentinel-reconcile-fabrikam-gov",
    }
    files = _files(docs)
    shared = files["destinations.yaml"]["destinations"]
    assert not [n for n, block in shared.items() if "AZURE_CLIENT_SECRET" in block]
    own = files["destination-fabrikam-gov.yaml"]["destinations"]
    assert list(own) == ["fabrikam-gov"]
    assert own["fabrikam-gov"]["AZURE_CLIENT_SECRET"] == {"env": FABRIKAM_SECRET_VAR}
    for name in ("contoso", "northwind"):
        assert "AZURE_CLIENT_SECRET" not in files[f"destination-{name}.yaml"]["destinations"][name]
    # The deployment's client secret (values-redis.yaml uses one) stays with the uploaders of
    # destinations that have no identity of their own.
    refs = {key: _env(d) for key, d in _own(docs, "Deployment").items()}
    deployment_secret = "AZURE_CLIENT_SECRET" in refs[("uploader", "northwind")]
    assert deployment_secret is (variant == "destinations-redis")
    assert "AZURE_CLIENT_SECRET" not in refs[("uploader", "contoso")]
    assert "AZURE_CLIENT_SECRET" not in refs[("uploader", "fabrikam-gov")]
    for name in NAMES:
        assert not {k for k in refs[("filter", name)] if k.startswith("AZURE_CLIENT_SECRET")}


def test_key_vault_syncs_a_destinations_client_secret_for_its_pods_alone() -> None:
    docs = render(
        "destinations-keyvault",
        "secrets.keys.REDIS_URL=",
        "destinations.fabrikam-gov.clientSecret.secretName=",
        "destinations.fabrikam-gov.clientSecret.keyVaultObject=fabrikam-client-secret",
    )
    spc = one(docs, "SecretProviderClass")
    objects = yaml.safe_load(spc["spec"]["parameters"]["objects"])["array"]
    assert "fabrikam-client-secret" in {yaml.safe_load(o)["objectName"] for o in objects}
    (synced,) = spc["spec"]["secretObjects"]
    assert {"objectName": "fabrikam-client-secret", "key": "client-secret"} in synced["data"]
    mounting = set()
    for name, pod in pod_templates(docs):
        (c,) = pod["containers"]
        csi = [v for v in pod["volumes"] if "csi" in v]
        if csi:
            assert csi[0]["name"] in {m["name"] for m in c["volumeMounts"]}
            mounting.add(name)
        for e in c.get("env", []):
            if e["name"] == FABRIKAM_SECRET_VAR:
                ref = e["valueFrom"]["secretKeyRef"]
                assert ref == {"name": synced["secretName"], "key": "client-secret"}
                assert csi, f"{name} reads a synced key without mounting the volume that syncs it"
    # The fetcher (the MATI pair) and the repairing reconcile jobs read synced keys; of the
    # destinations' services only fabrikam-gov's uploader does.
    assert {n for n in mounting if n.startswith("Deployment/")} == {
        "Deployment/m2s-mati2sentinel-fetcher",
        "Deployment/m2s-mati2sentinel-uploader-fabrikam-gov",
    }


# --------------------------------------------------------------------------------------------
# The file each pod reads, as the services read it


def _pod_environment(
    docs: list[Manifest], d: Manifest, tmp_path: Path
) -> tuple[dict[str, str], Service]:
    """The environment ``d``'s container would start with, and the settings it loads: envFrom
    the settings ConfigMap, its own env over it (a secretKeyRef as ``secret:<name>/<key>``),
    what the workload identity webhook injects (the ServiceAccount's client id, its default
    tenant, the token file, each unless the container sets it), and DESTINATIONS_FILE moved to
    a copy of the ConfigMap key the pod mounts."""
    env = dict(configmap_env(docs))
    own: dict[str, str] = {}
    for e in _container(d).get("env", []):
        if "value" in e:
            own[e["name"]] = e["value"]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            secret = f"secret:{ref['name']}/{ref['key']}"
            own[e["name"]] = (
                "rediss://:pw@cache.example:6380/0" if e["name"] == "REDIS_URL" else secret
            )
    pod = _pod(d)
    if pod["metadata"]["labels"].get(WI) == "true":
        account = one(docs, "ServiceAccount", pod["spec"]["serviceAccountName"])
        token = tmp_path / "token"
        token.write_text("jwt")
        annotations = account["metadata"]["annotations"]
        injected = {
            "AZURE_CLIENT_ID": annotations["azure.workload.identity/client-id"],
            "AZURE_TENANT_ID": annotations.get(
                "azure.workload.identity/tenant-id", DEPLOYMENT_TENANT
            ),
            "AZURE_FEDERATED_TOKEN_FILE": str(token),
            "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.com/",
        }
        for name, value in injected.items():
            own.setdefault(name, value)
    env.update(own)
    if "SSL_CERT_FILE" in env:
        ca = tmp_path / "ca.crt"
        ca.write_text("-----BEGIN CERTIFICATE-----\n")
        env["SSL_CERT_FILE"] = str(ca)
    text = one(docs, "ConfigMap", "-destinations")["data"][_mounted_key(docs, d)]
    file = tmp_path / "destinations.yaml"
    file.write_text(text)
    env["DESTINATIONS_FILE"] = str(file)
    if d["kind"] == "CronJob":
        # What `reconcile` loads (services/cli/main.py): the uploader's, or with --repair all.
        return env, Service.ALL if "--repair" in _container(d).get("args", []) else Service.UPLOADER
    return env, Service(d["metadata"]["labels"]["app.kubernetes.io/component"])


def _check_identity(name: str, loaded: Settings, env: dict[str, str], variant: str) -> None:
    """Each destination uploads with its own identity, whatever the pod's environment holds."""
    assert loaded.azure_workspace_id == WORKSPACES[name]
    if name == "contoso":
        assert loaded.azure_client_id == CONTOSO_CLIENT_ID
        assert loaded.azure_tenant_id == CONTOSO_TENANT
        assert loaded.azure_federated_token_file is not None
        assert loaded.azure_client_secret is None
        if variant != "destinations-redis":
            # DefaultAzureCredential (Service Bus) reads the environment: the deployment's.
            assert env["AZURE_CLIENT_ID"] == DEPLOYMENT_CLIENT_ID
    elif name == "fabrikam-gov":
        assert loaded.azure_client_id == FABRIKAM_CLIENT_ID
        assert loaded.azure_client_secret is not None
        assert loaded.azure_client_secret.reveal() == "secret:fabrikam-sentinel/client-secret"
        # The pod may hold the deployment's token (for the bus): the secret must still win.
        assert loaded.azure_federated_token_file is None
        assert loaded.azure_authority_host.startswith("https://login.microsoftonline.us")
        assert loaded.log_analytics_base_url == "https://api.loganalytics.us"
        assert loaded.sentinel_requests_per_minute == 50
    else:
        assert loaded.azure_client_id == DEPLOYMENT_CLIENT_ID
        uses_token = variant != "destinations-redis"
        assert (loaded.azure_federated_token_file is not None) is uses_token
        assert (loaded.azure_client_secret is not None) is (not uses_token)


@pytest.mark.parametrize("variant", DESTINATION_VARIANTS)
def test_every_pod_loads_its_destinations_with_the_services_own_loader(
    variant: str, tmp_path: Path
) -> None:
    docs = render(variant, "reconcile.enabled=true")
    workloads = [*of_kind(docs, "Deployment"), *of_kind(docs, "CronJob")]
    assert len(workloads) == 1 + 3 * len(NAMES)
    filters: Mapping[str, Settings] = {}
    for d in workloads:
        workdir = tmp_path / d["metadata"]["name"]
        workdir.mkdir()
        env, service = _pod_environment(docs, d, workdir)
        process, destinations = settings_from(env, service)
        labels = d["metadata"]["labels"]
        if labels["app.kubernetes.io/component"] == "fetcher":
            assert set(destinations) == set(NAMES)
            filters = destinations
        else:
            assert list(destinations) == [labels[DEST]]
            assert process.destination == labels[DEST]
            if service is not Service.FILTER:
                _check_identity(labels[DEST], destinations[labels[DEST]], env, variant)
    # The fetcher asks MATI for what each destination's own filters need.
    assert filters["contoso"].minimum_confidence == 90
    assert filters["contoso"].hash_indicator_expiration == 30
    assert filters["northwind"].exclude_osint is False
    assert filters["northwind"].minimum_threat_score == 60
    assert filters["fabrikam-gov"].hash_type == HashSelection.SHA256
    assert filters["fabrikam-gov"].include_url is False
    assert filters["fabrikam-gov"].minimum_confidence == 80, "unset: the deployment's"


@pytest.mark.parametrize("variant", DESTINATION_VARIANTS)
def test_each_pod_mounts_the_file_it_needs(variant: str) -> None:
    docs = render(variant, "reconcile.enabled=true")
    for d in [*of_kind(docs, "Deployment"), *of_kind(docs, "CronJob")]:
        labels = d["metadata"]["labels"]
        component = labels["app.kubernetes.io/component"]
        expected = "destinations.yaml"
        if component in ("uploader", "reconcile"):
            expected = f"destination-{labels[DEST]}.yaml"
        assert _mounted_key(docs, d) == expected, d["metadata"]["name"]


def test_a_pod_restarts_when_its_own_destination_changes_and_not_for_another() -> None:
    def checksums(*sets: str) -> dict[str, dict[str, str]]:
        docs = render("destinations", "reconcile.enabled=true", *sets)
        return {
            d["metadata"]["name"]: _pod(d)["metadata"]["annotations"]
            for d in [*of_kind(docs, "Deployment"), *of_kind(docs, "CronJob")]
        }

    before = checksums()
    after = checksums("destinations.northwind.settings.MINIMUM_THREAT_SCORE=70")
    changed = {
        name
        for name in before
        if before[name]["checksum/destinations"] != after[name]["checksum/destinations"]
    }
    assert changed == {
        "m2s-mati2sentinel-fetcher",
        "m2s-mati2sentinel-filter-northwind",
        "m2s-mati2sentinel-uploader-northwind",
        "m2s-mati2sentinel-reconcile-northwind",
    }
    assert all(
        before[n].get("checksum/settings") == after[n].get("checksum/settings") for n in before
    )


# --------------------------------------------------------------------------------------------
# As every other pod of the chart


def test_probes_resources_and_grace_period_as_every_other_pod() -> None:
    docs = render("destinations")
    fetcher = _container(one(docs, "Deployment", "-fetcher"))
    for key, d in _own(docs, "Deployment").items():
        c = _container(d)
        assert (
            c["ports"]
            == fetcher["ports"]
            == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
        )
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert c[probe] == fetcher[probe], (key, probe)
        assert c["resources"]["requests"]
        assert c["resources"]["limits"]["memory"]
        assert c["envFrom"] == fetcher["envFrom"]
        pod = _pod(d)["spec"]
        assert pod["terminationGracePeriodSeconds"] == 40
        assert pod["enableServiceLinks"] is False
        assert d["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    selector = one(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"]
    for name, _ in pod_templates(docs):
        kind, _, object_name = name.partition("/")
        pod = _pod(one(docs, kind, object_name))
        assert selector.items() <= pod["metadata"]["labels"].items(), name


def test_a_reconcile_job_per_destination_with_its_identity() -> None:
    docs = render("destinations", "reconcile.enabled=true")
    jobs = _own(docs, "CronJob")
    assert set(jobs) == {("reconcile", n) for n in NAMES}
    uploaders = _own(docs, "Deployment")
    for (_, name), job in jobs.items():
        assert job["metadata"]["name"] == f"m2s-mati2sentinel-reconcile-{name}"
        c = _container(job)
        assert c["command"] == ["python", "-m", "services.cli", "reconcile"]
        assert _env(job)["DESTINATION"] == {"name": "DESTINATION", "value": name}
        uploader = uploaders[("uploader", name)]
        assert (
            _pod(job)["spec"]["serviceAccountName"]
            == (_pod(uploader)["spec"]["serviceAccountName"])
        )
        assert _env(job) == _env(uploader)
        assert c["volumeMounts"] == _container(uploader)["volumeMounts"]
        assert _pod(job)["spec"]["volumes"] == _pod(uploader)["spec"]["volumes"]


# --------------------------------------------------------------------------------------------
# Kubernetes and KEDA schemas, helm lint, name lengths


def _kubernetes_validate(path: Path) -> subprocess.CompletedProcess[str]:
    tool = Path(sys.executable).parent / "kubernetes-validate"
    command = [str(tool), "--strict", "--quiet", "-k", KUBE_VERSION, str(path)]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)


def _keda_validate(path: Path) -> subprocess.CompletedProcess[str]:
    command = ["node", str(ROOT / "scripts" / "keda-validate.mjs"), "--require-keda", str(path)]
    env = {"KEDA_TOOLS_DIR": str(TOOLS / "node"), "PATH": os.environ["PATH"]}
    return subprocess.run(command, capture_output=True, text=True, check=False, env=env, timeout=60)


@pytest.mark.parametrize("variant", DESTINATION_VARIANTS)
def test_render_passes_kubernetes_validate_and_a_broken_one_does_not(
    variant: str, tmp_path: Path
) -> None:
    docs = [d for d in render(variant, "reconcile.enabled=true") if d["kind"] not in CRD_KINDS]
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump_all(docs))
    checked = _kubernetes_validate(good)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    broken = yaml.safe_load(yaml.safe_dump(one(docs, "Deployment", "-uploader-contoso")))
    broken["spec"]["template"]["spec"]["containers"][0]["env"][0]["valueFrom"] = {"literal": "x"}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(broken))
    assert _kubernetes_validate(bad).returncode != 0


@pytest.mark.parametrize("variant", ["destinations", "destinations-redis"])
def test_keda_objects_pass_kedas_schema_and_a_broken_one_does_not(
    variant: str, tmp_path: Path
) -> None:
    docs = render(variant)
    keda = [d for d in docs if d["kind"] in CRD_KINDS - {"SecretProviderClass"}]
    assert len(keda) == 2 * len(NAMES) + (1 if variant == "destinations" else 0)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump_all([*keda, *of_kind(docs, "Deployment")]))
    checked = _keda_validate(good)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # A ScaledObject aimed at a Deployment the render does not have is refused.
    broken = [yaml.safe_load(yaml.safe_dump(d)) for d in keda]
    target = next(d for d in broken if d["kind"] == "ScaledObject")
    target["spec"]["scaleTargetRef"]["name"] = "m2s-mati2sentinel-uploader"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump_all([*broken, *of_kind(docs, "Deployment")]))
    assert _keda_validate(bad).returncode != 0


@pytest.mark.parametrize("variant", DESTINATION_VARIANTS)
def test_helm_lint_strict_passes(variant: str) -> None:
    result = _helm("lint", "--strict", str(CHART), *_files_args(variant))
    assert result.returncode == 0, result.stdout + result.stderr


#: The longest release name helm accepts, and the longest destination names, two of which
#: differ only at their end.
LONG_RELEASE = "mati2sentinel-production-westeurope-customer-feeds-01"
LONG_NAMES = ("a" * 23 + "1", "a" * 23 + "2")


def test_names_fit_kubernetes_limits_with_a_long_release_and_long_destination_names() -> None:
    assert len(LONG_RELEASE) == 53
    assert all(NAME.match(n) and len(n) == 24 for n in LONG_NAMES)
    sets = [
        "--set",
        "reconcile.enabled=true",
        *[
            arg
            for n in LONG_NAMES
            for arg in ("--set", f"destinations.{n}.settings.MINIMUM_CONFIDENCE=85")
        ],
    ]
    result = _helm(
        "template",
        LONG_RELEASE,
        str(CHART),
        "--namespace",
        "mati2sentinel",
        *_files_args("destinations"),
        *sets,
    )
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert len(_own(docs, "Deployment")) == 2 * (len(NAMES) + len(LONG_NAMES))
    seen: set[tuple[str, str]] = set()
    for d in docs:
        name = d["metadata"]["name"]
        # A CronJob's Jobs append 11 characters: its own name is limited to 52.
        assert len(name) <= (52 if d["kind"] == "CronJob" else 63), name
        assert (d["kind"], name) not in seen, name
        seen.add((d["kind"], name))
        label_sets = [d["metadata"].get("labels", {})]
        spec = d.get("spec") or {}
        if "selector" in spec and "matchLabels" in spec["selector"]:
            label_sets.append(spec["selector"]["matchLabels"])
        if d["kind"] in ("Deployment", "CronJob"):
            label_sets.append(_pod(d)["metadata"]["labels"])
        for labels in label_sets:
            for key, value in labels.items():
                assert len(str(value)) <= 63, (name, key, value)
    for n in LONG_NAMES:
        d = _own(docs, "Deployment")[("uploader", n)]
        assert d["metadata"]["name"].endswith(f"-uploader-{n}")
        assert _own(docs, "CronJob")[("reconcile", n)]["metadata"]["name"].endswith(n)


# --------------------------------------------------------------------------------------------
# The values schema and the templates' own checks


def test_the_schema_takes_exactly_the_settings_a_destination_may_set() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    destinations = schema["properties"]["destinations"]
    assert destinations["propertyNames"]["pattern"] == NAME.pattern
    settings = schema["definitions"]["destination"]["properties"]["settings"]
    allowed = set(PER_DESTINATION - SECRETS)
    assert set(settings["propertyNames"]["enum"]) == allowed
    assert set(settings["properties"]) == allowed
    assert settings["additionalProperties"] is False
    top = schema["properties"]["settings"]["properties"]
    for key, rule in settings["properties"].items():
        # Each value is checked as the same setting is at the top level.
        assert rule == {"$ref": f"#/properties/settings/properties/{key}"}
        assert key in top


BAD_DESTINATIONS = [
    # Names: a DNS label of at most 24 characters, lower case.
    "destinations.Contoso.settings.MINIMUM_CONFIDENCE=90",
    "destinations.contoso_eu.settings.MINIMUM_CONFIDENCE=90",
    "destinations.contoso-.settings.MINIMUM_CONFIDENCE=90",
    "destinations.a-name-of-twenty-five-chars.settings.MINIMUM_CONFIDENCE=90",
    # Keys: only what may differ per destination, under its environment name.
    "destinations.contoso.settings.REDIS_URL=rediss://cache.example:6380/0",
    "destinations.contoso.settings.MATI_API_KEY=abc",
    "destinations.contoso.settings.DESTINATION=other",
    "destinations.contoso.settings.minimum_confidence=90",
    "destinations.contoso.replicas=2",
    "destinations.contoso.filter.autoscaling.target=5",
    "destinations.contoso.workloadIdentity.tenant=x",
    # Secrets: by reference only.
    "destinations.contoso.settings.AZURE_CLIENT_SECRET=hunter2",
    "destinations.fabrikam-gov.clientSecret=hunter2",
    "destinations.fabrikam-gov.clientSecret.value=hunter2",
    # Values, as the same settings at the top level.
    "destinations.contoso.settings.MINIMUM_CONFIDENCE=101",
    "destinations.contoso.settings.HASH_TYPE=sha512",
    "destinations.contoso.settings.SENTINEL_BASE_URL=http://plain.example",
    "destinations.contoso.workloadIdentity.clientId=not-a-guid",
    "destinations.contoso.uploader.autoscaling.maxReplicas=11",
    "destinations.fabrikam-gov.clientSecret.key=a key",
]


@pytest.mark.parametrize("bad", BAD_DESTINATIONS)
def test_the_schema_refuses_bad_destinations_in_template_and_lint(bad: str) -> None:
    result = helm_template(*DESTINATION_VARIANTS["destinations"], sets=(bad,))
    assert result.returncode != 0, f"accepted {bad}"
    assert SCHEMA_FAILED in result.stderr, result.stderr
    linted = _helm("lint", "--strict", str(CHART), *_files_args("destinations"), "--set", bad)
    assert linted.returncode != 0, f"lint accepted {bad}"
    assert SCHEMA_FAILED in linted.stdout + linted.stderr


def test_a_literal_secret_is_refused_by_name() -> None:
    bad = "destinations.contoso.settings.AZURE_CLIENT_SECRET=hunter2"
    result = helm_template(*DESTINATION_VARIANTS["destinations"], sets=(bad,))
    assert "AZURE_CLIENT_SECRET" in result.stderr
    assert "hunter2" not in result.stdout


INCOMPLETE = [
    (
        ("destinations.northwind.settings.AZURE_WORKSPACE_ID=",),
        "destinations.northwind: its Sentinel workspace is required",
    ),
    (
        ("destinations.contoso.clientSecret.key=contoso-secret",),
        "destinations.contoso: give it a workloadIdentity or a clientSecret, not both",
    ),
    (
        ("destinations.fabrikam-gov.settings.AZURE_CLIENT_ID=",),
        "destinations.fabrikam-gov: a client secret needs its application",
    ),
    (
        ("destinations.fabrikam-gov.clientSecret.keyVaultObject=fabrikam-client-secret",),
        "destinations.fabrikam-gov.clientSecret.keyVaultObject needs secrets.keyVault.enabled",
    ),
    (
        ("destinations.northwind.uploader.autoscaling.minReplicas=0",),
        "destinations.northwind: uploader minReplicas 0 needs CACHE_REBUILD=off",
    ),
]


@pytest.mark.parametrize(("sets", "message"), INCOMPLETE)
def test_the_templates_refuse_an_incomplete_destination(
    sets: tuple[str, ...], message: str
) -> None:
    result = helm_template(*DESTINATION_VARIANTS["destinations"], sets=sets)
    assert result.returncode != 0, f"accepted {sets}"
    assert message in result.stderr, result.stderr


def test_what_each_refusal_asks_for_is_accepted(tmp_path: Path) -> None:
    site, example = DESTINATION_VARIANTS["destinations"]
    accepted = [
        # Every destination names its workspace: the deployment-wide one may stay empty.
        ("settings.AZURE_WORKSPACE_ID=",),
        (
            "destinations.northwind.uploader.autoscaling.minReplicas=0",
            "destinations.northwind.settings.CACHE_REBUILD=off",
        ),
    ]
    for sets in accepted:
        result = helm_template(site, example, sets=sets)
        assert result.returncode == 0, (sets, result.stderr)
    # A client secret's application from the deployment's settings, the destination naming
    # none (an empty AZURE_CLIENT_ID of its own would clear the deployment's: refused above).
    values = yaml.safe_load(example.read_text())
    del values["destinations"]["fabrikam-gov"]["settings"]["AZURE_CLIENT_ID"]
    edited = tmp_path / "destinations.yaml"
    edited.write_text(yaml.safe_dump(values))
    result = helm_template(site, edited, sets=(f"settings.AZURE_CLIENT_ID={FABRIKAM_CLIENT_ID}",))
    assert result.returncode == 0, result.stderr
    result = helm_template(site, edited)
    assert "destinations.fabrikam-gov: a client secret needs its application" in result.stderr
    result = helm_template(
        *DESTINATION_VARIANTS["destinations-keyvault"],
        sets=("destinations.fabrikam-gov.clientSecret.secretName=",),
    )
    assert "set keyVaultObject (the Key Vault secret) or secretName" in result.stderr
