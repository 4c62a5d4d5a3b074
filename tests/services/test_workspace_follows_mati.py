"""Issue 14's acceptance property: for any sequence of MATI versions and settings, the
workspace's live set equals the set the filters accept now.

Hypothesis draws a few indicators (IPv4, domain, URL, md5 with up to two more hashes), what
MATI first says of each, the first settings, and then two to five steps, each either

- MATI revising some records (scores, OSINT-only, categories, warning-list flags) and an
  incremental sync reporting exactly those, ``last_updated`` moved forward; or
- an operator changing the settings (minimums, OSINT, types, ``HASH_TYPE``, warning lists,
  the action label), the filter and uploader redeployed on them, and ``sync --once --full``
  reporting every record.

Every sync runs through the real ``FilterWorker`` and ``Uploader`` on the real Redis Streams
bus into the real Sentinel simulator over TLS (``workspace_rig``). After each, per lineage
(MATI id and hash type) the newest object in the workspace must be live (not revoked, not
expired) exactly when ``shared.core.filters.evaluate`` accepts the current record under the
current settings, and carry the content the current record and settings map to; no id ever
goes from revoked back to live, and nothing is refused or set aside on the way.

Why these draws: scores sit on both sides of every minimum Hypothesis can pick, so each
filter flips both ways; an md5 carries one to three hashes, so ``HASH_TYPE`` changes revoke
and re-publish single hashes of one record; steps are few, so a failure shrinks to a story
a reader can follow.

Outside the property, by design (README): records carry warning-list flags exactly when
``EXCLUDE_WARNINGLISTS`` is set, as the fetcher asks for them then (a record fetched without
them under an exclusion is dropped but revokes nothing: it says nothing about the lists);
``ENABLE_DEDUPLICATION`` stays on (without the seen cache nothing is known to be held, so
nothing is revoked); an md5 keeps its set of hashes from version to version: a hash MATI
stops listing is not revoked (revoking it needs its value for the pattern, which only the
record had; README "what revocation cannot reach yet").
"""

from __future__ import annotations

import copy
import hashlib
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from harness.pipeline import mati_properties
from shared.core.stix import stix_id
from tests.services.filter_rig import of_type
from tests.services.uploader_rig import World
from tests.services.workspace_rig import Lineage, Workspace, accepted

#: Scores on both sides of every minimum drawn below; ``None`` leaves the score out (MATI
#: rates not every indicator). First the one that passes the defaults, so failures shrink to
#: records that pass unless the example says otherwise.
SCORES = [95, 80, 79, 45, 0, None]
MINIMUMS = ["80", "0", "50", "90"]
CATEGORY_SETS: list[tuple[str, ...]] = [("malware",), (), ("phishing", "control-server")]
#: MISP warning lists a record may be flagged on, and what ``EXCLUDE_WARNINGLISTS`` may name.
LISTS = ("rfc1918", "public-dns-v4", "tranco10k")
EXCLUDED_LISTS = ["rfc1918", "public-dns-v4,tranco10k", "all"]
#: The extra hashes an md5 record may carry besides its md5.
EXTRA_HASHES: list[tuple[str, ...]] = [("sha1", "sha256"), (), ("sha1",), ("sha256",)]
BOOLEAN = st.sampled_from(["true", "false"])


@dataclass(frozen=True)
class Version:
    """What MATI says of one indicator at one time: the fields the filters look at."""

    mscore: int | None
    threat_score: int | None
    osint_only: bool
    categories: tuple[str, ...]
    #: The MISP warning lists MATI finds the value on.
    warning_lists: frozenset[str]
    #: An md5's other hashes in this version; ``None``: its ``Spec``'s (never drawn, see
    #: the module docstring).
    hashes: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Spec:
    """One indicator of the universe: its type and, for an md5, its other hashes."""

    kind: str
    hashes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Revised:
    """MATI revises these records (by index); an incremental sync reports exactly them."""

    versions: dict[int, Version]


@dataclass(frozen=True)
class Resettled:
    """The operator deploys these settings; ``sync --once --full`` follows."""

    env: dict[str, str]


@dataclass(frozen=True)
class Scenario:
    universe: list[Spec]
    first: list[Version]
    env: dict[str, str]
    steps: list[Revised | Resettled]


