"""MISP warning lists (``EXCLUDE_WARNINGLISTS``): MATI's ``misp`` flags are read as a name ->
bool map whose names grow over time (compared in any case), only an explicit true flags a list,
an excluded list drops an indicator with its own counted reason that ``explain`` spells out,
and a record without flags is not sent on a guess while lists are excluded."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.cli.explain_drops import drop_detail
from services.fetcher.config import FetcherConfig
from shared.core.errors import ConfigError
from shared.core.filters import DropReason, FilterPolicy, evaluate, excluded_lists
from shared.core.parsing import parse_indicator
from shared.core.settings import load_settings
from shared.core.source_tag import policy_key
from shared.core.stix import StixPolicy
from tests.helpers import VALID_ENV
from tests.unit.strategies import example_indicator, example_record, must_parse

#: Passes the default filters (mscore 92, threat score 84, Mandiant's own source).
ACCEPTED = "ipv4"


def flagged(*names: str, **flags: Any) -> dict[str, Any]:
    """A ``misp`` block: ``names`` true, ``flags`` as given, a few known lists false."""
    return {"alexa": False, "tranco": False, **dict.fromkeys(names, True), **flags}


# ---- parsing -------------------------------------------------------------------------------


def test_the_true_flags_are_the_lists_lower_cased_and_sorted() -> None:
    indicator = example_indicator(ACCEPTED, misp=flagged("rfc1918", "public-dns-v4", "Alexa_1M"))
    assert indicator.warning_lists == ("alexa_1m", "public-dns-v4", "rfc1918")


@pytest.mark.parametrize(
    ("flag", "flags_it"),
    [(True, True), ("true", True), (" TRUE ", True), (False, False), ("false", False),
     (1, False), ("yes", False), (None, False), ([True], False)],
)  # fmt: skip
def test_only_an_explicit_true_flags_a_list(flag: object, flags_it: bool) -> None:
    indicator = example_indicator(ACCEPTED, misp={"sinkholes": flag})
    assert indicator.warning_lists == (("sinkholes",) if flags_it else ())


@pytest.mark.parametrize("misp", [None, [], "rfc1918", [{"misp_id": "rfc1918", "detected": True}]])
def test_a_misp_block_of_another_shape_tells_nothing(misp: object) -> None:
    """FortiSOAR documents a list of ``{misp_id, detected}``; real traffic is a map (§5.3)."""
    assert example_indicator(ACCEPTED, misp=misp).warning_lists is None


def test_no_misp_block_is_unknown_and_an_empty_map_is_on_no_list() -> None:
    record = example_record(ACCEPTED)
    record.pop("misp", None)
    assert must_parse(record).warning_lists is None
    assert example_indicator(ACCEPTED, misp={}).warning_lists == ()


@given(st.dictionaries(st.text(max_size=12), st.one_of(st.booleans(), st.text(max_size=6))))
def test_any_map_parses_to_its_true_names(misp: dict[str, object]) -> None:
    parsed = parse_indicator({**example_record(ACCEPTED), "misp": misp})
    assert not isinstance(parsed, Exception)
    expected = {
        name.strip().lower()
        for name, flag in misp.items()
        if name.strip()
        and (flag is True or (isinstance(flag, str) and flag.strip().lower() == "true"))
    }
    assert getattr(parsed, "warning_lists", None) == tuple(sorted(expected))


# ---- the filter ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("excluded", "lists", "dropped"),
    [
        (frozenset(), ("rfc1918",), False),
        (frozenset({"rfc1918"}), ("rfc1918",), True),
        (frozenset({"rfc1918", "sinkholes"}), ("public-dns-v4", "sinkholes"), True),
        (frozenset({"rfc1918"}), ("public-dns-v4",), False),
        (frozenset({"all"}), ("tranco10k",), True),
        (frozenset({"all"}), (), False),
        (frozenset({"alexa_1m"}), ("Alexa_1M",), True),
    ],
)
def test_an_excluded_list_drops_the_indicator(
    excluded: frozenset[str], lists: tuple[str, ...], dropped: bool
) -> None:
    indicator = example_indicator(ACCEPTED, misp=flagged(*lists))
    verdict = evaluate(indicator, FilterPolicy(exclude_warninglists=excluded))
    assert (verdict is DropReason.WARNINGLIST) is dropped
    if not dropped:
        assert isinstance(verdict, tuple)


@pytest.mark.parametrize("excluded", [frozenset({"all"}), frozenset({"rfc1918"})])
def test_without_flags_an_exclusion_drops_rather_than_guesses(excluded: frozenset[str]) -> None:
    """The fetcher ran without the setting (or an old record was replayed): the filter cannot
    tell, so it drops with a reason of its own, which ``explain`` turns into the fix."""
    record = example_record(ACCEPTED)
    record.pop("misp", None)
    indicator, policy = must_parse(record), FilterPolicy(exclude_warninglists=excluded)
    assert evaluate(indicator, policy) is DropReason.WARNINGLIST_UNKNOWN
    assert isinstance(evaluate(indicator, FilterPolicy()), tuple)
    assert "set it for the fetcher too" in drop_detail(
        DropReason.WARNINGLIST_UNKNOWN, indicator, policy
    )


def test_an_earlier_check_names_the_reason_first() -> None:
    """The module's order: a low score is the reason even for an indicator on a list."""
    indicator = example_indicator(ACCEPTED, mscore=10, misp=flagged("rfc1918"))
    policy = FilterPolicy(exclude_warninglists=frozenset({"all"}))
    assert evaluate(indicator, policy) is DropReason.LOW_CONFIDENCE


