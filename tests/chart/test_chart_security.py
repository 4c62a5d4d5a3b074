"""What the chart guarantees about security, whatever the site's values: every pod it renders
(the three Deployments, the reconcile CronJob, any Job or hook added later) runs as a non-root
user on a read-only root filesystem with no privilege to gain and no capability; and a Redis
reached without TLS, beyond the pod itself, is refused by the values schema unless the site
says so (``redis.allowPlaintext``), since the Redis password and every queued message would
cross the network in clear.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.chart.chart_rig import (
    DESTINATION_VARIANTS,
    VARIANTS,
    configmap_env,
    pod_templates,
    render,
)
from tests.helm_tools import CHART, HELM, KUBE_VERSION, helm_template

pytestmark = pytest.mark.usefixtures("chart_tools")

RECONCILE = "reconcile.enabled=true"
SCHEMA_FAILED = "don't meet the specifications of the schema"
#: What the schema says, naming both ways out: TLS, or the explicit allowance.
REFUSAL = ("settings.REDIS_URL: Does not match pattern '^rediss://'", "redis.allowPlaintext")


# --------------------------------------------------------------------------------------------
# Every pod: non-root, read-only root, nothing to escalate to


#: (Deployments, CronJobs) of each render with the reconcile job on: the three services and one
#: job, or with destinations the fetcher and a filter, an uploader and a job per destination
#: (three in ci/destinations-values.yaml).
WORKLOADS = {**{v: (3, 1) for v in VARIANTS}, **{v: (7, 3) for v in DESTINATION_VARIANTS}}


@pytest.mark.parametrize("variant", WORKLOADS)
def test_every_pod_runs_non_root_read_only_and_unprivileged(variant: str) -> None:
    docs = render(variant, RECONCILE)
    pods = dict(pod_templates(docs))
    kinds = [name.split("/")[0] for name in pods]
    assert (kinds.count("Deployment"), kinds.count("CronJob")) == WORKLOADS[variant], sorted(pods)
    for name, pod in pods.items():
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True, name
        assert isinstance(psc["runAsUser"], int)
        assert psc["runAsUser"] > 0, name
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False, name
        assert "hostNetwork" not in pod
        assert "hostPID" not in pod
        assert "hostIPC" not in pod
        containers = (
            pod["containers"] + pod.get("initContainers", []) + pod.get("ephemeralContainers", [])
        )
        for c in containers:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, name
            assert sc.get("runAsUser", psc["runAsUser"]) > 0, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["privileged"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
            # A read-only root needs a writable /tmp: the pod's own emptyDir.
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            (tmp,) = [v for v in pod["volumes"] if v["name"] == mounts["/tmp"]]  # noqa: S108
            assert "emptyDir" in tmp
            assert c["resources"]["requests"]
            assert c["resources"]["limits"]["memory"]


def test_the_schema_refuses_root() -> None:
    for bad in ("podSecurity.runAsUser=0", "podSecurity.runAsGroup=0"):
        result = helm_template(*VARIANTS["servicebus"], sets=(bad,))
        assert result.returncode != 0, bad
        assert SCHEMA_FAILED in result.stderr, result.stderr


# --------------------------------------------------------------------------------------------
# Redis without TLS: only on loopback, or where the site allows it in so many words


def helm_lint(*sets: str) -> subprocess.CompletedProcess[str]:
    """``helm lint --strict`` of the servicebus site, as scripts/check-chart.sh runs it."""
    command = [str(HELM), "lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART)]
    for f in VARIANTS["servicebus"]:
        command += ["-f", str(f)]
    for s in sets:
        command += ["--set", s]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=30)


PLAINTEXT_ELSEWHERE = [
    "redis://cache.example:6379/0",
    "redis://redis-master.redis.svc.cluster.local:6379/0",
    "redis://10.0.0.5:6379",
    "redis://default@cache.example:6379/0",
    "redis://127.0.0.1.example:6379/0",
]


@pytest.mark.parametrize("url", PLAINTEXT_ELSEWHERE)
def test_plaintext_redis_beyond_loopback_is_refused(url: str) -> None:
    result = helm_template(*VARIANTS["servicebus"], sets=(f"settings.REDIS_URL={url}",))
    assert result.returncode != 0, f"rendered {url}"
    assert SCHEMA_FAILED in result.stderr, result.stderr
    for words in REFUSAL:
        assert words in result.stderr, result.stderr
    linted = helm_lint(f"settings.REDIS_URL={url}")
    assert linted.returncode != 0
    assert REFUSAL[0] in linted.stdout + linted.stderr


@pytest.mark.parametrize("url", PLAINTEXT_ELSEWHERE)
def test_plaintext_redis_renders_once_the_site_allows_it(url: str) -> None:
    docs = render("servicebus", f"settings.REDIS_URL={url}", "redis.allowPlaintext=true")
    assert configmap_env(docs)["REDIS_URL"] == url
    assert helm_lint(f"settings.REDIS_URL={url}", "redis.allowPlaintext=true").returncode == 0


def test_tls_needs_no_allowance() -> None:
    url = "rediss://cache.example:6380/0"
    docs = render("servicebus", f"settings.REDIS_URL={url}", "redis.allowPlaintext=false")
    assert configmap_env(docs)["REDIS_URL"] == url


def test_a_loopback_url_is_left_to_the_templates_own_message() -> None:
    # Loopback never leaves the pod, so the schema has nothing against it; the templates then
    # say that no Redis runs there (tests/chart/test_chart_values.py).
    result = helm_template(*VARIANTS["servicebus"], sets=("settings.REDIS_URL=redis://127.0.0.1",))
    assert SCHEMA_FAILED not in result.stderr
    assert "localhost" in result.stderr


def test_a_url_from_the_secret_replaces_the_setting_and_is_not_judged() -> None:
    sets = ("settings.REDIS_URL=redis://cache.example:6379/0", "secrets.keys.REDIS_URL=redis-url")
    docs = render("servicebus", *sets)
    assert "REDIS_URL" not in configmap_env(docs)


def test_values_redis_allows_its_in_cluster_plaintext_redis_and_only_by_saying_so() -> None:
    assert configmap_env(render("redis"))["REDIS_URL"].startswith("redis://redis-master.")
    result = helm_template(*VARIANTS["redis"], sets=("redis.allowPlaintext=false",))
    assert result.returncode != 0
    assert REFUSAL[0] in result.stderr, result.stderr


@pytest.mark.parametrize("bad", ["redis.allowPlaintext=yes", "redis.allowTLS=true"])
def test_the_allowance_is_a_boolean_and_nothing_else(bad: str) -> None:
    result = helm_template(*VARIANTS["servicebus"], sets=(bad,))
    assert result.returncode != 0, bad
    assert SCHEMA_FAILED in result.stderr, result.stderr
