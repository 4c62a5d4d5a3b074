"""The Sentinel simulator's per-record validation (spec §1.3, §2.2): what it refuses, how it
words the refusal, and that its quick acceptance check never disagrees with the full checks.

A check here that is more lenient than Sentinel hides a product bug until a real workspace
refuses the upload, so each test pins one rule.
"""

from __future__ import annotations

import itertools
import ssl
import uuid
from datetime import datetime
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.core.filters import Observable
from shared.core.stix import StixPolicy, indicator_object
from simulators import sentinel_validation
from simulators.sentinel import DEFAULT_WORKSPACE_ID, SentinelSimulator
from simulators.sentinel_validation import validate_object
from simulators.tokens import TokenMinter
from tests.simulators.sentinel_uploads import MISSING_ID, indicator, upload
from tests.unit.strategies import (
    PROPERTY,
    observables,
    stix_policies,
    text_observables,
    utc_datetimes,
)

#: Values each property is tried with by the validator-agreement test: absent, empty, the
#: wrong type, the wrong shape, and valid ones that still break an ordering rule.
_TRIALS: dict[str, list[Any]] = {
    "type": [None, "", 7, "attack-pattern", "Indicator", ["indicator"]],
    "id": [
        None,
        "",
        5,
        "indicator--not-a-uuid",
        "attack-pattern--0f6f2d8e-6a3e-4c69-9a57-6d1a8f0c7e11",
        "indicator--0F6F2D8E-6A3E-4C69-9A57-6D1A8F0C7E11",
        "indicator--0f6f2d8e-6a3e-4c69-9a57-6d1a8f0c7e11\n",
        "-indicator--0f6f2d8e-6a3e-4c69-9a57-6d1a8f0c7e11",
    ],
    "spec_version": [None, "2.0", "2.2", 2.1],
    "created": [None, "", "2024-05-01", "2024-13-01T00:00:00Z", "2024-05-02T00:00:00.5Z", 0],
    "modified": [None, "", "2024-04-30T23:59:59.999Z", "2024-05-01T10:00:00+00:00", True],
    "pattern": [None, "", 42, ["[x]"]],
    "pattern_type": [None, "", 1, "sigma"],
    "valid_from": [None, "", "soon", "2099-01-01T00:00:00Z", 3],
    "valid_until": [None, "", "never", "2024-05-01T10:00:00Z", "2024-04-01T00:00:00Z", {}],
    "confidence": [None, -1, 101, 100, 0, True, 50.0, "80"],
    "revoked": [None, True, "yes", 0],
    "labels": [None, [], "tag", ["a", 1], [None], ("a",)],
    "x_mati_id": [None, "ipv4--1", 0],
    "extensions": [
        None,
        {"extension-definition--0f6f2d8e-6a3e-5c69-9a57-6d1a8f0c7e11": {"rank": 5}},
        {"x509-v3-extensions-ext": {"basic_constraints": "CA:TRUE"}},
        {},
        [],
        {"extension-definition--x": {"rank": 5}},
        {"custom": {"rank": 5}},
        {"extension-definition--0f6f2d8e-6a3e-5c69-9a57-6d1a8f0c7e11": {}},
        {"extension-definition--0f6f2d8e-6a3e-5c69-9a57-6d1a8f0c7e11": "rank"},
        {"indicator--0f6f2d8e-6a3e-5c69-9a57-6d1a8f0c7e11": {"rank": 5}},
    ],
}


def test_the_quick_acceptance_check_never_disagrees_with_the_full_checks() -> None:
    """Every uploaded object first meets a one-pass check that only says "accepted"; the
    full checks (which word the messages) must give the same answer for every object."""
    base = indicator(id="indicator--0f6f2d8e-6a3e-4c69-9a57-6d1a8f0c7e11")
    stix_20 = {k: v for k, v in base.items() if k != "pattern_type"} | {"spec_version": "2.0"}
    other = {
        "type": "attack-pattern",
        "id": "attack-pattern--0f6f2d8e-6a3e-4c69-9a57-6d1a8f0c7e11",
        "created": "2024-05-01T10:00:00Z",
        "modified": "2024-05-01T10:00:00Z",
        "name": "Spearphishing",
    }
    variants: list[Any] = [[base], "indicator", None]
    for start in (base, stix_20, other):
        variants.append(start)
        for key, values in _TRIALS.items():
            for value in values:
                variant = {**start, key: value}
                variants.append({k: v for k, v in variant.items() if v is not None})
    for (k1, v1s), (k2, v2s) in itertools.combinations(_TRIALS.items(), 2):
        for v1, v2 in itertools.product(v1s[:3], v2s[:3]):
            pair = {**base, k1: v1, k2: v2}
            variants.append({k: v for k, v in pair.items() if v is not None})
    accepted = 0
    for obj in variants:
        for legacy in (False, True):
            full = sentinel_validation._problems(obj, legacy=legacy)
            assert validate_object(obj, legacy=legacy) == full, obj
            accepted += not full
    assert accepted > 20  # the trials include objects that are fine, not only broken ones


