"""The destinations file's rules (``shared.core.destinations``): what a destination may set, how
its values fall back to the environment and the defaults, secrets only by reference, and one
line per problem naming the destination. Reading the YAML is in test_destinations_file.py."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.fetcher.config import MATI_RETENTION, RETENTION_MARGIN, FetcherConfig
from shared.core.destinations import (
    NAME,
    PER_DESTINATION,
    load_destinations,
    one_destination,
    overlays,
)
from shared.core.errors import ConfigError
from shared.core.settings import Service, load_settings
from tests.helpers import SECRETS, VALID_ENV

CONTOSO_SECRET = "contoso-secret-Hq27Lm"
ENV = {**VALID_ENV, "CONTOSO_CLIENT_SECRET": CONTOSO_SECRET, "MINIMUM_CONFIDENCE": "70"}
CONTOSO_WORKSPACE = "6f1c0000-0000-4000-8000-000000000001"


def file(**destinations: Any) -> dict[str, Any]:
    return {"destinations": destinations}


def problems(document: object, environ: dict[str, str] = ENV, **options: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_destinations(environ, document, Service.UPLOADER, **options)
    return caught.value.problems


def test_each_destination_is_its_block_over_the_environment_over_the_defaults() -> None:
    document = file(
        contoso={
            "AZURE_WORKSPACE_ID": CONTOSO_WORKSPACE,
            "AZURE_CLIENT_SECRET": {"env": "CONTOSO_CLIENT_SECRET"},
            "MINIMUM_CONFIDENCE": 90,
            "HASH_INDICATOR_EXPIRATION": 30,
            "EXCLUDE_OSINT": False,
            "EXCLUDE_WARNINGLISTS": ["public-dns-v4", "rfc1918"],
        },
        fabrikam=None,
    )
    loaded = load_destinations(ENV, document, Service.UPLOADER)
    assert list(loaded) == ["contoso", "fabrikam"]
    contoso, fabrikam = loaded["contoso"], loaded["fabrikam"]
    assert contoso.destination == "contoso"
    assert contoso.azure_workspace_id == CONTOSO_WORKSPACE
    assert contoso.azure_client_secret is not None
    assert contoso.azure_client_secret.reveal() == CONTOSO_SECRET
    assert (contoso.minimum_confidence, contoso.hash_indicator_expiration) == (90, 30)
    assert contoso.exclude_osint is False
    assert contoso.exclude_warninglists == frozenset({"public-dns-v4", "rfc1918"})
    # Not set in its block: the environment's value, else the default.
    assert contoso.azure_tenant_id == ENV["AZURE_TENANT_ID"]
    assert contoso.ip_indicator_expiration == 7
    # An empty block is the environment under the destination's own name.
    expected = load_settings({**ENV, "DESTINATION": "fabrikam"}, Service.UPLOADER)
    assert fabrikam == expected


def test_a_literal_secret_is_refused_without_being_echoed() -> None:
    lines = problems(file(contoso={"AZURE_CLIENT_SECRET": CONTOSO_SECRET}))
    assert lines == [
        "DESTINATIONS_FILE: contoso: AZURE_CLIENT_SECRET is a secret and is given only by "
        "reference, {env: NAME_OF_A_VARIABLE}: the file is not a secret store"
    ]
    assert CONTOSO_SECRET not in " ".join(lines)


def test_a_reference_to_an_unset_variable_names_it() -> None:
    lines = problems(file(contoso={"AZURE_CLIENT_SECRET": {"env": "NOT_THERE"}}))
    assert lines == [
        "DESTINATIONS_FILE: contoso: AZURE_CLIENT_SECRET refers to NOT_THERE, which is not set"
    ]


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("REDIS_URL", "REDIS_URL is not a per-destination setting"),
        ("MATI_API_KEY", "MATI_API_KEY is not a per-destination setting"),
        ("DESTINATION", "DESTINATION is not a per-destination setting"),
        ("minimum_confidence", "minimum_confidence is not a setting: names are upper case"),
    ],
)
def test_only_what_can_differ_between_workspaces_is_set_per_destination(key: str, why: str) -> None:
    (line,) = problems(file(contoso={key: "x"}))
    assert line.startswith(f"DESTINATIONS_FILE: contoso: {why}")


@pytest.mark.parametrize(
    "document",
    [
        None,
        [],
        {"destination": {}},
        {"destinations": {}},
        {"destinations": ["a"]},
        {"destinations": {"a": 1}},
    ],
)
def test_a_file_of_the_wrong_shape_is_one_line(document: object) -> None:
    (line,) = problems(document)
    assert line.startswith("DESTINATIONS_FILE:")


def test_every_problem_of_every_destination_comes_out_at_once() -> None:
    document = file(
        contoso={"MINIMUM_CONFIDENCE": 900, "HASH_TYPE": "sha512"},
        fabrikam={"SENTINEL_BASE_URL": "http://plain.example"},
        good={},
    )
    lines = problems(document)
    assert lines == [
        "destination contoso: MINIMUM_CONFIDENCE='900' is not valid: a whole number from 0 to 100",
        "destination contoso: HASH_TYPE='sha512' is not valid: one of md5, sha1, sha256, all",
        "destination fabrikam: SENTINEL_BASE_URL='http://plain.example' is not valid: "
        "an https:// URL",
    ]


def test_one_destinations_bad_value_never_stops_another() -> None:
    document = file(contoso={"MINIMUM_CONFIDENCE": 900}, fabrikam={"MINIMUM_CONFIDENCE": 95})
    fabrikam = one_destination(ENV, document, Service.FILTER, "fabrikam")
    assert fabrikam.minimum_confidence == 95


def test_a_filter_or_uploader_must_be_told_its_destination() -> None:
    document = file(contoso={}, fabrikam={})
    with pytest.raises(ConfigError) as caught:
        one_destination(ENV, document, Service.UPLOADER, None)
    assert caught.value.problems == [
        "DESTINATIONS_FILE declares contoso, fabrikam: choose the destination this process "
        "serves with --destination NAME or DESTINATION"
    ]
    with pytest.raises(ConfigError) as caught:
        one_destination(ENV, document, Service.UPLOADER, "northwind")
    assert caught.value.problems == [
        "destination 'northwind' is not in DESTINATIONS_FILE: it declares contoso, fabrikam"
    ]


def test_required_credentials_are_each_destinations_own() -> None:
    environ = {k: v for k, v in ENV.items() if k not in ("AZURE_CLIENT_SECRET", "AZURE_CLIENT_ID")}
    lines = problems(file(contoso={"AZURE_CLIENT_ID": VALID_ENV["AZURE_CLIENT_ID"]}), environ)
    assert lines == [
        "destination contoso: AZURE_CLIENT_SECRET is not set: set it, or "
        "AZURE_FEDERATED_TOKEN_FILE for workload identity"
    ]
    assert SECRETS["AZURE_CLIENT_SECRET"] not in " ".join(lines)


@given(st.from_regex(NAME, fullmatch=True))
def test_every_name_the_pattern_allows_is_a_destination(name: str) -> None:
    assert list(overlays(file(**{name: {}}), ENV)) == [name]
    assert len(name) <= 24


@given(st.text(min_size=1, max_size=40))
def test_a_name_outside_the_pattern_is_refused(name: str) -> None:
    if re.fullmatch(r"[a-z0-9](?:[a-z0-9-]{0,22}[a-z0-9])?", name):
        return
    with pytest.raises(ConfigError) as caught:
        overlays(file(**{name: {}}), ENV)
    assert caught.value.problems[0].startswith("DESTINATIONS_FILE: destination name")


@given(st.sampled_from(sorted(PER_DESTINATION - {"AZURE_CLIENT_SECRET"})))
def test_every_per_destination_setting_is_one_the_settings_know(key: str) -> None:
    """A key the file allows that ``load_settings`` ignored would be silently dropped."""
    assert key.lower() in {f for f in load_settings(VALID_ENV).__dataclass_fields__}


def test_the_fetcher_asks_for_what_the_loosest_destination_needs() -> None:
    document = file(
        short={
            "HASH_INDICATOR_EXPIRATION": 10,
            "IP_INDICATOR_EXPIRATION": 3,
            "URL_INDICATOR_EXPIRATION": 3,
            "FQDN_INDICATOR_EXPIRATION": 3,
        },
        lists={
            "EXCLUDE_WARNINGLISTS": "rfc1918",
            "HASH_INDICATOR_EXPIRATION": 20,
            "IP_INDICATOR_EXPIRATION": 3,
            "URL_INDICATOR_EXPIRATION": 3,
            "FQDN_INDICATOR_EXPIRATION": 3,
        },
    )
    served = load_destinations(ENV, document, Service.FILTER)
    config = FetcherConfig.from_settings(load_settings(ENV, Service.FETCHER), served.values())
    assert config.destinations == ("short", "lists")
    assert config.include_misp is True
    assert config.full_window.days == 20
    alone = FetcherConfig.from_settings(served["short"])
    assert (alone.destinations, alone.include_misp, alone.full_window.days) == (
        ("short",),
        False,
        10,
    )
    # Hashes live 90 days by default: as far back as MATI serves.
    assert FetcherConfig.from_settings(load_settings(ENV)).full_window == (
        MATI_RETENTION - RETENTION_MARGIN
    )


def test_a_secret_is_needed_only_where_it_is_used() -> None:
    """The fetcher and the filters hold no client secret, and an uploader only its own: a
    reference to a variable the process lacks is missing only for whoever uploads with it."""
    document = file(
        contoso={"AZURE_CLIENT_SECRET": {"env": "CONTOSO_CLIENT_SECRET"}},
        fabrikam={"AZURE_CLIENT_SECRET": {"env": "FABRIKAM_CLIENT_SECRET"}},
    )
    assert list(load_destinations(ENV, document, Service.FILTER)) == ["contoso", "fabrikam"]
    contoso = one_destination(ENV, document, Service.UPLOADER, "contoso")
    assert contoso.azure_client_secret is not None
    assert contoso.azure_client_secret.reveal() == CONTOSO_SECRET
    with pytest.raises(ConfigError) as caught:
        one_destination(ENV, document, Service.UPLOADER, "fabrikam")
    assert caught.value.problems == [
        "DESTINATIONS_FILE: fabrikam: AZURE_CLIENT_SECRET refers to FABRIKAM_CLIENT_SECRET, "
        "which is not set"
    ]


def test_any_other_reference_must_resolve_for_every_process() -> None:
    document = file(contoso={"MINIMUM_CONFIDENCE": {"env": "CONTOSO_MINIMUM"}})
    with pytest.raises(ConfigError) as caught:
        load_destinations(ENV, document, Service.FILTER)
    assert caught.value.problems == [
        "DESTINATIONS_FILE: contoso: MINIMUM_CONFIDENCE refers to CONTOSO_MINIMUM, which is not set"
    ]
    resolved = load_destinations({**ENV, "CONTOSO_MINIMUM": "65"}, document, Service.FILTER)
    assert resolved["contoso"].minimum_confidence == 65
