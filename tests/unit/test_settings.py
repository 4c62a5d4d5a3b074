"""Settings: seed defaults, every invalid value's one clear line, and secrets masked wherever
settings are shown. ``check-config`` as a child process: tests/integration/test_check_config.py."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from shared.core.errors import ConfigError
from shared.core.filters import FilterPolicy, HashSelection
from shared.core.secrets import MASK, Secret
from shared.core.setting_values import url_password
from shared.core.settings import REMOVED_SETTINGS, Service, Settings, load_settings
from shared.core.stix import StixPolicy
from tests.helpers import REDIS_PASSWORD, SECRETS, VALID_ENV


def load(**overrides: str) -> Settings:
    return load_settings({**VALID_ENV, **overrides})


def problems_of(environ: dict[str, str], service: Service = Service.ALL) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ, service)
    return caught.value.problems


def test_defaults_are_the_seeds() -> None:
    s = load()
    assert (s.ip_indicator_expiration, s.fqdn_indicator_expiration) == (7, 7)
    assert (s.url_indicator_expiration, s.hash_indicator_expiration) == (7, 90)
    assert s.initial_lookback == 30
    assert (s.minimum_confidence, s.minimum_threat_score) == (80, 80)
    assert s.exclude_osint is True
    assert s.default_action == "alert"
    assert s.include_uncategorized is True
    assert s.hash_type == "md5"
    assert (s.include_ipv4, s.include_hash, s.include_url, s.include_fqdn) == (True,) * 4
    assert s.passive_only is False
    assert s.sync_schedule == 4
    assert s.enable_deduplication is True
    assert s.sentinel_api == "stix-objects"
    assert s.sentinel_base_url == "https://api.ti.sentinel.azure.com"
    assert s.bus == "redis"
    assert s.warnings == ()


def test_values_are_read_under_the_seed_names() -> None:
    s = load(
        IP_INDICATOR_EXPIRATION="3",
        FQDN_INDICATOR_EXPIRATION="14",
        URL_INDICATOR_EXPIRATION="10",
        HASH_INDICATOR_EXPIRATION="180",
        INITIAL_LOOKBACK="90",
        MINIMUM_CONFIDENCE="0",
        MINIMUM_THREAT_SCORE="100",
        EXCLUDE_OSINT="FALSE",
        DEFAULT_ACTION="Block",
        INCLUDE_UNCATEGORIZED="false",
        HASH_TYPE="SHA256",
        INCLUDE_IPV4="FALSE",
        INCLUDE_HASH="0",
        INCLUDE_URL="no",
        INCLUDE_FQDN="False",
        PASSIVE_ONLY="TRUE",
        SYNC_SCHEDULE="0.5",
        ENABLE_DEDUPLICATION="FALSE",
        AZURE_WORKSPACE_NAME="soc-workspace",
        AZURE_SUBSCRIPTION_ID=VALID_ENV["AZURE_WORKSPACE_ID"],
        AZURE_RESOURCE_GROUP_NAME="rg-soc",
    )
    assert (s.ip_indicator_expiration, s.hash_indicator_expiration) == (3, 180)
    assert s.initial_lookback == 90
    assert (s.minimum_confidence, s.minimum_threat_score) == (0, 100)
    assert s.exclude_osint is False
    assert s.default_action == "block"
    assert s.hash_type == "sha256"
    assert (s.include_ipv4, s.include_hash, s.include_url, s.include_fqdn) == (False,) * 4
    assert s.passive_only is True
    assert s.sync_schedule == 0.5
    assert s.enable_deduplication is False
    assert s.azure_workspace_name == "soc-workspace"


@pytest.mark.parametrize(
    ("service", "port"),
    [(Service.FETCHER, 8081), (Service.FILTER, 8082), (Service.UPLOADER, 8083)],
)
def test_each_service_probes_on_its_own_port_unless_health_port_is_set(
    service: Service, port: int
) -> None:
    """The three services of one host start side by side with default settings; a pod sets
    HEALTH_PORT and every service listens there."""
    assert load_settings(VALID_ENV, service).health_port == port
    assert load_settings({**VALID_ENV, "HEALTH_PORT": "9090"}, service).health_port == 9090


def test_commands_that_serve_no_probes_have_no_port_and_say_which_services_do() -> None:
    assert load_settings({}, Service.ADMIN).health_port is None
    rows = dict(load().effective())
    assert rows["HEALTH_PORT"] == "fetcher 8081, filter 8082, uploader 8083"


def test_legacy_api_gets_its_own_default_host() -> None:
    s = load(SENTINEL_API="upload-indicators")
    assert s.sentinel_base_url == "https://sentinelus.azure-api.net"
    s = load(SENTINEL_API="upload-indicators", SENTINEL_BASE_URL="https://127.0.0.1:8443/")
    assert s.sentinel_base_url == "https://127.0.0.1:8443"


def test_secrets_are_wrapped() -> None:
    s = load()
    assert isinstance(s.mati_api_key, Secret)
    assert s.mati_api_key.reveal() == SECRETS["MATI_API_KEY"]
    text = repr(s) + str(s) + str(s.effective())
    for secret in SECRETS.values():
        assert secret not in text


@pytest.mark.parametrize(
    ("name", "value", "allowed"),
    [
        ("IP_INDICATOR_EXPIRATION", "0", "1 to 365"),
        ("FQDN_INDICATOR_EXPIRATION", "seven", "1 to 365"),
        ("URL_INDICATOR_EXPIRATION", "-1", "1 to 365"),
        ("HASH_INDICATOR_EXPIRATION", "366", "1 to 365"),
        ("INITIAL_LOOKBACK", "91", "1 to 90"),
        ("INITIAL_LOOKBACK", "2.5", "1 to 90"),
        ("MINIMUM_CONFIDENCE", "101", "0 to 100"),
        ("MINIMUM_THREAT_SCORE", "-5", "0 to 100"),
        ("EXCLUDE_OSINT", "maybe", "TRUE or FALSE"),
        ("INCLUDE_UNCATEGORIZED", "2", "TRUE or FALSE"),
        ("INCLUDE_IPV4", "yep", "TRUE or FALSE"),
        ("INCLUDE_HASH", "t", "TRUE or FALSE"),
        ("INCLUDE_URL", "nope", "TRUE or FALSE"),
        ("INCLUDE_FQDN", "y", "TRUE or FALSE"),
        ("PASSIVE_ONLY", "sometimes", "TRUE or FALSE"),
        ("ENABLE_DEDUPLICATION", "enabled", "TRUE or FALSE"),
        ("DEFAULT_ACTION", "quarantine", "alert, block, allow"),
        ("HASH_TYPE", "sha512", "md5, sha1, sha256, all"),
        ("SYNC_SCHEDULE", "0", "hours between syncs"),
        ("SYNC_SCHEDULE", "nan", "hours between syncs"),
        ("VALIDITY_REFRESH_RATIO", "1.5", "fraction"),
        ("AZURE_WORKSPACE_ID", "my-workspace", "workspace GUID"),
        ("AZURE_CLIENT_ID", "not-a-guid", "client) GUID"),
        ("AZURE_TENANT_ID", "contoso", "tenant GUID or its domain"),
        ("AZURE_SUBSCRIPTION_ID", "sub", "subscription GUID"),
        ("AZURE_AUTHORITY_HOST", "http://login.example", "https://"),
        ("AZURE_FEDERATED_TOKEN_FILE", "/nonexistent/token", "existing token file"),
        ("MATI_BASE_URL", "http://api.intelligence.mandiant.com", "https://"),
        ("MATI_REQUESTS_PER_SECOND", "0", "more than 0"),
        ("SENTINEL_API", "graph", "stix-objects"),
        ("SENTINEL_BASE_URL", "ftp://x", "https://"),
        ("SENTINEL_REQUESTS_PER_MINUTE", "101", "1 to 100"),
        ("SENTINEL_SOURCE_SYSTEM", "Microsoft Sentinel", "reserved"),
        ("LOG_ANALYTICS_BASE_URL", "api.loganalytics.io", "https://"),
        ("REDIS_URL", "localhost:6379", "redis://"),
        ("BUS", "kafka", "redis or servicebus"),
        ("DESTINATION", "Prod Workspace", "lower-case"),
        ("LOG_FORMAT", "xml", "auto, json or console"),
        ("LOG_LEVEL", "verbose", "DEBUG, INFO"),
        ("SSL_CERT_FILE", "/nonexistent/ca.pem", "existing PEM"),
        ("SENTINEL_RATE_WINDOW_SECONDS", "0.5", "1 to 3600"),
        ("BUS_LOCK_DURATION_SECONDS", "301", "1 to 300"),
        ("BUS_MAX_DELIVERY_COUNT", "0", "1 to 100"),
        ("FILTER_BATCH_SIZE", "5001", "1 to 5000"),
        ("UPLOAD_LINGER_SECONDS", "-1", "0 to 60"),
        ("DRAIN_TIMEOUT_SECONDS", "0", "1 to 600"),
        ("HEALTH_PORT", "65536", "TCP port"),
    ],
)
def test_each_invalid_value_gives_one_clear_line(name: str, value: str, allowed: str) -> None:
    problems = problems_of({**VALID_ENV, name: value})
    assert len(problems) == 1
    line = problems[0]
    assert line.startswith(f"{name}={value!r} is not valid: ")
    assert allowed in line
    assert "\n" not in line


def test_all_problems_are_reported_together() -> None:
    problems = problems_of(
        {**VALID_ENV, "HASH_TYPE": "sha512", "INITIAL_LOOKBACK": "120", "BUS": "kafka"}
    )
    assert [p.split("=")[0] for p in problems] == ["INITIAL_LOOKBACK", "HASH_TYPE", "BUS"]


def test_each_service_requires_only_its_own_credentials() -> None:
    assert load_settings({}, Service.FILTER).mati_api_key is None
    fetcher = problems_of({}, Service.FETCHER)
    assert fetcher == [
        "MATI_API_KEY is required by the fetcher service and is not set",
        "MATI_API_SECRET is required by the fetcher service and is not set",
    ]
    uploader = problems_of({}, Service.UPLOADER)
    assert [p.split(" ")[0] for p in uploader] == [
        "AZURE_WORKSPACE_ID",
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_ID",
        "AZURE_CLIENT_SECRET",
    ]
    assert "AZURE_FEDERATED_TOKEN_FILE" in uploader[-1]


def test_workload_identity_replaces_the_client_secret(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("assertion")
    environ = {k: v for k, v in VALID_ENV.items() if k != "AZURE_CLIENT_SECRET"}
    s = load_settings({**environ, "AZURE_FEDERATED_TOKEN_FILE": str(token_file)})
    assert s.azure_client_secret is None
    assert s.azure_federated_token_file == token_file


def test_blank_values_count_as_unset() -> None:
    s = load(HASH_TYPE="  ", MINIMUM_CONFIDENCE="")
    assert (s.hash_type, s.minimum_confidence) == ("md5", 80)
    assert problems_of({**VALID_ENV, "MATI_API_KEY": "   "}, Service.FETCHER) == [
        "MATI_API_KEY is required by the fetcher service and is not set"
    ]


def test_authority_host_without_scheme_gets_https() -> None:
    assert load(AZURE_AUTHORITY_HOST="login.microsoftonline.us").azure_authority_host == (
        "https://login.microsoftonline.us"
    )


@pytest.mark.parametrize("name", sorted(REMOVED_SETTINGS))
def test_removed_settings_warn_once(name: str) -> None:
    s = load(**{name: "TRUE"})
    assert len(s.warnings) == 1
    assert s.warnings[0].startswith(f"{name} is removed in v1.2")


def test_effective_lists_every_setting_with_secrets_masked() -> None:
    rows = dict(load().effective())
    assert rows["MATI_API_KEY"] == MASK
    assert rows["AZURE_CLIENT_SECRET"] == MASK
    assert rows["EXCLUDE_OSINT"] == "TRUE"
    assert rows["SYNC_SCHEDULE"] == "4"
    assert rows["AZURE_FEDERATED_TOKEN_FILE"] == "(not set)"
    assert "WARNINGS" not in rows


def test_policies_carry_the_settings() -> None:
    s = load(
        MINIMUM_CONFIDENCE="60",
        MINIMUM_THREAT_SCORE="0",
        EXCLUDE_OSINT="FALSE",
        INCLUDE_UNCATEGORIZED="FALSE",
        HASH_TYPE="all",
        INCLUDE_URL="FALSE",
        IP_INDICATOR_EXPIRATION="3",
        HASH_INDICATOR_EXPIRATION="30",
        DEFAULT_ACTION="block",
        PASSIVE_ONLY="TRUE",
    )
    assert s.filter_policy() == FilterPolicy(
        minimum_confidence=60,
        minimum_threat_score=0,
        exclude_osint=False,
        include_uncategorized=False,
        hash_selection=HashSelection.ALL,
        include_url=False,
    )
    assert s.stix_policy() == StixPolicy(
        ipv4_expiration=timedelta(days=3),
        hash_expiration=timedelta(days=30),
        default_action="block",
        passive_only=True,
    )
    assert load().filter_policy() == FilterPolicy()
    assert load().stix_policy() == StixPolicy()


def test_redis_password_is_masked_in_effective_settings() -> None:
    url = f"rediss://default:{REDIS_PASSWORD}@cache.example:6380/0"
    s = load(REDIS_URL=url)
    assert s.redis_url == url
    assert dict(s.effective())["REDIS_URL"] == f"rediss://default:{MASK}@cache.example:6380/0"
    assert url_password(url) == REDIS_PASSWORD
    assert url_password("redis://127.0.0.1:6379/0") is None


# ------------------------------------------------------------------------------------------
# BUS=servicebus


def test_servicebus_by_namespace_or_connection_string() -> None:
    s = load(BUS="servicebus", SERVICEBUS_NAMESPACE="sb://contoso.servicebus.windows.net/")
    assert s.servicebus_namespace == "contoso.servicebus.windows.net"
    assert s.servicebus_connection_string is None
    conn = (
        "Endpoint=sb://contoso.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=abc="
    )
    s = load(BUS="servicebus", SERVICEBUS_CONNECTION_STRING=conn)
    assert isinstance(s.servicebus_connection_string, Secret)
    assert "abc=" not in repr(s)
    assert "abc=" not in str(s.effective())


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, "BUS=servicebus needs SERVICEBUS_NAMESPACE"),
        (
            {
                "SERVICEBUS_NAMESPACE": "a.servicebus.windows.net",
                "SERVICEBUS_CONNECTION_STRING": "x",
            },
            "are both set",
        ),
        ({"SERVICEBUS_NAMESPACE": "not a host"}, "SERVICEBUS_NAMESPACE='not a host' is not valid"),
    ],
)
def test_servicebus_settings_problems(extra: dict[str, str], expected: str) -> None:
    [problem] = problems_of({**VALID_ENV, "BUS": "servicebus", **extra})
    assert expected in problem


def test_servicebus_settings_are_ignored_with_redis() -> None:
    assert load(SERVICEBUS_NAMESPACE="a.servicebus.windows.net").bus == "redis"