@pytest.mark.parametrize("error_key", ["errorMessages", "validationErrorMessages"])
@pytest.mark.parametrize("legacy", [False, True], ids=["stix", "legacy"])
async def test_per_record_errors_are_a_200_with_record_indexes(
    server_ssl: ssl.SSLContext,
    minter: TokenMinter,
    session: aiohttp.ClientSession,
    error_key: Any,
    legacy: bool,
) -> None:
    batch = [
        indicator(),
        indicator(id=None),
        indicator(valid_until="2024-04-01T00:00:00Z"),
        indicator(confidence=101),
        indicator(id="indicator--not-a-uuid"),
        indicator(pattern=None, pattern_type=None, valid_from=None),
        indicator(created="yesterday"),
        indicator(),
    ]
    async with SentinelSimulator(server_ssl, minter=minter, error_key=error_key) as sim:
        status, _, body = await upload(session, sim, batch, legacy=legacy)
    assert status == 200
    errors = {e["recordIndex"]: e[error_key] for e in body["errors"]}
    assert sorted(errors) == [1, 2, 3, 4, 5, 6]
    assert errors[1] == [MISSING_ID]
    assert errors[2] == [
        "Error for Property=valid_until: valid_until must be later than valid_from. "
        "Actual value: 2024-04-01T00:00:00Z."
    ]
    assert errors[3][0].startswith("Error for Property=confidence: ")
    assert errors[4][0].startswith("Error for Property=id: ")
    assert errors[5] == [
        f"Error for Property={p}: Required property is missing. Actual value: NULL."
        for p in ("pattern", "pattern_type", "valid_from")
    ]
    assert errors[6][0].startswith("Error for Property=created: ")
    assert set(sim.store) == {batch[0]["id"], batch[7]["id"]}


EXTENSION = "extension-definition--8b329901-f0cd-573b-8581-99c3f0668664"
OURS = {"extension_type": "property-extension", "mati_id": "ipv4--1", "fingerprint": "0" * 32}


@pytest.mark.parametrize("legacy", [False, True], ids=["stix", "legacy"])
async def test_a_property_extension_is_accepted_and_kept_as_uploaded(
    session: aiohttp.ClientSession, sentinel: SentinelSimulator, legacy: bool
) -> None:
    obj = indicator(extensions={EXTENSION: OURS})
    status, _, body = await upload(session, sentinel, [obj], legacy=legacy)
    assert status == 200
    assert not body
    assert sentinel.store[obj["id"]]["extensions"] == {EXTENSION: OURS}
    [row] = sentinel.rows
    assert row["Data"]["extensions"] == {EXTENSION: OURS}


@pytest.mark.parametrize("legacy", [False, True], ids=["stix", "legacy"])
async def test_top_level_custom_properties_fail_their_record(
    session: aiohttp.ClientSession, sentinel: SentinelSimulator, legacy: bool
) -> None:
    """Product data belongs in an extension: an ``x_`` property at the top level (how the
    product wrote it before) fails its record, each such property with its own message."""
    batch = [
        indicator(extensions={EXTENSION: OURS}),
        indicator(x_mati_id="ipv4--1", x_mati_threat_score=88),
        indicator(extensions={EXTENSION: OURS}, x_mati2sentinel_fingerprint="0" * 32),
        indicator(extensions=[OURS]),
    ]
    status, _, body = await upload(session, sentinel, batch, legacy=legacy)
    assert status == 200
    errors = {e["recordIndex"]: e["errorMessages"] for e in body["errors"]}
    assert errors == {
        1: [
            "Error for Property=x_mati_id: Custom properties are not supported at the top "
            "level. Actual value: ipv4--1.",
            "Error for Property=x_mati_threat_score: Custom properties are not supported at "
            "the top level. Actual value: 88.",
        ],
        2: [
            "Error for Property=x_mati2sentinel_fingerprint: Custom properties are not "
            f"supported at the top level. Actual value: {'0' * 32}."
        ],
        3: [
            "Error for Property=extensions: The value must map extension ids to non-empty "
            f"extension objects. Actual value: {orjson.dumps([OURS]).decode()}."
        ],
    }
    assert set(sentinel.store) == {batch[0]["id"]}


