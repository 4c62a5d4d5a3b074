"""Reading ``DESTINATIONS_FILE`` (``shared.adapters.destinations_file``) and choosing what a
process serves from it (``services.configuration``): each failure is one line naming the
file, and the line and column of a syntax error."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.configuration import settings_from
from shared.adapters.destinations_file import read
from shared.core.errors import ConfigError
from shared.core.settings import Service
from tests.helpers import TWO_DESTINATIONS, VALID_ENV, destinations_env


def refused(environ: dict[str, str], service: Service = Service.FILTER) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        settings_from(environ, service)
    return caught.value.problems


def test_no_file_is_the_environments_one_destination() -> None:
    assert read(VALID_ENV) is None
    settings, served = settings_from({**VALID_ENV, "DESTINATION": "acme"}, Service.UPLOADER)
    assert served == {"acme": settings}


def test_a_filter_serves_the_destination_it_is_given(tmp_path: Path) -> None:
    environ = destinations_env(tmp_path)
    settings, served = settings_from(environ, Service.FILTER, "contoso")
    assert (settings.destination, settings.minimum_confidence) == ("contoso", 90)
    assert list(served) == ["contoso"]
    settings, _ = settings_from({**environ, "DESTINATION": "fabrikam-gov"}, Service.UPLOADER)
    assert settings.azure_authority_host == "https://login.microsoftonline.us"
    assert refused(environ)[0].startswith("DESTINATIONS_FILE declares contoso, fabrikam-gov")


def test_the_fetcher_feeds_every_destination_whatever_destination_says(tmp_path: Path) -> None:
    environ = destinations_env(tmp_path, DESTINATION="contoso")
    settings, served = settings_from(environ, Service.FETCHER)
    assert list(served) == ["contoso", "fabrikam-gov"]
    assert settings.mati_api_key is not None


def test_operator_commands_take_all_destinations_or_the_one_named(tmp_path: Path) -> None:
    environ = destinations_env(tmp_path)
    _, served = settings_from(environ, Service.ADMIN)
    assert list(served) == ["contoso", "fabrikam-gov"]
    _, served = settings_from(environ, Service.ADMIN, "fabrikam-gov")
    assert list(served) == ["fabrikam-gov"]


def test_a_name_given_twice_is_refused_with_its_line(tmp_path: Path) -> None:
    text = TWO_DESTINATIONS + "  contoso:\n    MINIMUM_CONFIDENCE: 10\n"
    (line,) = refused(destinations_env(tmp_path, text), Service.ADMIN)
    assert "is not valid YAML at line 9, column 3: 'contoso' is given twice" in line


def test_a_syntax_error_names_its_line_and_column(tmp_path: Path) -> None:
    (line,) = refused(
        destinations_env(tmp_path, "destinations:\n  contoso: {MINIMUM_CONFIDENCE: 9\n")
    )
    assert line.startswith("DESTINATIONS_FILE=")
    assert "is not valid YAML at line 3, column 1" in line


def test_yaml_that_builds_objects_is_refused(tmp_path: Path) -> None:
    text = "destinations: !!python/object/apply:os.system ['true']\n"
    (line,) = refused(destinations_env(tmp_path, text))
    assert "is not valid YAML" in line


def test_a_file_that_is_not_there_is_one_line(tmp_path: Path) -> None:
    environ = {**VALID_ENV, "DESTINATIONS_FILE": str(tmp_path / "missing.yaml")}
    assert refused(environ) == [
        f"DESTINATIONS_FILE={str(tmp_path / 'missing.yaml')!r} cannot be read: "
        "No such file or directory"
    ]


def test_operator_commands_that_upload_or_ask_mati_take_every_destination(tmp_path: Path) -> None:
    """``reconcile`` reads each workspace with its uploader's identity; ``explain`` and
    ``suppress`` ask MATI with the fetcher's: both go through every destination, or the one
    named, unlike the services themselves."""
    environ = destinations_env(tmp_path)
    _, served = settings_from(environ, Service.UPLOADER, each=Service.UPLOADER)
    assert list(served) == ["contoso", "fabrikam-gov"]
    _, served = settings_from(environ, Service.UPLOADER, "contoso", each=Service.UPLOADER)
    assert list(served) == ["contoso"]
    process, served = settings_from(environ, Service.FETCHER, "fabrikam-gov", each=Service.FILTER)
    assert list(served) == ["fabrikam-gov"]
    assert process.mati_api_key is not None
