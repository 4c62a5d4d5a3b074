"""The filter's shortcut (``shared.core.source_tag``) against real parts: a record already uploaded
from the very same bytes is dropped unchanged without being parsed, and anything else (other
bytes, other settings, a refresh due, properties that lie) still takes the full path.

Whether a record was parsed is seen through a spy on ``parse_indicator`` in the judging
module: a pure function, not a peer, and the only witness of the work the shortcut saves.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pytest

from services.filter import judging
from services.filter.worker import BatchOutcome, FilterWorker
from shared.contract.bus import Message
from shared.contract.messages import UploadRequest, raw_message
from shared.core.filters import FilterPolicy, HashSelection
from shared.core.fingerprint import SeenEntry
from shared.core.parsing import parse_indicator
from shared.core.stix import stix_id
from tests.services.filter_rig import SOURCE, Rig, again, of_type, passing, publish, take, uploads

KINDS = ("ipv4", "fqdn", "url", "md5")


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Ids of the records the filter parsed from now on."""
    seen: list[str] = []

    def spy(raw: Any) -> Any:
        seen.append(str(raw.get("id")) if isinstance(raw, dict) else "?")
        return parse_indicator(raw)

    monkeypatch.setattr(judging, "parse_indicator", spy)
    return seen


async def sync(rig: Rig, worker: FilterWorker, *records: object) -> BatchOutcome:
    """Publish without the bus's duplicate detection (the same bytes again is the point),
    then let ``worker`` handle them."""
    await publish(rig.undeduplicated_bus(), *records)
    return await worker.handle(await take(rig.bus, SOURCE, len(records)))


async def commit_fresh(rig: Rig, requests: Sequence[UploadRequest], age: timedelta) -> None:
    """The uploader's commit for uploads made ``age`` ago, each with its type's validity."""
    entries = []
    for r in requests:
        valid_until = rig.clock.now - age + r.draft.expiration
        entries.append((r.stix_id, SeenEntry(r.fingerprint, valid_until, r.source_tag)))
    await rig.state.commit(entries, now=rig.clock.now)


async def uploaded(
    rig: Rig, policy: FilterPolicy | None = None
) -> tuple[list[dict[str, Any]], list[UploadRequest]]:
    """One passing record of each type, synced and committed an hour ago."""
    records = [passing(of_type(kind)) for kind in KINDS]
    await sync(rig, rig.worker(filter_policy=policy or FilterPolicy()), *records)
    requests = await uploads(rig.bus)
    await commit_fresh(rig, requests, timedelta(hours=1))
    return records, requests


@pytest.mark.parametrize("selection", [HashSelection.MD5, HashSelection.ALL])
async def test_the_same_bytes_again_are_dropped_unchanged_without_parsing(
    rig: Rig, parsed: list[str], selection: HashSelection
) -> None:
    policy = FilterPolicy(hash_selection=selection)
    records, _ = await uploaded(rig, policy)
    parsed.clear()
    outcome = await sync(rig, rig.worker(filter_policy=policy), *records)
    hashes = 3 if selection is HashSelection.ALL else 1
    assert outcome["dropped_unchanged"] == len(KINDS) - 1 + hashes
    assert outcome["forwarded"] == 0
    assert parsed == []
    assert await uploads(rig.bus) == []


async def test_other_bytes_of_an_unchanged_record_are_judged_and_dropped(
    rig: Rig, parsed: list[str]
) -> None:
    records, _ = await uploaded(rig)
    parsed.clear()
    outcome = await sync(rig, rig.worker(), *(again(r) for r in records))
    assert outcome["dropped_unchanged"] == len(KINDS)
    assert sorted(parsed) == sorted(r["id"] for r in records)


async def test_changed_settings_judge_every_record_again(rig: Rig, parsed: list[str]) -> None:
    records, _ = await uploaded(rig)
    parsed.clear()
    stricter = FilterPolicy(minimum_confidence=90)
    worker = rig.worker(filter_policy=stricter)
    outcome = await sync(rig, worker, *records)
    assert outcome["dropped_unchanged"] == len(KINDS)
    assert sorted(parsed) == sorted(r["id"] for r in records)


async def test_a_refresh_due_is_not_skipped(rig: Rig, parsed: list[str]) -> None:
    records, requests = await uploaded(rig)
    ipv4 = records[0]
    (request,) = [r for r in requests if r.stix_id == stix_id(ipv4["id"], None)]
    await commit_fresh(rig, [request], timedelta(days=4))
    parsed.clear()
    # The refresh's upload message is the first upload's again (same raw message): only a
    # bus without duplicate detection lets it through within the test's minute.
    outcome = await sync(rig, rig.worker(rig.undeduplicated_bus()), ipv4)
    assert outcome["forwarded_refresh"] == 1
    assert parsed == [ipv4["id"]]


async def test_hash_type_all_without_every_hash_is_judged_each_time(
    rig: Rig, parsed: list[str]
) -> None:
    policy = FilterPolicy(hash_selection=HashSelection.ALL)
    record = passing(of_type("md5"))
    record["associated_hashes"] = [h for h in record["associated_hashes"] if h["type"] != "sha256"]
    worker = rig.worker(filter_policy=policy)
    await sync(rig, worker, record)
    await commit_fresh(rig, await uploads(rig.bus), timedelta(hours=1))
    parsed.clear()
    outcome = await sync(rig, worker, record)
    assert outcome["dropped_unchanged"] == 2
    assert parsed == [record["id"]]


async def test_properties_that_lie_never_skip_a_record(rig: Rig, parsed: list[str]) -> None:
    """The properties only say where to look: a new record under an uploaded record's
    properties is still forwarded as new, an uploaded one under another's still dropped."""
    (ipv4, fqdn, *_), _ = await uploaded(rig)
    fresh = passing(of_type("ipv4", 1))
    disguised = [
        Message(
            body=raw_message(body, run_id="r2").body,
            message_id=f"disguised-{n}",
            properties=raw_message(claimed, run_id="r2").properties,
        )
        for n, (body, claimed) in enumerate([(fresh, ipv4), (fqdn, ipv4)])
    ]
    parsed.clear()
    outcome = await sync(rig, rig.worker(), *disguised)
    assert (outcome["forwarded_new"], outcome["dropped_unchanged"]) == (1, 1)
    (request,) = await uploads(rig.bus)
    assert request.stix_id == stix_id(fresh["id"], None)
    assert sorted(parsed) == sorted([fresh["id"], fqdn["id"]])
