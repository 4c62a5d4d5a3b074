"""The chart's values: every setting of the services, with the services' own defaults, and a
values schema that refuses bad settings before anything reaches a cluster.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from shared.core.settings import Service, Settings, load_settings
from tests.chart.chart_rig import CHART_ONLY_SETTINGS, SECRET_VARS, VARIANTS, configmap_env, render
from tests.helm_tools import CHART, helm_template

pytestmark = pytest.mark.usefixtures("chart_tools")


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
