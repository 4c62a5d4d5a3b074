"""The reconcile CronJob: ``mati2sentinel reconcile`` on a schedule, off by default. It runs as
the uploader runs (its ServiceAccount and workload identity, the settings ConfigMap, the same
secrets and volumes, the same hardening), adds the MATI credentials only with ``--repair``, never
runs twice at once, and passes the Kubernetes API schema; the values schema refuses what the
CronJob or the services would not take. The two settings it brings (``CACHE_REBUILD``,
``RECONCILE_GRACE_MINUTES``) reach the ConfigMap every service reads.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.core.errors import ConfigError
from shared.core.settings import Service, load_settings
from tests.chart.chart_rig import (
    VARIANTS,
    Manifest,
    configmap_env,
    deployments,
    of_kind,
    one,
    render,
)
from tests.helm_tools import CHART, KUBE_VERSION, helm_template

pytestmark = pytest.mark.usefixtures("chart_tools")

ON = "reconcile.enabled=true"
REPAIR = "reconcile.repair=true"
#: Report only (ci/keyvault-values.yaml turns repair on).
REPORT = "reconcile.repair=false"
MATI_VARS = {"MATI_API_KEY", "MATI_API_SECRET"}
#: The chart's lowest kubeVersion and the one the other checks render for.
KUBE_VERSIONS = ("1.27.0", KUBE_VERSION)


def _cronjob(docs: list[Manifest]) -> Manifest:
    return one(docs, "CronJob", "-reconcile")


def _pod(cronjob: Manifest) -> dict[str, Any]:
    pod: dict[str, Any] = cronjob["spec"]["jobTemplate"]["spec"]["template"]
    return pod


def _container(cronjob: Manifest) -> dict[str, Any]:
    (c,) = _pod(cronjob)["spec"]["containers"]
    container: dict[str, Any] = c
    return container


def _secret_env(container: dict[str, Any]) -> dict[str, dict[str, str]]:
    refs = {}
    for e in container.get("env", []):
        assert "value" not in e, f"literal env {e['name']}"
        refs[e["name"]] = e["valueFrom"]["secretKeyRef"]
    return refs


def _uploader(docs: list[Manifest]) -> Manifest:
    return dict(deployments(docs))["uploader"]


def _volumes(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = pod_spec["volumes"]
    return volumes


# --------------------------------------------------------------------------------------------
# Off by default; on: the command, on its schedule, one at a time


@pytest.mark.parametrize("variant", ["servicebus", "redis", "telemetry", "servicemonitor"])
def test_no_cronjob_by_default(variant: str) -> None:
    docs = render(variant)
    assert not of_kind(docs, "CronJob")
    assert not of_kind(docs, "Job")


def test_the_key_vault_example_site_runs_it_repairing() -> None:
    # ci/keyvault-values.yaml enables it, so scripts/check-chart.sh lints and validates it.
    cronjob = _cronjob(render("keyvault"))
    assert cronjob["spec"]["timeZone"] == "Europe/Berlin"
    assert _container(cronjob)["args"] == ["--repair"]
    assert not of_kind(render("keyvault", "reconcile.enabled=false"), "CronJob")


def test_enabled_runs_reconcile_on_its_schedule_one_at_a_time() -> None:
    cronjob = _cronjob(render("servicebus", ON))
    assert cronjob["apiVersion"] == "batch/v1"
    spec = cronjob["spec"]
    assert spec["schedule"] == "23 */6 * * *"
    assert "timeZone" not in spec
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] > 0
    c = _container(cronjob)
    assert c["name"] == "reconcile"
    # python -m services.cli is the mati2sentinel console script (pyproject's [project.scripts]).
    assert c["command"] == ["python", "-m", "services.cli", "reconcile"]
    assert "args" not in c, "report only unless repair is asked for"
    (uploader,) = _uploader(render("servicebus"))["spec"]["template"]["spec"]["containers"]
    assert c["image"] == uploader["image"]
    job = spec["jobTemplate"]["spec"]
    assert _pod(cronjob)["spec"]["restartPolicy"] == "Never"
    assert job["backoffLimit"] == 2
    assert job["activeDeadlineSeconds"] == 3600
    # Exit 1 is drift found, the result: the Job fails at once instead of rerunning it.
    (drift,) = [r for r in job["podFailurePolicy"]["rules"] if "onExitCodes" in r]
    assert drift["action"] == "FailJob"
    assert drift["onExitCodes"] == {"containerName": "reconcile", "operator": "In", "values": [1]}
    # The job's pods are not the services': no health port, so no probe and nothing to scrape.
    for key in ("ports", "livenessProbe", "readinessProbe", "startupProbe"):
        assert key not in c


def test_schedule_time_zone_and_limits_are_values() -> None:
    cronjob = _cronjob(
        render(
            "servicebus",
            ON,
            "reconcile.schedule=@daily",
            "reconcile.timeZone=Europe/Berlin",
            "reconcile.backoffLimit=0",
            "reconcile.activeDeadlineSeconds=600",
            "reconcile.resources.limits.memory=2Gi",
        )
    )
    assert cronjob["spec"]["schedule"] == "@daily"
    assert cronjob["spec"]["timeZone"] == "Europe/Berlin"
    job = cronjob["spec"]["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0
    assert job["activeDeadlineSeconds"] == 600
    assert _container(cronjob)["resources"]["limits"]["memory"] == "2Gi"


# --------------------------------------------------------------------------------------------
# As the uploader: identity, settings, secrets, volumes, hardening


@pytest.mark.parametrize("variant", VARIANTS)
def test_runs_with_the_uploaders_identity_settings_secrets_and_volumes(variant: str) -> None:
    docs = render(variant, ON, REPORT)
    cronjob = _cronjob(docs)
    pod, uploader = _pod(cronjob), _uploader(docs)["spec"]["template"]
    assert pod["spec"]["serviceAccountName"] == uploader["spec"]["serviceAccountName"]
    assert pod["spec"]["automountServiceAccountToken"] is False
    wi = "azure.workload.identity/use"
    assert pod["metadata"]["labels"].get(wi) == uploader["metadata"]["labels"].get(wi)
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "reconcile"
    c = _container(cronjob)
    (u,) = uploader["spec"]["containers"]
    assert c["envFrom"] == u["envFrom"]
    assert c["envFrom"] == [{"configMapRef": {"name": one(docs, "ConfigMap")["metadata"]["name"]}}]
    assert _secret_env(c) == _secret_env(u)
    assert not MATI_VARS & _secret_env(c).keys(), "report mode needs no MATI credential"
    assert _volumes(pod["spec"]) == _volumes(uploader["spec"])
    assert c["volumeMounts"] == u["volumeMounts"]
    # The NetworkPolicy's egress (HTTPS to Log Analytics, Redis, AMQP) covers its pods too.
    selector = one(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()


def test_workload_identity_label_and_service_account() -> None:
    docs = render("servicebus", ON)
    pod = _pod(_cronjob(docs))
    assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert pod["spec"]["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    # Without workload identity: the uploader's client secret, no webhook label.
    docs = render("redis", ON)
    pod = _pod(_cronjob(docs))
    assert "azure.workload.identity/use" not in pod["metadata"]["labels"]
    assert _secret_env(_container(_cronjob(docs)))["AZURE_CLIENT_SECRET"] == {
        "name": "mati2sentinel-credentials",
        "key": "azure-client-secret",
    }


@pytest.mark.parametrize("variant", VARIANTS)
def test_hardened_as_every_other_pod(variant: str) -> None:
    cronjob = _cronjob(render(variant, ON))
    pod = _pod(cronjob)["spec"]
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["runAsUser"] > 0
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["enableServiceLinks"] is False
    assert "hostNetwork" not in pod
    assert "hostPID" not in pod
    c = _container(cronjob)
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    (tmp,) = [v for v in pod["volumes"] if v["name"] == mounts["/tmp"]]  # noqa: S108
    assert "emptyDir" in tmp
    assert c["resources"]["requests"]
    assert c["resources"]["limits"]["memory"]


def test_placement_pull_secrets_and_annotations_follow_the_other_pods() -> None:
    sets = (
        ON,
        "nodeSelector.pool=ops",
        "tolerations[0].key=dedicated",
        "tolerations[0].operator=Exists",
        "imagePullSecrets[0].name=registry",
        "podAnnotations.team=secops",
    )
    docs = render("servicebus", *sets)
    pod = _pod(_cronjob(docs))
    uploader = _uploader(docs)["spec"]["template"]
    for key in ("nodeSelector", "tolerations", "imagePullSecrets"):
        assert pod["spec"][key] == uploader["spec"][key], key
    assert pod["metadata"]["annotations"] == {"team": "secops"}


# --------------------------------------------------------------------------------------------
# --repair: the MATI credentials too


@pytest.mark.parametrize("variant", VARIANTS)
def test_repair_adds_the_flag_and_the_mati_credentials(variant: str) -> None:
    docs = render(variant, ON, REPAIR)
    cronjob = _cronjob(docs)
    c = _container(cronjob)
    assert c["command"] == ["python", "-m", "services.cli", "reconcile"]
    assert c["args"] == ["--repair"]
    refs = _secret_env(c)
    fetcher = dict(deployments(docs))["fetcher"]
    (f,) = fetcher["spec"]["template"]["spec"]["containers"]
    (u,) = _uploader(docs)["spec"]["template"]["spec"]["containers"]
    # The uploader's secrets (the Service Bus connection string among them where there is one:
    # it republishes through the filter as the fetcher does) and the fetcher's MATI pair.
    assert refs == {**_secret_env(u), **{k: _secret_env(f)[k] for k in MATI_VARS}}


def test_repair_with_key_vault_mounts_the_csi_volume_that_syncs_the_secret() -> None:
    # Without REDIS_URL from the Secret the uploader reads no secret and mounts no CSI volume;
    # with repair the job reads the MATI pair, so it mounts the volume that syncs them.
    docs = render("keyvault", ON, REPAIR, "secrets.keys.REDIS_URL=")
    spc = one(docs, "SecretProviderClass")
    (synced,) = spc["spec"]["secretObjects"]
    pod = _pod(_cronjob(docs))["spec"]
    (csi,) = [v for v in pod["volumes"] if "csi" in v]
    assert csi["csi"]["volumeAttributes"]["secretProviderClass"] == spc["metadata"]["name"]
    assert csi["name"] in {m["name"] for m in _container(_cronjob(docs))["volumeMounts"]}
    refs = _secret_env(_container(_cronjob(docs)))
    assert refs.keys() == MATI_VARS
    assert {r["name"] for r in refs.values()} == {synced["secretName"]}
    uploader = _uploader(docs)["spec"]["template"]["spec"]
    assert not [v for v in uploader["volumes"] if "csi" in v]


def test_the_ca_bundle_is_trusted_as_in_the_services() -> None:
    docs = render("keyvault", ON)
    path = configmap_env(docs)["SSL_CERT_FILE"]
    (mount,) = [
        m
        for m in _container(_cronjob(docs))["volumeMounts"]
        if path.startswith(m["mountPath"] + "/")
    ]
    assert mount["readOnly"] is True


# --------------------------------------------------------------------------------------------
# The environment as the services read it


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("repair", [False, True])
def test_rendered_environment_passes_the_services_own_validation(
    variant: str, repair: bool, tmp_path: Path
) -> None:
    docs = render(variant, ON, REPAIR if repair else REPORT)
    cronjob = _cronjob(docs)
    env = dict(configmap_env(docs))
    for name in _secret_env(_container(cronjob)):
        env[name] = "rediss://:pw@cache.example:6380/0" if name == "REDIS_URL" else "x"
    if "azure.workload.identity/use" in _pod(cronjob)["metadata"]["labels"]:
        token = tmp_path / "token"
        token.write_text("jwt")
        env["AZURE_FEDERATED_TOKEN_FILE"] = str(token)
    if "SSL_CERT_FILE" in env:
        ca = tmp_path / "ca.crt"
        ca.write_text("-----BEGIN CERTIFICATE-----\n")
        env["SSL_CERT_FILE"] = str(ca)
    # What `reconcile` loads: the uploader's settings, or with --repair every service's (it
    # reads the workspace as the uploader does and asks MATI as the fetcher does).
    load_settings(env, Service.ALL if repair else Service.UPLOADER)
    if not repair:
        with pytest.raises(ConfigError, match="MATI_API_KEY"):
            load_settings(env, Service.ALL)


def test_the_new_settings_reach_the_configmap_with_their_defaults() -> None:
    env = configmap_env(render("servicebus"))
    assert env["CACHE_REBUILD"] == "auto"
    assert env["RECONCILE_GRACE_MINUTES"] == "15"
    env = configmap_env(
        render("servicebus", "settings.CACHE_REBUILD=off", "settings.RECONCILE_GRACE_MINUTES=2.5")
    )
    assert env["CACHE_REBUILD"] == "off"
    assert env["RECONCILE_GRACE_MINUTES"] == "2.5"
    settings = load_settings(env, Service.ADMIN)
    assert settings.cache_rebuild == "off"
    assert settings.reconcile_grace_minutes == 2.5


# --------------------------------------------------------------------------------------------
# The Kubernetes API schema and the values schema


def _kubernetes_validate(path: Path, version: str) -> subprocess.CompletedProcess[str]:
    tool = Path(sys.executable).parent / "kubernetes-validate"
    command = [str(tool), "--strict", "--quiet", "-k", version, str(path)]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("variant", ["redis", "keyvault"])
def test_cronjob_passes_the_kubernetes_schema_and_a_broken_one_does_not(
    variant: str, version: str, tmp_path: Path
) -> None:
    # Rendered for KUBE_VERSION; nothing in the CronJob depends on the version, so the same
    # render is checked against the chart's lowest one too.
    cronjob = _cronjob(render(variant, ON, REPAIR, "reconcile.timeZone=Etc/UTC"))
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(cronjob))
    checked = _kubernetes_validate(good, version)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    broken = yaml.safe_load(yaml.safe_dump(cronjob))
    broken["spec"]["concurrencyPolicy"] = "Never"
    broken["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containerz"] = []
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(broken))
    assert _kubernetes_validate(bad, version).returncode != 0


BAD_VALUES = [
    "reconcile.schedule=6",  # a number, not a cron string
    "reconcile.schedule=every six hours",
    "reconcile.schedule=TZ=UTC 23 */6 * * *",  # the time zone goes in reconcile.timeZone
    "reconcile.timeZone=UTC+1 hour",
    "reconcile.enabled=yes",
    "reconcile.repair=1",
    "reconcile.unknownKey=1",
    "reconcile.backoffLimit=-1",
    "reconcile.activeDeadlineSeconds=0",
    "reconcile.resources.limits.memory=lots",
    "settings.CACHE_REBUILD=bogus",
    "settings.CACHE_REBUILD=",
    "settings.RECONCILE_GRACE_MINUTES=-1",
    "settings.RECONCILE_GRACE_MINUTES=1441",
    "settings.RECONCILE_GRACE_MINUTES=soon",
]


@pytest.mark.parametrize("bad", BAD_VALUES)
def test_schema_rejects_bad_reconcile_values(bad: str) -> None:
    result = helm_template(*VARIANTS["servicebus"], sets=(ON, bad))
    assert result.returncode != 0, f"accepted {bad}"
    assert "don't meet the specifications of the schema" in result.stderr, result.stderr


@pytest.mark.parametrize(
    "good",
    [
        "reconcile.schedule=*/30 * * * *",
        "reconcile.schedule=0 3 * * MON-FRI",
        "reconcile.schedule=@hourly",
        "settings.CACHE_REBUILD=OFF",
        "settings.RECONCILE_GRACE_MINUTES=0",
        "settings.RECONCILE_GRACE_MINUTES=1440",
    ],
)
def test_schema_accepts_what_cron_and_the_services_take(good: str) -> None:
    result = helm_template(*VARIANTS["servicebus"], sets=(ON, good))
    assert result.returncode == 0, result.stderr


def test_an_uploader_scaled_to_zero_needs_cache_rebuild_off() -> None:
    """With ``CACHE_REBUILD=auto`` a filter holds until an uploader rebuilt a lost cache;
    KEDA starts no uploader while nothing reaches its queues, so zero replicas would wait
    forever: refused at install, accepted with ``off``."""
    site = CHART / "ci" / "site-values.yaml"
    zero = ("keda.enabled=true", "uploader.autoscaling.minReplicas=0")
    result = helm_template(site, sets=zero)
    assert result.returncode != 0
    assert "uploader.autoscaling.minReplicas 0 needs settings.CACHE_REBUILD=off" in result.stderr
    assert helm_template(site, sets=(*zero, "settings.CACHE_REBUILD=off")).returncode == 0
    assert helm_template(site, sets=("keda.enabled=true",)).returncode == 0
