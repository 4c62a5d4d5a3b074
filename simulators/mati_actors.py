"""MATI's actor endpoint (``GET /v4/actor/{id}``) for the simulated feed: one profile per threat
actor the feed attributes indicators to, under the id its records carry.

The shape follows what MATI's clients read from it (name, description, ``aliases`` of
``{name, attribution_scope}``, ``last_updated``, ``intel_free``); the text is made up and
deterministic, so a test can predict every object built from it.
"""

from __future__ import annotations

from typing import Any, Final

from simulators.feed_attributes import uuid5
from simulators.feed_vocabulary import THREAT_ACTORS

#: Every few actors has no alias, and one has no description: profiles MATI leaves thin.
_SCOPES: Final = ("confirmed", "possible", "suspected")


def _profile(position: int, name: str) -> dict[str, Any]:
    aliases = [
        {"name": f"{name} alias {n}", "attribution_scope": _SCOPES[n % len(_SCOPES)]}
        for n in range(position % 3)
    ]
    profile: dict[str, Any] = {
        "id": f"threat-actor--{uuid5(name)}",
        "name": name,
        "type": "threat-actor",
        # MATI lists the actor's own name among its aliases too.
        "aliases": [{"name": name, "attribution_scope": "confirmed"}, *aliases],
        "last_updated": "2026-11-30T10:00:00.000Z",
        "intel_free": position % 2 == 0,
    }
    if position != len(THREAT_ACTORS) - 1:
        profile["description"] = f"{name} is a simulated threat actor (profile {position})."
    return profile


#: The profiles by MATI id.
PROFILES: Final = {
    profile["id"]: profile
    for profile in (_profile(i, name) for i, name in enumerate(THREAT_ACTORS))
}
