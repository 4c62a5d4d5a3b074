"""STIX patterns: one comparison each, the value escaped so that any string survives as the
literal it was. The OASIS validator and parser are the judges of validity, not our own reading
of the spec.

Validator quirk found while writing these tests (stix2-patterns 2.1.2): besides the grammar, it
checks hash literals against the algorithm (``file:hashes.'MD5'`` must match
``^[a-fA-F0-9]{32}$``, SHA-1 40 and SHA-256 64 hex digits) and fails the pattern otherwise. So
"any string" only holds for ipv4/fqdn/url values; hash values are drawn as hex of the right
length, which is also what ``parse_indicator`` guarantees. The string grammar itself accepts
every code point once ``\\`` and ``'`` are escaped (all of U+0000..U+10FFFF checked by hand,
surrogates and control characters included), so nothing else is filtered. Lone surrogates never
reach us anyway: orjson refuses them when decoding MATI's body.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from stix2patterns.pattern import Pattern
from stix2patterns.validator import run_validator

from shared.core.filters import Observable, ObservableKind
from shared.core.indicator import HashType, Indicator, IndicatorType
from shared.core.stix import escape, pattern, unescape
from tests.unit.stix_rig import MD5, SHA1, SHA256, literal, observable
from tests.unit.strategies import PROPERTY, hex_digests, text_observables

# --- escaping and patterns --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "escaped"),
    [
        ("plain", "plain"),
        ("", ""),
        ("a'b", "a\\'b"),
        ("a\\b", "a\\\\b"),
        ("\\'", "\\\\\\'"),
        ("C:\\a'b", "C:\\\\a\\'b"),
        ("''", "\\'\\'"),
        ('"', '"'),
        ("\n\t\x00é😀", "\n\t\x00é😀"),
    ],
)
def test_escape_doubles_backslashes_then_escapes_quotes(value: str, escaped: str) -> None:
    assert escape(value) == escaped
    assert unescape(escaped) == value


@pytest.mark.parametrize("bad", ["'", "a'b", "\\", "a\\", "\\n", "\\\\\\", "\\x27"])
def test_unescape_refuses_what_escape_cannot_write(bad: str) -> None:
    with pytest.raises(ValueError, match="STIX string literal"):
        unescape(bad)


@pytest.mark.parametrize(
    ("obs", "expected"),
    [
        (observable("ipv4"), "[ipv4-addr:value = '203.0.113.77']"),
        (observable("fqdn"), "[domain-name:value = 'update-cdn-sync.example']"),
        (observable("url"), "[url:value = 'http://update-cdn-sync.example/gate.php?id=7']"),
        (observable("md5", HashType.MD5), f"[file:hashes.'MD5' = '{MD5}']"),
        (observable("md5", HashType.SHA1), f"[file:hashes.'SHA-1' = '{SHA1}']"),
        (observable("md5", HashType.SHA256), f"[file:hashes.'SHA-256' = '{SHA256}']"),
    ],
    ids=["ipv4", "fqdn", "url", "md5", "sha1", "sha256"],
)
def test_each_pattern_form_is_a_valid_single_comparison(obs: Observable, expected: str) -> None:
    assert pattern(obs) == expected
    assert run_validator(expected, stix_version="2.1") == []
    assert len(Pattern(expected).inspect().comparisons) == 1


def test_a_url_with_quotes_and_backslashes_is_escaped_in_the_pattern() -> None:
    url = "http://x.example/a'b\\c"
    obs = observable("url", value=url)
    assert pattern(obs) == "[url:value = 'http://x.example/a\\'b\\\\c']"
    assert run_validator(pattern(obs)) == []


@PROPERTY
@given(text_observables())
def test_any_text_value_gives_a_valid_pattern_whose_literal_is_the_value(obs: Observable) -> None:
    stix_pattern = pattern(obs)
    assert run_validator(stix_pattern, stix_version="2.1") == []
    assert unescape(literal(stix_pattern)) == obs.value


@PROPERTY
@given(st.sampled_from(list(HashType)).flatmap(lambda h: st.tuples(st.just(h), hex_digests(h))))
def test_any_well_formed_hash_gives_a_valid_pattern(drawn: tuple[HashType, str]) -> None:
    hash_type, digest = drawn
    indicator = Indicator(id="md5--1", type=IndicatorType.MD5, value="0" * 32)
    stix_pattern = pattern(Observable(indicator, ObservableKind.HASH, digest, hash_type))
    assert run_validator(stix_pattern, stix_version="2.1") == []
    assert literal(stix_pattern) == digest


def test_the_validator_refuses_a_malformed_hash_literal() -> None:
    # Why hash values are validated at parsing (see module docstring).
    indicator = Indicator(id="md5--1", type=IndicatorType.MD5, value="0" * 32)
    bad = pattern(Observable(indicator, ObservableKind.HASH, "not-a-hash", HashType.SHA256))
    assert run_validator(bad) != []