#: Half of the scores drawn pass every minimum, and most records are not OSINT-only or on a
#: list: a record that passes is what can be revoked, and passing again is what takes it to
#: its next generation; uniform draws left most workspaces empty.
scores = st.one_of(st.just(SCORES[0]), st.sampled_from(SCORES))
versions = st.builds(
    Version,
    mscore=scores,
    threat_score=scores,
    osint_only=st.sampled_from([False, False, True]),
    categories=st.sampled_from(CATEGORY_SETS),
    warning_lists=st.one_of(
        st.just(frozenset()), st.frozensets(st.sampled_from(LISTS), max_size=2)
    ),
)
specs = st.one_of(
    st.sampled_from([Spec("ipv4"), Spec("fqdn"), Spec("url")]),
    st.builds(Spec, st.just("md5"), st.sampled_from(EXTRA_HASHES)),
)
#: Settings as an operator writes them: only what differs from the defaults.
envs = st.fixed_dictionaries(
    {},
    optional={
        "MINIMUM_CONFIDENCE": st.sampled_from(MINIMUMS),
        "MINIMUM_THREAT_SCORE": st.sampled_from(MINIMUMS),
        "EXCLUDE_OSINT": BOOLEAN,
        "INCLUDE_UNCATEGORIZED": BOOLEAN,
        "INCLUDE_IPV4": BOOLEAN,
        "INCLUDE_FQDN": BOOLEAN,
        "INCLUDE_URL": BOOLEAN,
        "INCLUDE_HASH": BOOLEAN,
        "HASH_TYPE": st.sampled_from(["md5", "sha1", "sha256", "all"]),
        "EXCLUDE_WARNINGLISTS": st.sampled_from(EXCLUDED_LISTS),
        "DEFAULT_ACTION": st.sampled_from(["alert", "block"]),
    },
)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    universe = draw(st.lists(specs, min_size=3, max_size=8))
    size = len(universe)
    first = draw(st.lists(versions, min_size=size, max_size=size))
    revised = st.builds(Revised, st.dictionaries(st.integers(0, size - 1), versions, min_size=1))
    steps = draw(st.lists(st.one_of(revised, st.builds(Resettled, envs)), min_size=2, max_size=5))
    return Scenario(universe, first, draw(envs), steps)


# --- MATI's records -------------------------------------------------------------------------


def templates(universe: list[Spec]) -> list[dict[str, Any]]:
    """One distinct simulated feed record per spec, of its type: the realistic rest of a
    record (value, dates, associations, reports) that ``render`` does not set."""
    nth: Counter[str] = Counter()
    found = []
    for spec in universe:
        found.append(of_type(spec.kind, nth[spec.kind]))
        nth[spec.kind] += 1
    return found


def render(
    template: dict[str, Any], spec: Spec, version: Version, updated: datetime, *, flags: bool
) -> dict[str, Any]:
    """The record MATI serves for ``version``, last updated at ``updated``; with its warning
    list ``flags`` when the fetcher asks for them, which it does when ``EXCLUDE_WARNINGLISTS``
    is set (a deployment that sets it the same for every service, as the README asks)."""
    record = copy.deepcopy(template)
    record["last_updated"] = updated.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    if version.mscore is None:
        record.pop("mscore", None)
    else:
        record["mscore"] = version.mscore
    if version.threat_score is None:
        record.pop("threat_rating", None)
    else:
        rating = record.get("threat_rating") or {}
        record["threat_rating"] = {**rating, "threat_score": version.threat_score}
    for n, source in enumerate(record["sources"]):
        source["osint"] = version.osint_only or (n > 0 and source["osint"])
        source["category"] = list(version.categories) if n == 0 else []
    record["category"] = sorted(version.categories)
    if flags:
        unflagged = dict.fromkeys(record.get("misp") or (), False)
        record["misp"] = {**unflagged, **{name: name in version.warning_lists for name in LISTS}}
    else:
        record.pop("misp", None)
    if spec.kind == "md5":
        md5 = record["value"]
        record["associated_hashes"] = [
            {"id": record["id"], "type": "md5", "value": md5},
            *(_hash_entry(kind, md5) for kind in _or(version.hashes, spec.hashes)),
        ]
    return record


def _or(hashes: tuple[str, ...] | None, default: tuple[str, ...]) -> tuple[str, ...]:
    return default if hashes is None else hashes


def _hash_entry(kind: str, md5: str) -> dict[str, str]:
    value = hashlib.new(kind, md5.encode()).hexdigest()
    return {"id": f"{kind}--{uuid.uuid5(uuid.NAMESPACE_OID, value)}", "type": kind, "value": value}


