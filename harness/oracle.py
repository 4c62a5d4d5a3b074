"""Which indicators the filters must accept, decided without the product's parser or filters.

``Pipeline.expected`` computes what the workspace must hold with the product's own parse,
filter and mapping, which is what the delivery tests need (the ids and fingerprints Sentinel
must end up with). Alone, that oracle agrees with any parser or filter bug. So it is checked
against this one, built from the simulated feed's own truth: the type, confidence, OSINT-only
profile and threat score the generator gave each indicator, and the plain JSON fields a record
carries (``category``, ``associated_hashes``, the ``misp`` flags), under the destination's
filter settings as the README documents them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from shared.core.filters import FilterPolicy
from simulators.feed import Feed

#: (MATI id, hash type for a hash observable, else None): one object the workspace must hold.
Accepted = tuple[str, str | None]

#: Which INCLUDE_* setting admits each indicator type.
_INCLUDED_BY = {
    "ipv4": "include_ipv4",
    "fqdn": "include_fqdn",
    "url": "include_url",
    "md5": "include_hash",
}


def accepted(
    feed: Feed,
    records: Iterable[Mapping[str, Any]],
    policy: FilterPolicy,
    *,
    current: bool = False,
) -> tuple[set[Accepted], set[str]]:
    """What ``records`` must become, and the ids of the records judged.

    The truth is the feed's current version of each indicator, so a record that is not that
    version (broken on purpose by a test, or served from an older generation) is not judged;
    ``current`` says the records are the feed's own of now, and spares the comparison."""
    out: set[Accepted] = set()
    judged: set[str] = set()
    for record in records:
        i = _index(feed, record)
        if i is None or not (current or record == feed.record(i)):
            continue
        judged.add(feed.id(i))
        out.update(_accepted(feed, i, record, policy))
    return out, judged


def _index(feed: Feed, record: Mapping[str, Any]) -> int | None:
    indicator_id = record.get("id")
    if not isinstance(indicator_id, str):
        return None
    try:
        return feed.index_of(indicator_id)
    except KeyError:
        return None


def _accepted(
    feed: Feed, i: int, record: Mapping[str, Any], policy: FilterPolicy
) -> list[Accepted]:
    kind = feed.type_of(i)
    if not getattr(policy, _INCLUDED_BY[kind]):
        return []
    if feed.mscore(i) < policy.minimum_confidence:
        return []
    threat = feed.threat_score(i)
    if threat is None and policy.minimum_threat_score > 0:
        return []  # an unknown score cannot be shown to meet a minimum
    if threat is not None and threat < policy.minimum_threat_score:
        return []
    if policy.exclude_osint and feed.is_osint_only(i):
        return []
    if not policy.include_uncategorized and not record.get("category"):
        return []
    excluded = policy.exclude_warninglists
    misp = record.get("misp")
    if excluded and not isinstance(misp, dict):
        return []  # no flags to tell by: never sent on a guess
    flagged = {name.lower() for name, flag in (misp or {}).items() if flag in (True, "true")}
    if flagged and ("all" in excluded or flagged & excluded):
        return []
    if kind != "md5":
        return [(feed.id(i), None)]
    hashes = {h["type"] for h in record.get("associated_hashes", ()) if isinstance(h, dict)}
    hashes.add("md5")  # the indicator's own value
    wanted = hashes if policy.hash_selection.value == "all" else {policy.hash_selection.value}
    return [(feed.id(i), hash_type) for hash_type in sorted(hashes & wanted)]
