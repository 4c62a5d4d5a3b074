"""The Helm chart's test rig, shared by the test_chart_*.py modules: the chart rendered by the
real (pinned) helm, as Kubernetes will run it.

Each variant is the chart's values.yaml (or values-redis.yaml) with an example site on top
(``ci/*.yaml``), as an operator installs it. A render is cached, so the modules share one helm run
per variant and settings. ``scripts/check-chart.sh`` adds lint, kubernetes-validate, the KEDA and
Prometheus Operator schemas on the same renders. The fixture that installs helm is in
conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tests.helm_tools import CHART, helm_template

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
#: Renders with several destinations (values ``destinations``, ci/destinations-values.yaml on
#: an example site): tested in test_chart_destinations.py, since the modules that go through
#: VARIANTS expect one filter and one uploader.
DESTINATION_VARIANTS: dict[str, list[Path]] = {
    "destinations": [CHART / "ci" / "site-values.yaml", CHART / "ci" / "destinations-values.yaml"],
    "destinations-redis": [
        CHART / "values-redis.yaml",
        CHART / "ci" / "redis-site-values.yaml",
        CHART / "ci" / "destinations-values.yaml",
    ],
    "destinations-keyvault": [
        CHART / "ci" / "keyvault-values.yaml",
        CHART / "ci" / "destinations-values.yaml",
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


@cache
def _render(variant: str, sets: tuple[str, ...] = ()) -> tuple[Manifest, ...]:
    result = helm_template(*{**VARIANTS, **DESTINATION_VARIANTS}[variant], sets=sets)
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


def pod_templates(docs: list[Manifest]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(kind/name, pod spec)`` of every pod the render would create, whatever kind holds it:
    a new workload (a Job, a hook) is checked without anyone remembering to add it here."""
    for d in docs:
        name = f"{d['kind']}/{d['metadata']['name']}"
        spec = d.get("spec") or {}
        if d["kind"] == "Pod":
            yield name, spec
        elif "jobTemplate" in spec:
            yield name, spec["jobTemplate"]["spec"]["template"]["spec"]
        elif "template" in spec and "containers" in spec["template"].get("spec", {}):
            yield name, spec["template"]["spec"]


def configmap_env(docs: list[Manifest]) -> dict[str, str]:
    data: dict[str, str] = one(docs, "ConfigMap", "-settings")["data"]
    return data


def _secret_refs(d: Manifest) -> dict[str, dict[str, str]]:
    (c,) = d["spec"]["template"]["spec"]["containers"]
    refs = {}
    for e in c.get("env", []):
        assert "value" not in e, f"literal env {e['name']} in {d['metadata']['name']}"
        refs[e["name"]] = e["valueFrom"]["secretKeyRef"]
    return refs
