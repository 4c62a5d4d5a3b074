"""Context beside the indicators (DESIGN §7): Mandiant as an ``identity``, the threat actors
MATI attributes indicators to as ``threat-actor`` objects, and ``indicates`` relationships
from each attributed indicator to its actors.

Like the indicators, every object here is deterministic: its id is derived (uuid5 in our
namespace) from what it stands for, never random, so a repeated upload updates the object and
every workspace names one actor alike; its content without timestamps is what the
fingerprint covers, so an actor is uploaded again only when MATI changed what Sentinel shows.

An actor's profile comes from MATI's actor endpoint (``GET /v4/actor/{id}``: ``name``,
``description``, ``aliases[{name, attribution_scope}]``, ``last_updated``); an indicator's
record carries only the actor's id and name, enough for an object when the profile is not
to be had.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

from shared.core.fingerprint import EXTENSION_ID
from shared.core.indicator import THREAT_ACTOR, Indicator
from shared.core.stix import MATI_ID_PROPERTY, NAMESPACE

#: Mandiant, the author of everything uploaded with actors on (every object's
#: ``created_by_ref``). Its id is derived like every other, from a name that never changes.
MANDIANT_IDENTITY_ID: Final = f"identity--{uuid.uuid5(NAMESPACE, 'identity:mandiant')}"
#: The identity and the actors have no creation date of their own in MATI: a fixed instant,
#: before any object that refers to them, so ``created`` stays put across every upload.
CONTEXT_CREATED: Final = "2013-01-01T00:00:00.000Z"
ACTOR_URL: Final = "https://advantage.mandiant.com/actors/"
#: Bounds on what a profile brings into an object: a description is a paragraph or a few, and
#: an actor has tens of aliases at most; anything past these is MATI's data gone wrong.
MAX_DESCRIPTION_CHARS: Final = 8_192
MAX_ALIASES: Final = 64
MAX_NAME_CHARS: Final = 256


@dataclass(frozen=True, slots=True)
class Actor:
    """A threat actor as an object needs it: MATI's id and name, and from its profile (when
    fetched) aliases and a description."""

    mati_id: str
    name: str
    aliases: tuple[str, ...] = ()
    description: str | None = None


def actors_of(indicator: Indicator) -> tuple[Actor, ...]:
    """The threat actors MATI attributes ``indicator`` to, once each, in MATI's order; from
    the record alone (name, no profile)."""
    seen: dict[str, Actor] = {}
    for association in indicator.associations:
        if association.kind == THREAT_ACTOR and association.id not in seen:
            seen[association.id] = Actor(association.id, association.name)
    return tuple(seen.values())


def parse_actor(record: object) -> Actor | None:
    """An actor from MATI's actor endpoint, or ``None`` when the answer is not one: the
    caller keeps the record's name instead, never failing an upload on a profile."""
    if not isinstance(record, Mapping):
        return None
    mati_id, name = record.get("id"), record.get("name")
    if not (isinstance(mati_id, str) and mati_id.startswith(f"{THREAT_ACTOR}--")):
        return None
    if not isinstance(name, str) or not name.strip():
        return None
    aliases: dict[str, None] = {}
    raw_aliases = record.get("aliases")
    for alias in raw_aliases if isinstance(raw_aliases, list) else ():
        text = alias.get("name") if isinstance(alias, Mapping) else alias
        if isinstance(text, str) and text.strip() and text.strip() != name.strip():
            aliases[text.strip()[:MAX_NAME_CHARS]] = None
    description = record.get("description")
    text = description.strip()[:MAX_DESCRIPTION_CHARS] if isinstance(description, str) else ""
    return Actor(
        mati_id,
        name.strip()[:MAX_NAME_CHARS],
        tuple(sorted(aliases))[:MAX_ALIASES],
        text or None,
    )


def actor_id(mati_id: str) -> str:
    """``threat-actor--uuid5(NAMESPACE, mati_id)``: MATI's own id is STIX-shaped, but the
    object is ours (our content, our fingerprint), so its id is derived like our others."""
    return f"threat-actor--{uuid.uuid5(NAMESPACE, mati_id)}"


def relationship_id(source_ref: str, target_ref: str) -> str:
    """``relationship--uuid5(NAMESPACE, "indicates:<source>:<target>")``: one relationship
    per pair, whichever process or workspace derives it."""
    return f"relationship--{uuid.uuid5(NAMESPACE, f'indicates:{source_ref}:{target_ref}')}"


def identity_object() -> dict[str, Any]:
    """Mandiant's ``identity``: the same object, byte for byte, every time."""
    return {
        "type": "identity",
        "spec_version": "2.1",
        "id": MANDIANT_IDENTITY_ID,
        "created": CONTEXT_CREATED,
        "modified": CONTEXT_CREATED,
        "name": "Mandiant",
        "identity_class": "organization",
        "external_references": [
            {"source_name": "Mandiant", "url": "https://www.mandiant.com/advantage"}
        ],
    }


def actor_content(actor: Actor) -> dict[str, Any]:
    """The ``threat-actor`` without the timestamps an upload moves: what its fingerprint
    covers."""
    body: dict[str, Any] = {
        "type": "threat-actor",
        "spec_version": "2.1",
        "id": actor_id(actor.mati_id),
        "created_by_ref": MANDIANT_IDENTITY_ID,
        "name": actor.name,
        "external_references": [
            {
                "source_name": "Mandiant",
                "external_id": actor.mati_id,
                "url": ACTOR_URL + quote(actor.mati_id, safe=""),
            }
        ],
        "extensions": {
            EXTENSION_ID: {"extension_type": "property-extension", MATI_ID_PROPERTY: actor.mati_id}
        },
    }
    if actor.aliases:
        body["aliases"] = list(actor.aliases)
    if actor.description:
        body["description"] = actor.description
    return body


def relationship_content(indicator_ref: str, actor: Actor) -> dict[str, Any]:
    """The ``indicates`` relationship from an uploaded indicator to one of its actors,
    without timestamps."""
    target = actor_id(actor.mati_id)
    return {
        "type": "relationship",
        "spec_version": "2.1",
        "id": relationship_id(indicator_ref, target),
        "created_by_ref": MANDIANT_IDENTITY_ID,
        "relationship_type": "indicates",
        "source_ref": indicator_ref,
        "target_ref": target,
    }


def stamped(content: Mapping[str, Any], created: str, modified: str) -> dict[str, Any]:
    """``content`` as uploaded: ``created`` stays put across versions of one id (STIX), and
    ``modified`` is the upload instant, never before ``created``."""
    return {**content, "created": created, "modified": max(created, modified)}