# --- the property ---------------------------------------------------------------------------


class Story:
    """One example played out: MATI's current records, the workspace, and what must hold."""

    def __init__(self, workspace: Workspace, scenario: Scenario) -> None:
        self.workspace = workspace
        self.scenario = scenario
        self.templates = templates(scenario.universe)
        # Reported a little in the past and later on each revision, never so long ago that
        # a full sync would call a record stale (that is test_filter_full_sync's case).
        clock = datetime.now(UTC) - timedelta(hours=1)
        #: MATI's current version of each record, and when it was last updated.
        self.versions = list(scenario.first)
        self.updated = [clock] * len(self.versions)
        self.ever_revoked: set[str] = set()

    def records(self, indexes: Iterable[int] | None = None) -> list[dict[str, Any]]:
        """The current records (of ``indexes``, default all) as a fetch now serves them."""
        flags = bool(self.workspace.settings.exclude_warninglists)
        return [
            render(
                self.templates[i],
                self.scenario.universe[i],
                self.versions[i],
                self.updated[i],
                flags=flags,
            )
            for i in (range(len(self.versions)) if indexes is None else indexes)
        ]

    async def play(self) -> None:
        workspace = self.workspace
        await workspace.restart(self.scenario.env)
        await self.sync(self.records(), full=False, step="first sync")
        for n, step in enumerate(self.scenario.steps, start=1):
            if isinstance(step, Revised):
                later = max(self.updated) + timedelta(minutes=1)
                for index, version in step.versions.items():
                    self.versions[index], self.updated[index] = version, later
                reported = self.records(sorted(step.versions))
                await self.sync(reported, full=False, step=f"step {n}, MATI revised")
            else:
                await workspace.restart(step.env)
                await self.sync(self.records(), full=True, step=f"step {n}, settings changed")
        # What the example reached, for ``--hypothesis-show-statistics``: the draws must keep
        # revoking and re-publishing, or the property holds for want of trying.
        event("revoked something", str(bool(self.ever_revoked)))
        generations = [held.generation for held in workspace.newest().values()]
        event("highest generation", max(generations, default=-1))
        counters = await workspace.state.counters()
        for name in sorted(n for n in counters if n.startswith("revoked_")):
            event(name)

    async def sync(self, records: list[dict[str, Any]], *, full: bool, step: str) -> None:
        await self.workspace.sync(records, full=full)
        await self.workspace.drain()
        await self.check(step)

    async def check(self, step: str) -> None:
        workspace = self.workspace
        assert await workspace.refusals() == [], step
        want = accepted(self.records(), workspace.settings)
        live = workspace.live(datetime.now(UTC))
        assert set(live) == set(want), (
            f"{step}: live but not accepted {_names(set(live) - set(want))}, "
            f"accepted but not live {_names(set(want) - set(live))}"
        )
        for lineage, held in live.items():
            draft = want[lineage]
            if held.generation:
                draft = draft.reissued(stix_id(*lineage, held.generation))
            carried = mati_properties(held.obj).get("fingerprint")
            assert carried == draft.fingerprint, f"{step}: {lineage} holds outdated content"
        store = workspace.w.sentinel.store
        revoked = {key for key in store if store[key].get("revoked") is True}
        assert self.ever_revoked <= revoked, f"{step}: un-revoked {self.ever_revoked - revoked}"
        self.ever_revoked |= revoked


def _names(lineages: set[Lineage]) -> list[str]:
    return sorted(
        f"{mati_id}:{hash_type}" if hash_type else mati_id for mati_id, hash_type in lineages
    )


@pytest.fixture
def workspace(w: World) -> Workspace:
    """One rig for all examples of the test; each example opens it afresh (``async with``)."""
    return Workspace(w)


@pytest.mark.timeout(420)
@settings(
    max_examples=40,
    deadline=None,
    # The simulators, TLS session and Redis behind ``workspace`` serve every example on
    # purpose (starting them per example would cost more than the example); each example
    # starts from an empty Redis and workspace (``Workspace.__aenter__``).
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(scenario=scenarios())
async def test_the_workspace_holds_live_exactly_what_the_filters_accept_now(
    workspace: Workspace, scenario: Scenario
) -> None:
    async with workspace:
        await Story(workspace, scenario).play()
