"""Both upload body shapes (the STIX objects API and the legacy upload-indicators API), the
batch limits, and the source system names Sentinel refuses: a body Sentinel turns down fails
the whole request."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from shared.core.stix import (
    MAX_OBJECTS_PER_REQUEST,
    SentinelApi,
    StixPolicy,
    check_source_system,
    indicator_object,
    upload_body,
)
from tests.unit.stix_rig import NOW, observable

# --- upload bodies ----------------------------------------------------------------------------


def test_the_stix_objects_api_body() -> None:
    objects = [indicator_object(observable(kind), StixPolicy(), NOW) for kind in ("ipv4", "url")]
    assert upload_body(SentinelApi.STIX_OBJECTS, "Mandiant Advantage", objects) == {
        "sourcesystem": "Mandiant Advantage",
        "stixobjects": objects,
    }


def test_the_legacy_upload_indicators_api_body() -> None:
    objects = [indicator_object(observable(), StixPolicy(), NOW)]
    assert upload_body(SentinelApi.UPLOAD_INDICATORS, "Mandiant Advantage", objects) == {
        "sourcesystem": "Mandiant Advantage",
        "value": objects,
    }


def test_api_values_are_the_settings_spelling() -> None:
    assert [str(api) for api in SentinelApi] == ["stix-objects", "upload-indicators"]


@pytest.mark.parametrize("count", [0, MAX_OBJECTS_PER_REQUEST + 1])
def test_an_upload_holds_1_to_100_objects(count: int) -> None:
    objects = [{"type": "indicator"}] * count
    with pytest.raises(ValueError, match="objects"):
        upload_body(SentinelApi.STIX_OBJECTS, "Mandiant", objects)


def test_any_mapping_goes_into_a_body_as_a_dict() -> None:
    obj = indicator_object(observable(), StixPolicy(), NOW)
    body = upload_body(SentinelApi.STIX_OBJECTS, "Mandiant", [MappingProxyType(obj), obj])
    listed = body["stixobjects"]
    assert listed == [obj, obj]
    assert isinstance(listed, list)
    assert all(type(o) is dict for o in listed)


def test_a_full_batch_is_accepted() -> None:
    body = upload_body(SentinelApi.STIX_OBJECTS, "Mandiant", [{"type": "indicator"}] * 100)
    assert len(body["stixobjects"]) == 100  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name",
    ["", "  ", "Microsoft Sentinel", "microsoft sentinel", " Microsoft Sentinel ", "x" * 257],
)
def test_sentinel_refuses_these_source_systems(name: str) -> None:
    assert check_source_system(name) is not None
    with pytest.raises(ValueError, match="source system"):
        upload_body(SentinelApi.STIX_OBJECTS, name, [{"type": "indicator"}])


@pytest.mark.parametrize("name", ["Mandiant", "x" * 256, "Microsoft Sentinel TI"])
def test_these_source_systems_are_fine(name: str) -> None:
    assert check_source_system(name) is None