@PROPERTY
@given(st.one_of(observables(), text_observables()), stix_policies, utc_datetimes)
def test_every_object_the_product_maps_is_accepted(
    obs: Observable, policy: StixPolicy, now: datetime
) -> None:
    """The product's mapping against the simulator's checks: a regression (a top-level
    ``x_`` property again, say) fails here, not first in a workspace."""
    obj = indicator_object(obs, policy, now)
    for legacy in (False, True):
        assert validate_object(obj, legacy=legacy) == []
        assert sentinel_validation._problems(obj, legacy=legacy) == []


@pytest.mark.parametrize("legacy", [False, True], ids=["stix", "legacy"])
async def test_a_batch_where_every_record_fails_is_a_400(
    session: aiohttp.ClientSession, sentinel: SentinelSimulator, legacy: bool
) -> None:
    status, _, body = await upload(session, sentinel, [indicator(id=None)], legacy=legacy)
    assert status == 400
    assert body["errors"] == [{"recordIndex": 0, "errorMessages": [MISSING_ID]}]
    assert sentinel.store == {}


@pytest.mark.parametrize("legacy", [False, True], ids=["stix", "legacy"])
async def test_more_than_100_objects_is_a_400_and_nothing_is_stored(
    session: aiohttp.ClientSession, sentinel: SentinelSimulator, legacy: bool
) -> None:
    status, _, body = await upload(
        session, sentinel, [indicator() for _ in range(101)], legacy=legacy
    )
    assert status == 400
    message = body["message"] if legacy else body["error"]["message"]
    assert "maximum is 100" in message
    assert sentinel.store == {}


@pytest.mark.parametrize(
    "source", [None, "", "Microsoft Sentinel", "microsoft sentinel", "x" * 257]
)
async def test_sourcesystem_rules(
    session: aiohttp.ClientSession, sentinel: SentinelSimulator, source: str | None
) -> None:
    body: dict[str, Any] = {"stixobjects": [indicator()]}
    if source is not None:
        body["sourcesystem"] = source
    status, headers, reply = await upload(session, sentinel, body=body)
    assert status == 400
    assert reply["error"]["code"] == headers["x-ms-error-code"] == "InvalidSourceSystem"
    ok = {"sourcesystem": "x" * 256, "stixobjects": [indicator()]}
    assert (await upload(session, sentinel, body=ok))[0] == 200


@pytest.mark.parametrize("legacy", [False, True], ids=["stix", "legacy"])
@pytest.mark.parametrize("api_version", [None, "2023-01-01", "2024-02-01"])
async def test_api_version_is_required_and_exact(
    session: aiohttp.ClientSession,
    sentinel: SentinelSimulator,
    legacy: bool,
    api_version: str | None,
) -> None:
    status, _, _ = await upload(session, sentinel, legacy=legacy, api_version=api_version)
    assert status == 400
    assert sentinel.store == {}


async def test_unknown_workspace_and_unknown_path_are_404(
    session: aiohttp.ClientSession, sentinel: SentinelSimulator
) -> None:
    other = str(uuid.uuid4())
    status, headers, body = await upload(session, sentinel, workspace=other)
    assert (status, body["error"]["code"], headers["x-ms-error-code"]) == (
        404,
        "WorkspaceNotFound",
        "WorkspaceNotFound",
    )
    status, _, body = await upload(session, sentinel, workspace=other, legacy=True)
    assert (status, body["statusCode"]) == (404, 404)
    # The older swagger's unhyphenated spelling is not a route.
    url = f"{sentinel.url}/workspaces/{DEFAULT_WORKSPACE_ID}/threatintelligencestixobjects:upload"
    async with session.post(url, params={"api-version": "2024-02-01-preview"}) as resp:
        assert resp.status == 404
