"""The context objects (``shared.core.context``): Mandiant's identity, threat actors from MATI's
attributions and profiles, and ``indicates`` relationships; deterministic ids, and every object
valid STIX 2.1 for the OASIS library, strictly (our extension registered, nothing else custom)."""

from __future__ import annotations

from typing import Any

import stix2
from hypothesis import given
from hypothesis import strategies as st

from shared.core.context import (
    CONTEXT_CREATED,
    MANDIANT_IDENTITY_ID,
    MAX_ALIASES,
    Actor,
    actor_content,
    actor_id,
    actors_of,
    identity_object,
    parse_actor,
    relationship_content,
    relationship_id,
    stamped,
)
from shared.core.fingerprint import EXTENSION_ID, fingerprint
from shared.core.indicator import MALWARE, THREAT_ACTOR
from shared.core.stix import stamped_extensions, stix_id
from tests.unit.stix_rig import MatiProperties
from tests.unit.strategies import example_indicator

APT = "threat-actor--54c1b50a-b370-5bd6-8ea9-fba459d01a6b"
UNC = "threat-actor--0a0b0c0d-1111-5222-8333-444455556666"
NOW = "2026-12-08T03:30:00.123Z"
PROFILE: dict[str, Any] = {
    "id": APT,
    "name": "APT29",
    "description": "  Espionage group.  ",
    "aliases": [
        {"name": "Cozy Bear", "attribution_scope": "possible"},
        {"name": "APT29", "attribution_scope": "confirmed"},
        {"name": "Cozy Bear", "attribution_scope": "confirmed"},
        {"name": "  "},
        "The Dukes",
    ],
    "last_updated": "2026-11-30T10:00:00.000Z",
    "intel_free": False,
}


def uploaded(content: dict[str, Any]) -> dict[str, Any]:
    """As an uploader sends it: timestamps, and the fingerprint in our extension when it has
    one."""
    body = stamped(content, CONTEXT_CREATED, NOW)
    if EXTENSION_ID in body.get("extensions", {}):
        body["extensions"] = stamped_extensions(body, fingerprint(content))
    return body


def strictly(obj: dict[str, Any]) -> Any:
    parsed = stix2.parse(obj)
    assert parsed.id == obj["id"]
    assert not [key for key in obj if key.startswith("x_")]
    return parsed


def test_an_indicator_names_its_threat_actors_once_and_not_its_malware() -> None:
    indicator = example_indicator(
        "ipv4",
        attributed_associations=[
            {"id": APT, "name": "APT29", "type": THREAT_ACTOR},
            {"id": "malware--1", "name": "BEATDROP", "type": MALWARE},
            {"id": UNC, "name": "UNC9999", "type": THREAT_ACTOR},
            {"id": APT, "name": "APT29", "type": THREAT_ACTOR},
        ],
    )
    assert actors_of(indicator) == (Actor(APT, "APT29"), Actor(UNC, "UNC9999"))


def test_a_profile_brings_sorted_aliases_without_the_name_and_a_trimmed_description() -> None:
    assert parse_actor(PROFILE) == Actor(
        APT, "APT29", ("Cozy Bear", "The Dukes"), "Espionage group."
    )


def test_what_is_not_a_profile_is_none() -> None:
    for record in (
        None,
        [],
        {"id": APT},
        {"id": "malware--1", "name": "X"},
        {**PROFILE, "name": " "},
    ):
        assert parse_actor(record) is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(st.dictionaries(st.sampled_from(["id", "name", "aliases", "description"]), json_values))
def test_any_answer_is_a_profile_or_none_never_an_error(record: dict[str, Any]) -> None:
    actor = parse_actor({**record, "id": APT} if record.get("id") is None else record)
    if actor is not None:
        assert actor.name.strip() == actor.name
        assert len(actor.aliases) <= MAX_ALIASES
        assert actor.name not in actor.aliases


def test_ids_are_derived_from_what_the_object_stands_for() -> None:
    assert actor_id(APT) == actor_id(APT) != actor_id(UNC)
    assert actor_id(APT).startswith("threat-actor--")
    indicator_ref = stix_id("ipv4--1", None)
    assert relationship_id(indicator_ref, actor_id(APT)) != relationship_id(
        indicator_ref, actor_id(UNC)
    )
    assert relationship_id(indicator_ref, actor_id(APT)) != relationship_id(
        stix_id("ipv4--2", None), actor_id(APT)
    )
    assert identity_object() == identity_object()


def test_every_context_object_is_strict_stix() -> None:
    identity = strictly(identity_object())
    assert identity.identity_class == "organization"
    actor = parse_actor(PROFILE)
    assert actor is not None
    threat_actor = strictly(uploaded(actor_content(actor)))
    assert threat_actor.created_by_ref == MANDIANT_IDENTITY_ID
    assert threat_actor.aliases == ["Cozy Bear", "The Dukes"]
    assert isinstance(threat_actor.extensions[EXTENSION_ID], MatiProperties)
    bare = strictly(uploaded(actor_content(Actor(UNC, "UNC9999"))))
    assert "aliases" not in bare
    assert "description" not in bare
    relationship = strictly(uploaded(relationship_content(stix_id("ipv4--1", None), actor)))
    assert relationship.relationship_type == "indicates"
    assert relationship.target_ref == actor_id(APT)


def test_modified_never_precedes_created() -> None:
    early = stamped(identity_object(), CONTEXT_CREATED, "2000-01-01T00:00:00.000Z")
    assert early["modified"] == early["created"] == CONTEXT_CREATED