def test_explain_names_the_lists_and_the_setting() -> None:
    indicator = example_indicator(ACCEPTED, misp=flagged("rfc1918", "sinkholes", "tranco10k"))
    policy = FilterPolicy(exclude_warninglists=frozenset({"sinkholes", "rfc1918"}))
    assert excluded_lists(indicator, policy) == ("rfc1918", "sinkholes")
    text = drop_detail(DropReason.WARNINGLIST, indicator, policy)
    assert text.startswith(
        "on MISP warning list(s) rfc1918, sinkholes, excluded by EXCLUDE_WARNINGLISTS"
    )


# ---- the setting ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "lists"),
    [("public-dns-v4,rfc1918", {"public-dns-v4", "rfc1918"}),
     (" sinkholes , alexa_1M ,", {"sinkholes", "alexa_1m"}),
     ("eicar.com", {"eicar.com"}),
     ("RFC1918,Public-DNS-v4", {"rfc1918", "public-dns-v4"}),
     ("rfc1918,all", {"all"}),
     ("ALL", {"all"})],
)  # fmt: skip
def test_the_setting_reads_names_or_all(text: str, lists: set[str]) -> None:
    settings = load_settings({**VALID_ENV, "EXCLUDE_WARNINGLISTS": text})
    assert settings.exclude_warninglists == lists
    assert settings.filter_policy().exclude_warninglists == lists
    assert FetcherConfig.from_settings(settings).include_misp
    assert dict(settings.effective())["EXCLUDE_WARNINGLISTS"] == ",".join(sorted(lists))


def test_unset_it_excludes_nothing_and_asks_mati_for_no_flags() -> None:
    settings = load_settings(VALID_ENV)
    assert settings.exclude_warninglists == frozenset()
    assert not FetcherConfig.from_settings(settings).include_misp
    assert dict(settings.effective())["EXCLUDE_WARNINGLISTS"] == "(none)"


def test_a_bad_name_is_one_line() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({**VALID_ENV, "EXCLUDE_WARNINGLISTS": "rfc1918,public dns"})
    (problem,) = caught.value.problems
    assert problem.startswith("EXCLUDE_WARNINGLISTS='rfc1918,public dns' is not valid: ")


def test_an_unset_exclusion_keeps_the_source_tags_of_earlier_versions() -> None:
    """Upgrading must not make the filter judge every replayed record afresh: the key of the
    default policy is the one versions without the setting made."""
    unset = policy_key(FilterPolicy(), StixPolicy())
    assert unset.hex()[:16] == "2fc400c379438a92"
    assert unset != policy_key(FilterPolicy(exclude_warninglists=frozenset({"all"})), StixPolicy())
