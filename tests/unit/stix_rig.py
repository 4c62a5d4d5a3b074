"""What the test_stix_*.py modules share: the upload time and the §6 md5 example's hashes they
expect, observables made from the §6 examples, the literal of a pattern as the OASIS parser
reads it, and ``assert_valid_stix``, the strict ``stix2`` parse every object must pass (with our
extension registered, so its properties are checked too)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final

import stix2
from stix2patterns.pattern import Pattern

from shared.core.filters import Observable, ObservableKind
from shared.core.fingerprint import EXTENSION_ID, FINGERPRINT_PROPERTY
from shared.core.indicator import HashType, Indicator
from tests.unit.strategies import example_indicator

NOW = datetime(2025, 3, 9, 8, 30, 0, 123456, tzinfo=UTC)
MD5 = "b3becab76a6d36861357bfa3fe966003"
SHA1 = "537f7341e42b72c88032e89aafa94ce5861f2e2a"
SHA256 = "268791330e6cf922e1c53392031cfcbe203630e416342e5503d39f402b6f0ca5"


def observable(
    kind: str = "ipv4", hash_type: HashType | None = None, /, **changes: object
) -> Observable:
    indicator = example_indicator(kind, **changes)
    if hash_type is None:
        return Observable(indicator, ObservableKind(kind), indicator.value)
    value = indicator.hash_value(hash_type)
    assert value is not None
    return Observable(indicator, ObservableKind.HASH, value, hash_type)


def of(indicator: Indicator) -> Observable:
    return Observable(indicator, ObservableKind(indicator.type), indicator.value)


def literal(stix_pattern: str) -> str:
    """The string literal of a single-comparison pattern, read by the OASIS parser."""
    comparisons = Pattern(stix_pattern).inspect().comparisons
    [(_, _, quoted)] = next(iter(comparisons.values()))
    assert quoted[0] == quoted[-1] == "'"
    return str(quoted[1:-1])


def _register_our_extension() -> type:
    """Our property extension, registered with ``stix2`` (its documented custom-extension API)
    so that parsing checks its properties too. Only this extension: nothing else custom is
    allowed (no ``allow_custom``), so a top-level ``x_`` property fails the parse.

    ``stix2`` would also accept the extension unregistered, as a plain dict it never looks
    into; registered, an unknown, missing or ill-typed property of ours fails the parse."""

    @stix2.v21.CustomExtension(
        EXTENSION_ID,
        [
            ("mati_id", stix2.properties.StringProperty(required=True)),
            ("threat_score", stix2.properties.IntegerProperty(min=0, max=100)),
            (FINGERPRINT_PROPERTY, stix2.properties.StringProperty(required=True)),
        ],
    )
    class MatiProperties:
        extension_type = "property-extension"

    return MatiProperties


MatiProperties: Final = _register_our_extension()


def ours(obj: Mapping[str, object]) -> dict[str, object]:
    """Our extension of ``obj``."""
    extensions = obj["extensions"]
    assert isinstance(extensions, dict)
    found = extensions[EXTENSION_ID]
    assert isinstance(found, dict)
    return found


def assert_valid_stix(obj: dict[str, object]) -> None:
    """Valid STIX 2.1 for the OASIS library, strictly: no custom property but our extension."""
    parsed = stix2.parse(obj)
    assert isinstance(parsed, stix2.v21.Indicator)
    assert parsed.id == obj["id"]
    assert parsed.pattern == obj["pattern"]
    assert isinstance(parsed.extensions[EXTENSION_ID], MatiProperties)
    # stix2 fills in a fixed extension_type that is missing and coerces "88" to 88: check ours.
    extension = ours(obj)
    assert extension["extension_type"] == "property-extension"
    assert type(extension.get("threat_score", 0)) is int
    assert not [key for key in obj if key.startswith("x_")]
