"""Settings: every parameter of the product, read from the environment and checked at start-up.

The names are the vendor integration's (its settings table and release notes), so a team moving
from it keeps its deployment values. Loading never stops at the first problem: it collects one
line per bad value (the variable, the value with secrets masked, what is allowed) and raises
``ConfigError`` with all of them, so an operator fixes a deployment in one go.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from shared.core import setting_values as parse
from shared.core.errors import ConfigError
from shared.core.filters import FilterPolicy, HashSelection
from shared.core.secrets import Secret
from shared.core.stix import DefaultAction, SentinelApi, StixPolicy

REMOVED_SETTINGS: Final = {
    "USE_UPLOAD_INDICATORS_API": "removed in v1.2; choose the API with SENTINEL_API "
    "(stix-objects by default, upload-indicators for the legacy API)",
    "INDICATOR_EXPIRATION": "removed in v1.2; use IP_INDICATOR_EXPIRATION, "
    "FQDN_INDICATOR_EXPIRATION, URL_INDICATOR_EXPIRATION and HASH_INDICATOR_EXPIRATION",
    "TARGET_APPLICATION": "removed in v1.2; Microsoft Sentinel is the only target",
}

SENTINEL_DEFAULT_HOSTS: Final = {
    SentinelApi.STIX_OBJECTS: "https://api.ti.sentinel.azure.com",
    SentinelApi.UPLOAD_INDICATORS: "https://sentinelus.azure-api.net",
}


class Service(StrEnum):
    """Which service is starting: each needs only its own credentials."""

    FETCHER = "fetcher"
    FILTER = "filter"
    UPLOADER = "uploader"
    #: ``status`` and ``dlq``: read state and queues, need no credential.
    ADMIN = "admin"
    ALL = "all"


#: Each long-running service's probe port when ``HEALTH_PORT`` is not set. One port each, so
#: the three run side by side on one host with default settings; in a pod (the chart, the
#: image) ``HEALTH_PORT`` is set and every service listens on the same one.
DEFAULT_HEALTH_PORTS: Final = {Service.FETCHER: 8081, Service.FILTER: 8082, Service.UPLOADER: 8083}


@dataclass(frozen=True, slots=True)
class Settings:
    """The effective settings; field names are the environment names in lower case."""

    # Mandiant
    mati_api_key: Secret | None = None
    mati_api_secret: Secret | None = None
    mati_base_url: str = "https://api.intelligence.mandiant.com"
    mati_requests_per_second: float = 1.0
    # Azure identity and workspace
    azure_workspace_id: str | None = None
    azure_client_id: str | None = None
    azure_client_secret: Secret | None = None
    azure_tenant_id: str | None = None
    azure_federated_token_file: Path | None = None
    azure_authority_host: str = "https://login.microsoftonline.com"
    azure_workspace_name: str | None = None
    azure_subscription_id: str | None = None
    azure_resource_group_name: str | None = None
    # Indicator lifetime in Sentinel, days
    ip_indicator_expiration: int = 7
    fqdn_indicator_expiration: int = 7
    url_indicator_expiration: int = 7
    hash_indicator_expiration: int = 90
    # What to fetch and keep
    initial_lookback: int = 30
    minimum_confidence: int = 80
    minimum_threat_score: int = 80
    exclude_osint: bool = True
    default_action: DefaultAction = DefaultAction.ALERT
    include_uncategorized: bool = True
    hash_type: HashSelection = HashSelection.MD5
    exclude_warninglists: frozenset[str] = frozenset()
    include_ipv4: bool = True
    include_hash: bool = True
    include_url: bool = True
    include_fqdn: bool = True
    passive_only: bool = False
    sync_schedule: float = 4.0
    enable_deduplication: bool = True
    validity_refresh_ratio: float = 0.5
    # Sentinel
    sentinel_api: SentinelApi = SentinelApi.STIX_OBJECTS
    sentinel_base_url: str = SENTINEL_DEFAULT_HOSTS[SentinelApi.STIX_OBJECTS]
    sentinel_requests_per_minute: int = 100
    sentinel_source_system: str = "Mandiant Threat Intelligence"
    sentinel_rate_window_seconds: float = 60.0
    log_analytics_base_url: str = "https://api.loganalytics.io"
    #: ``auto``: a destination whose Redis state is found empty gets its seen cache rebuilt
    #: from the workspace before the filter decides anything; ``off``: it starts empty.
    cache_rebuild: str = "auto"
    #: Objects uploaded this recently count as in flight, not missing (ingestion lags).
    reconcile_grace_minutes: float = 15.0
    # Running
    redis_url: str = "redis://127.0.0.1:6379/0"
    bus: str = "redis"
    #: BUS=servicebus: the namespace's host name (workload identity), or a SAS connection string.
    servicebus_namespace: str | None = None
    servicebus_connection_string: Secret | None = None
    destination: str = "default"
    log_format: str = "auto"
    log_level: str = "INFO"
    ssl_cert_file: Path | None = None
    bus_lock_duration_seconds: float = 60.0
    bus_max_delivery_count: int = 10
    filter_batch_size: int = 500
    upload_linger_seconds: float = 1.0
    drain_timeout_seconds: float = 25.0
    #: ``None`` only for commands that serve no probes (operator commands, ``check-config``
    #: of all services); a service gets its ``DEFAULT_HEALTH_PORTS`` entry.
    health_port: int | None = None
    #: Lines to print once at start-up (removed settings that are still set).
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def filter_policy(self) -> FilterPolicy:
        return FilterPolicy(
            minimum_confidence=self.minimum_confidence,
            minimum_threat_score=self.minimum_threat_score,
            exclude_osint=self.exclude_osint,
            include_uncategorized=self.include_uncategorized,
            hash_selection=self.hash_type,
            exclude_warninglists=self.exclude_warninglists,
            include_ipv4=self.include_ipv4,
            include_fqdn=self.include_fqdn,
            include_url=self.include_url,
            include_hash=self.include_hash,
        )

    def stix_policy(self) -> StixPolicy:
        return StixPolicy(
            ipv4_expiration=timedelta(days=self.ip_indicator_expiration),
            fqdn_expiration=timedelta(days=self.fqdn_indicator_expiration),
            url_expiration=timedelta(days=self.url_indicator_expiration),
            hash_expiration=timedelta(days=self.hash_indicator_expiration),
            default_action=self.default_action.value,
            passive_only=self.passive_only,
        )

    def effective(self) -> list[tuple[str, str]]:
        """``(ENV_NAME, printable value)`` for every setting, secrets masked."""
        rows = []
        for f in fields(self):
            if f.name == "warnings":
                continue
            value = getattr(self, f.name)
            if f.name == "health_port" and value is None:
                ports = DEFAULT_HEALTH_PORTS.items()
                printable = ", ".join(f"{service.value} {port}" for service, port in ports)
            else:
                printable = parse.printable(value)
            rows.append((f.name.upper(), printable))
        return rows


_BOOLEAN_HELP: Final = "use TRUE or FALSE"
#: The indicator lifetimes in Sentinel, one per type, and the TRUE/FALSE switches of what is
#: taken and how: both sets are a destination's own (``shared.core.destinations``).
EXPIRATIONS: Final = (
    "IP_INDICATOR_EXPIRATION",
    "FQDN_INDICATOR_EXPIRATION",
    "URL_INDICATOR_EXPIRATION",
    "HASH_INDICATOR_EXPIRATION",
)
SWITCHES: Final = (
    "EXCLUDE_OSINT",
    "INCLUDE_UNCATEGORIZED",
    "INCLUDE_IPV4",
    "INCLUDE_HASH",
    "INCLUDE_URL",
    "INCLUDE_FQDN",
    "PASSIVE_ONLY",
    "ENABLE_DEDUPLICATION",
)
_DAYS_HELP: Final = "a whole number of days from 1 to 365"


def load_settings(environ: Mapping[str, str], service: Service = Service.ALL) -> Settings:
    """Read, check and return the settings ``service`` needs, or raise ``ConfigError``.

    Only the credentials of ``service`` are required: the filter never sees a secret.
    """
    r = parse.Reader(environ)
    r.secret("MATI_API_KEY")
    r.secret("MATI_API_SECRET")
    r.secret("AZURE_CLIENT_SECRET")
    r.secret("SERVICEBUS_CONNECTION_STRING")
    r.read("MATI_BASE_URL", parse.https_url, "an https:// URL")
    r.read(
        "MATI_REQUESTS_PER_SECOND",
        parse.float_range(0.0, 50.0, low_open=True),
        "requests per second, more than 0 and at most 50",
    )
    r.read("AZURE_WORKSPACE_ID", parse.pattern(parse.GUID), "the Log Analytics workspace GUID")
    r.read("AZURE_CLIENT_ID", parse.pattern(parse.GUID), "the application (client) GUID")
    r.read("AZURE_TENANT_ID", parse.tenant, "the tenant GUID or its domain name")
    r.read("AZURE_FEDERATED_TOKEN_FILE", parse.existing_file, "the path of an existing token file")
    r.read("AZURE_AUTHORITY_HOST", parse.authority, "an https:// authority host")
    r.read("AZURE_WORKSPACE_NAME", str, "a workspace name")
    r.read("AZURE_SUBSCRIPTION_ID", parse.pattern(parse.GUID), "the subscription GUID")
    r.read("AZURE_RESOURCE_GROUP_NAME", str, "a resource group name")
    for name in EXPIRATIONS:
        r.read(name, parse.int_range(1, 365), _DAYS_HELP)
    r.read(
        "INITIAL_LOOKBACK",
        parse.int_range(1, 90),
        "a whole number of days from 1 to 90 (MATI serves 90 days of indicators)",
    )
    r.read("MINIMUM_CONFIDENCE", parse.int_range(0, 100), "a whole number from 0 to 100")
    r.read("MINIMUM_THREAT_SCORE", parse.int_range(0, 100), "a whole number from 0 to 100")
    for name in SWITCHES:
        r.read(name, parse.boolean, _BOOLEAN_HELP)
    r.read("DEFAULT_ACTION", parse.member(DefaultAction), f"one of {', '.join(DefaultAction)}")
    r.read("HASH_TYPE", parse.member(HashSelection), f"one of {', '.join(HashSelection)}")
    r.read(
        "EXCLUDE_WARNINGLISTS",
        parse.warning_lists,
        "MISP warning-list names separated by commas (e.g. public-dns-v4,rfc1918), or all",
    )
    r.read(
        "SYNC_SCHEDULE",
        parse.float_range(0.0, 168.0, low_open=True),
        "hours between syncs, more than 0 and at most 168",
    )
    r.read(
        "VALIDITY_REFRESH_RATIO",
        parse.float_range(0.0, 1.0, low_open=True),
        "a fraction of the expiration, more than 0 and at most 1",
    )
    r.read(
        "SENTINEL_API",
        parse.member(SentinelApi),
        "stix-objects (default) or upload-indicators (legacy)",
    )
    r.read("SENTINEL_BASE_URL", parse.https_url, "an https:// URL")
    r.read(
        "SENTINEL_REQUESTS_PER_MINUTE",
        parse.int_range(1, 100),
        "requests a minute for all uploaders together, 1 to 100 (Sentinel's quota)",
    )
    r.read(
        "SENTINEL_SOURCE_SYSTEM",
        parse.source_system_name,
        "at most 256 characters, and not the reserved 'Microsoft Sentinel'",
    )
    r.read(
        "SENTINEL_RATE_WINDOW_SECONDS",
        parse.float_range(1.0, 3600.0),
        "seconds, 1 to 3600 (Sentinel's window is 60; shorter only against a simulator)",
    )
    r.read("LOG_ANALYTICS_BASE_URL", parse.https_url, "an https:// URL")
    r.read("CACHE_REBUILD", parse.choice("auto", "off"), "auto or off")
    r.read(
        "RECONCILE_GRACE_MINUTES",
        parse.float_range(0.0, 1440.0),
        "minutes, 0 to 1440 (fractions allowed)",
    )
    r.read("REDIS_URL", parse.redis_url, "a redis://, rediss:// or unix:// URL")
    r.read("BUS", parse.choice("redis", "servicebus"), "redis or servicebus")
    r.read(
        "SERVICEBUS_NAMESPACE",
        parse.servicebus_namespace,
        "the namespace's fully qualified host name, e.g. contoso.servicebus.windows.net",
    )
    r.read(
        "DESTINATION",
        parse.pattern(parse.DESTINATION_NAME),
        "lower-case letters, digits and '-', at most 40, starting with a letter or digit",
    )
    r.read("LOG_FORMAT", parse.choice("auto", "json", "console"), "auto, json or console")
    r.read("LOG_LEVEL", parse.log_level, "DEBUG, INFO, WARNING or ERROR")
    r.read("SSL_CERT_FILE", parse.existing_file, "the path of an existing PEM file")
    r.read(
        "BUS_LOCK_DURATION_SECONDS",
        parse.float_range(1.0, 300.0),
        "seconds a received message stays locked, 1 to 300 (Service Bus allows 5 minutes)",
    )
    r.read("BUS_MAX_DELIVERY_COUNT", parse.int_range(1, 100), "a whole number from 1 to 100")
    r.read("FILTER_BATCH_SIZE", parse.int_range(1, 5000), "a whole number from 1 to 5000")
    r.read("UPLOAD_LINGER_SECONDS", parse.float_range(0.0, 60.0), "seconds, 0 to 60")
    r.read("DRAIN_TIMEOUT_SECONDS", parse.float_range(1.0, 600.0), "seconds, 1 to 600")
    r.read(
        "HEALTH_PORT",
        parse.int_range(0, 65535),
        "a TCP port for /livez, /readyz and /metrics (0: any free port, logged at start)",
    )

    values = r.values
    if "health_port" not in values and service in DEFAULT_HEALTH_PORTS:
        values["health_port"] = DEFAULT_HEALTH_PORTS[service]
    if "sentinel_base_url" not in values and "sentinel_api" in values:
        values["sentinel_base_url"] = SENTINEL_DEFAULT_HOSTS[values["sentinel_api"]]
    problems = (
        r.problems
        + _missing(values, r.invalid, service)
        + _bus_problems(values, r.invalid)
        + _plaintext_bus(values)
    )
    if problems:
        raise ConfigError(problems)
    warnings = tuple(
        f"{name} is {why}" for name, why in REMOVED_SETTINGS.items() if r.raw(name) is not None
    )
    return Settings(**values, warnings=warnings)


def _bus_problems(values: Mapping[str, Any], invalid: set[str]) -> list[str]:
    """BUS=servicebus needs exactly one way to reach the namespace."""
    if values.get("bus") != "servicebus" or "SERVICEBUS_NAMESPACE" in invalid:
        return []
    namespace = "servicebus_namespace" in values
    connection_string = "servicebus_connection_string" in values
    if namespace and connection_string:
        return [
            "SERVICEBUS_NAMESPACE and SERVICEBUS_CONNECTION_STRING are both set: set one "
            "(the namespace for workload identity, or a connection string)"
        ]
    if not namespace and not connection_string:
        return [
            "BUS=servicebus needs SERVICEBUS_NAMESPACE (workload identity) or "
            "SERVICEBUS_CONNECTION_STRING"
        ]
    return []


def _plaintext_bus(values: Mapping[str, Any]) -> list[str]:
    """``UseDevelopmentEmulator=true`` makes the Service Bus SDK speak plain AMQP: no TLS, so
    no certificate to check and the SAS token in clear. An emulator on this machine (the local
    tests' fake peer) may; a namespace elsewhere may not. The line names the host, never the
    string, which holds the key."""
    connection_string = values.get("servicebus_connection_string")
    if connection_string is None:
        return []
    host = parse.emulator_host(connection_string.reveal())
    if host is None or parse.is_loopback(host):
        return []
    return [
        f"SERVICEBUS_CONNECTION_STRING sets UseDevelopmentEmulator=true for {host!r}, which "
        "turns TLS off: it is accepted for an emulator on this machine only (localhost, "
        "127.0.0.1, ::1); remove it for a real namespace"
    ]


def _missing(values: Mapping[str, Any], invalid: set[str], service: Service) -> list[str]:
    needed: list[str] = []
    if service in (Service.FETCHER, Service.ALL):
        needed += ["MATI_API_KEY", "MATI_API_SECRET"]
    if service in (Service.UPLOADER, Service.ALL):
        needed += ["AZURE_WORKSPACE_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_ID"]
    by = "" if service is Service.ALL else f" by the {service.value} service"
    problems = [
        f"{name} is required{by} and is not set"
        for name in needed
        if name.lower() not in values and name not in invalid
    ]
    if (
        service in (Service.UPLOADER, Service.ALL)
        and "azure_client_secret" not in values
        and "azure_federated_token_file" not in values
    ):
        problems.append(
            "AZURE_CLIENT_SECRET is not set: set it, or AZURE_FEDERATED_TOKEN_FILE "
            "for workload identity"
        )
    return problems
