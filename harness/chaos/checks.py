"""What must hold at the end of a chaos run, after the quiet period.

- **The workspace** holds live exactly what the filters accept under the final settings
  (``Pipeline.expected`` of what MATI served, planted bad records included), each with the
  fingerprint the product computes for it; an indicator still suppressed is live under no
  id; one suppressed and then released is live under its next generation's id (its first id
  stays revoked). Everything else the workspace holds is revoked.
- **The dead-letter queues** hold the planted bad records and nothing else: every planted
  record is in the subscription's queue (by MATI id and reason; a record without an id is
  known by its reason alone), and the upload queue and the priority lane have none.
- **No process needed a hand**: none exited on its own, and each replica runs and answers
  ``/readyz`` with 200.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp

from harness.chaos.fleet import Fleet
from harness.pipeline import DESTINATION, Pipeline, mati_properties
from shared.contract.messages import revocation_queue, subscription, upload_queue
from shared.core.filters import evaluate
from shared.core.indicator import HashType, Indicator
from shared.core.parsing import parse_indicator, parse_json
from shared.core.stix import Draft, stix_id
from simulators.feed import Feed
from simulators.mati_bad_records import corrupt

#: The reason the filter dead-letters a record it cannot parse.
INVALID_RECORD: Final = "invalid_record"
#: Kinds of planted records: each breaks a required field, so the record is dead-lettered
#: (the other kinds break optional fields, which the parser reads leniently).
PLANTED_KINDS: Final = ("missing_value", "value_not_string", "duplicate_key", "missing_id")


def served(feed: Feed, planted: Mapping[int, str]) -> list[dict[str, Any]]:
    """What MATI serves: the feed, the planted records broken as the simulator breaks them."""
    records = list(feed.records(range(len(feed))))
    for index, kind in planted.items():
        broken = parse_json(corrupt(feed.record(index), kind))
        if isinstance(broken, dict):
            records[index] = broken
    return records


def expected_live(
    pipeline: Pipeline,
    records: list[dict[str, Any]],
    suppressed: Iterable[str],
    released: Iterable[str],
) -> dict[str, str]:
    """STIX id -> fingerprint of every object the workspace must hold live now.

    A released indicator is live under its next generation's id when its suppression's
    revocation reached Sentinel first and MATI reported it within its expiration (else it
    comes back when MATI reports it again); when ``suppress remove`` called the revocation
    off before it went out, it stays live under its first id. The README says so; which one
    happened is read from the workspace, and the other must not be live."""
    now = datetime.now(UTC)
    live = dict(pipeline.expected(records).objects)
    settings = pipeline.settings
    policy, stix_policy = settings.filter_policy(), settings.stix_policy()
    store = pipeline.sims.sentinel.store
    released = set(released)
    touched = set(suppressed) | released
    for record in records:
        mati_id = record.get("id")
        if mati_id not in touched:
            continue
        indicator = parse_indicator(record)
        if not isinstance(indicator, Indicator):
            continue
        verdict = evaluate(indicator, policy)
        if not isinstance(verdict, tuple):
            continue
        for observable in verdict:
            first = stix_id(str(mati_id), observable.hash_type)
            revoked = first in store and store[first].get("revoked") is True
            if mati_id in released and not revoked:
                continue  # called off in time: live under its first id, as expected already
            fingerprint = live.pop(first, None)
            draft = Draft.of(observable, stix_policy)
            reported = indicator.last_updated
            current = reported is not None and reported + draft.expiration > now
            if mati_id in released and fingerprint is not None and current:
                again = stix_id(str(mati_id), observable.hash_type, 1)
                live[again] = draft.reissued(again).fingerprint
    return live


def workspace_problems(
    pipeline: Pipeline, live: Mapping[str, str], suppressed: Iterable[str] = ()
) -> tuple[list[str], int]:
    """What is wrong with the simulated workspace against ``live``, and how many objects it
    holds revoked. A live object that should not be is named with its MATI id, confidence and
    whether it is suppressed: what tells a filter race from a suppression's."""
    store = pipeline.sims.sentinel.store
    stale: list[str] = []
    dead: list[str] = []
    stray: list[str] = []
    revoked = 0
    for key in list(store.keys()):
        obj = store[key]
        is_revoked = obj.get("revoked") is True
        revoked += is_revoked
        if key not in live:
            if not is_revoked:
                stray.append(key)
        elif is_revoked:
            dead.append(key)
        elif mati_properties(obj).get("fingerprint") != live[key]:
            stale.append(key)
    missing = sorted(live.keys() - store.keys())
    feed, suppressed = pipeline.feed, set(suppressed)
    mati_of = _mati_ids(feed, missing)

    def why(key: str, mati_id: str | None = None) -> str:
        mati_id = mati_id or str(mati_properties(store[key]).get("mati_id"))
        mscore = feed.mscore(feed.index_of(mati_id))
        marks = ", suppressed" if mati_id in suppressed else ""
        return f"{key} ({mati_id}, mscore {mscore}{marks})"

    stray = [why(key) for key in stray]
    missing = [why(key, mati_of.get(key, "?")) if key in mati_of else key for key in missing]
    problems = [
        f"{len(found)} {what}, e.g. {sorted(found)[:3]}"
        for found, what in (
            (missing, "objects the filters accept are missing"),
            (stale, "objects hold other content than the filters make now"),
            (dead, "objects that should be live are revoked"),
            (stray, "objects are live that the filters refuse or an analyst suppressed"),
        )
        if found
    ]
    return problems, revoked


async def dead_letter_problems(
    pipeline: Pipeline, feed: Feed, planted: Mapping[int, str]
) -> tuple[list[str], dict[str, int]]:
    """What is wrong with the dead-letter queues, and how many letters each holds."""
    bus = pipeline.observer
    letters = {
        "indicators": await bus.dead_letters(subscription(DESTINATION), limit=10_000),
        "upload": await bus.dead_letters(upload_queue(DESTINATION), limit=10_000),
        "revoke": await bus.dead_letters(revocation_queue(DESTINATION), limit=10_000),
    }
    want = {
        ("" if kind == "missing_id" else feed.id(i), INVALID_RECORD) for i, kind in planted.items()
    }
    found = Counter((d.properties.get("indicator_id", ""), d.reason) for d in letters["indicators"])
    problems = []
    if unplanned := sorted(found.keys() - want):
        problems.append(f"{len(unplanned)} dead letters nobody planted, e.g. {unplanned[:3]}")
    if lost := sorted(want - found.keys()):
        problems.append(f"{len(lost)} planted records not dead-lettered, e.g. {lost[:3]}")
    for queue in ("upload", "revoke"):
        if letters[queue]:
            sample = [(d.properties.get("indicator_id"), d.reason, d.description[:80])
                      for d in letters[queue][:3]]  # fmt: skip
            problems.append(f"{len(letters[queue])} dead letters in {queue}, e.g. {sample}")
    return problems, {queue: len(found) for queue, found in letters.items()}


async def health_problems(fleet: Fleet, timeout_s: float = 60.0) -> list[str]:
    """Replicas not running and ready (polled up to ``timeout_s``), and unplanned exits."""
    problems = [
        f"{exit.replica} exited on its own (code {exit.code}): {exit.tail[-3:]}"
        for exit in fleet.unplanned
    ]
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while True:
            unready = [r.name for r in fleet.members if not await fleet.ready(r, session)]
            if not unready or time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
    if unready:
        problems.append(f"not running and ready after the quiet period: {unready}")
    return problems


def _mati_ids(feed: Feed, stix_ids: Iterable[str]) -> dict[str, str]:
    """The MATI id behind each of ``stix_ids`` (first generation, or the second), for
    naming what is missing: found by deriving the ids of the whole feed, so only on failure."""
    wanted = set(stix_ids)
    found: dict[str, str] = {}
    for i in range(len(feed)) if wanted else ():
        mati_id = feed.id(i)
        hash_type = HashType.MD5 if feed.type_of(i) == "md5" else None
        for generation in (0, 1):
            key = stix_id(mati_id, hash_type, generation)
            if key in wanted:
                found[key] = mati_id
    return found
