"""Hypothesis strategies and example records shared by the unit tests of the pure core.

``mati_records`` draws records shaped like mati-api-v4 §5/§6 (both timestamp formats, optional
blocks present or absent); ``noisy_records`` then replaces fields with arbitrary JSON, which is
what a buggy or hostile upstream could send. ``example_record`` returns the §6 examples.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from shared.core.filters import FilterPolicy, HashSelection, Observable, ObservableKind
from shared.core.indicator import HashType, Indicator, IndicatorType
from shared.core.parsing import HASH_HEX_DIGITS, Rejection, parse_indicator
from shared.core.stix import DefaultAction, StixPolicy

#: Settings for every property test here: enough examples to find edge cases, few enough that
#: the whole unit suite stays well under 20 s; no deadline, as the OASIS parsers vary in speed.
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

JsonValue = None | bool | int | float | str | list[Any] | dict[str, Any]

_EXAMPLES: dict[str, dict[str, Any]] = {
    "ipv4": {
        "id": "ipv4--451fa3ec-72a4-58b6-bf12-e81aa2ff95a6",
        "mscore": 92,
        "type": "ipv4",
        "value": "203.0.113.77",
        "is_exclusive": True,
        "is_publishable": True,
        "sources": [
            {
                "first_seen": "2025-03-02T11:04:19.512+0000",
                "last_seen": "2025-03-09T07:41:02.208+0000",
                "osint": False,
                "category": ["control-server"],
                "source_name": "Mandiant",
            },
            {
                "first_seen": "2025-03-04T23:10:00.731+0000",
                "last_seen": "2025-03-04T23:10:00.731+0000",
                "osint": True,
                "category": [],
                "source_name": "blocklist_de",
            },
        ],
        "attributed_associations": [
            {
                "id": "malware--6350612e-8b86-5502-9f24-418c5cebde45",
                "name": "FAKEGATE",
                "type": "malware",
            }
        ],
        "threat_rating": {
            "confidence_level": "high",
            "confidence_score": 95,
            "severity_level": "high",
            "severity_reason": ["attributed"],
            "threat_score": 88,
        },
        "category": ["control-server"],
        "last_updated": "2025-03-09T08:02:44.617Z",
        "first_seen": "2025-03-02T11:04:19.000Z",
        "last_seen": "2025-03-09T07:41:02.000Z",
        "campaigns": [],
        "reports": [],
    },
    "fqdn": {
        "id": "fqdn--8f8e1cda-5ec1-5f42-9784-a156785f2979",
        "mscore": 81,
        "type": "fqdn",
        "value": "update-cdn-sync.example",
        "sources": [
            {
                "first_seen": "2025-02-27T16:22:08.000+0000",
                "last_seen": "2025-03-08T19:55:31.000+0000",
                "osint": False,
                "category": ["malware", "control-server"],
                "source_name": "Mandiant",
            }
        ],
        "attributed_associations": [
            {
                "id": "threat-actor--54c1b50a-b370-5bd6-8ea9-fba459d01a6b",
                "name": "UNC9999",
                "type": "threat-actor",
            },
            {
                "id": "malware--6350612e-8b86-5502-9f24-418c5cebde45",
                "name": "FAKEGATE",
                "type": "malware",
            },
        ],
        "threat_rating": {"threat_score": 84},
        "category": ["malware", "control-server"],
        "last_updated": "2025-03-09T08:03:10.044Z",
        "first_seen": "2025-02-27T16:22:08.000Z",
        "last_seen": "2025-03-08T19:55:31.000Z",
        "campaigns": [
            {
                "id": "campaign--071ea2bd-f2a1-506d-9d8c-7e66dec0fd4e",
                "name": "CAMP.25.014",
                "title": "UNC9999 Targets Logistics Firms with FAKEGATE Loader",
            }
        ],
    },
    "url": {
        "id": "url--5ced52ae-1b29-5fb7-a2f9-65f34ca62ac9",
        "mscore": 64,
        "type": "url",
        "value": "http://update-cdn-sync.example/gate.php?id=7",
        "sources": [
            {
                "first_seen": "2025-03-01T02:13:44.902+0000",
                "last_seen": "2025-03-07T10:00:05.390+0000",
                "osint": True,
                "category": ["phishing", "malware"],
                "source_name": "phishstats",
            },
            {
                "first_seen": "2025-03-06T09:30:00.000+0000",
                "last_seen": "2025-03-06T09:30:00.000+0000",
                "osint": True,
                "category": [],
                "source_name": "urlhaus",
            },
        ],
        "threat_rating": {"threat_score": 41},
        "category": ["malware", "phishing"],
        "last_updated": "2025-03-09T08:04:51.330Z",
        "first_seen": "2025-03-01T02:13:44.000Z",
        "last_seen": "2025-03-07T10:00:05.000Z",
    },
    "md5": {
        "id": "md5--05aa3630-6857-5301-9955-0bad95077e4b",
        "mscore": 100,
        "type": "md5",
        "value": "b3becab76a6d36861357bfa3fe966003",
        "sources": [
            {
                "first_seen": "2025-02-20T18:40:12.000+0000",
                "last_seen": "2025-02-20T18:40:12.000+0000",
                "osint": False,
                "category": [],
                "source_name": "Mandiant",
            }
        ],
        "associated_hashes": [
            {
                "id": "md5--05aa3630-6857-5301-9955-0bad95077e4b",
                "type": "md5",
                "value": "b3becab76a6d36861357bfa3fe966003",
            },
            {
                "id": "sha1--70176f6e-e583-58b5-aea9-70a3ae781fd0",
                "type": "sha1",
                "value": "537f7341e42b72c88032e89aafa94ce5861f2e2a",
            },
            {
                "id": "sha256--1bbf7956-dfc2-5834-b327-da54e8960105",
                "type": "sha256",
                "value": "268791330e6cf922e1c53392031cfcbe203630e416342e5503d39f402b6f0ca5",
            },
        ],
        "attributed_associations": [
            {
                "id": "malware--6350612e-8b86-5502-9f24-418c5cebde45",
                "name": "FAKEGATE",
                "type": "malware",
            }
        ],
        "threat_rating": {"threat_score": 97},
        "category": [],
        "last_updated": "2025-03-09T08:05:02.871Z",
        "first_seen": "2025-02-20T18:40:12.000Z",
        "last_seen": "2025-02-20T18:40:12.000Z",
    },
}


def example_record(kind: str) -> dict[str, Any]:
    """A fresh deep copy of the mati-api-v4 §6 example of ``kind``; tests may mutate it."""
    return copy.deepcopy(_EXAMPLES[kind])


def example_indicator(kind: str, **changes: Any) -> Indicator:
    """The parsed §6 example of ``kind`` with top-level record fields replaced by ``changes``."""
    return must_parse({**example_record(kind), **changes})


def must_parse(record: object) -> Indicator:
    parsed = parse_indicator(record)
    if isinstance(parsed, Rejection):
        raise AssertionError(f"example did not parse: {parsed}")
    return parsed


# --- JSON and bytes ---------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)

json_values: st.SearchStrategy[JsonValue] = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=25,
)


# --- timestamps -------------------------------------------------------------------------------

utc_datetimes = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@st.composite
def mati_timestamps(draw: st.DrawFn, dt: datetime | None = None) -> str:
    """Any of the shapes MATI sends: ``.mmmZ``, ``.mmm+0000``, ``Z`` without millis, ``+00:00``."""
    moment = dt if dt is not None else draw(utc_datetimes)
    base = moment.strftime("%Y-%m-%dT%H:%M:%S")
    millis = f".{moment.microsecond // 1000:03d}"
    suffix = draw(st.sampled_from([millis + "Z", millis + "+0000", "Z", millis + "+00:00"]))
    return base + suffix


# --- values -----------------------------------------------------------------------------------


def hex_digests(hash_type: HashType) -> st.SearchStrategy[str]:
    digits = HASH_HEX_DIGITS[hash_type]
    return st.text(alphabet="0123456789abcdef", min_size=digits, max_size=digits)


_labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,14}[a-z0-9])?", fullmatch=True)
domains = st.builds(
    lambda parts, tld: ".".join([*parts, tld]),
    st.lists(_labels, min_size=1, max_size=3),
    st.sampled_from(["example", "test", "com", "ru", "xn--p1ai"]),
)
urls = st.builds(
    lambda scheme, host, path: f"{scheme}://{host}/{path}",
    st.sampled_from(["http", "https"]),
    domains,
    st.text(max_size=30),
)
ipv4s = st.ip_addresses(v=4).map(str)

_values_by_type: dict[str, st.SearchStrategy[str]] = {
    "ipv4": ipv4s,
    "fqdn": domains,
    "url": urls,
    "md5": hex_digests(HashType.MD5),
}

categories = st.sampled_from(
    ["malware", "control-server", "botnet", "infostealer", "phishing", "exploit/vuln-scanning"]
)


# --- records ----------------------------------------------------------------------------------


@st.composite
def raw_sources(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "first_seen": draw(mati_timestamps()),
        "last_seen": draw(mati_timestamps()),
        "osint": draw(st.booleans()),
        "category": draw(st.lists(categories, max_size=3)),
        "source_name": draw(st.sampled_from(["Mandiant", "blocklist_de", "urlhaus", "phishtank"])),
    }


@st.composite
def mati_records(draw: st.DrawFn) -> dict[str, Any]:
    """A record as MATI sends it; every optional block may be absent."""
    kind = draw(st.sampled_from(list(_values_by_type)))
    record: dict[str, Any] = {
        "id": f"{kind}--{draw(st.uuids())}",
        "type": kind,
        "value": draw(_values_by_type[kind]),
    }
    optional: dict[str, st.SearchStrategy[Any]] = {
        "mscore": st.integers(0, 100),
        "threat_rating": st.fixed_dictionaries({"threat_score": st.integers(0, 100)}),
        "sources": st.lists(raw_sources(), max_size=3),
        "category": st.lists(categories, max_size=3),
        "attributed_associations": st.lists(
            st.fixed_dictionaries(
                {
                    "id": st.uuids().map(str),
                    "name": st.sampled_from(["APT29", "UNC9999", "FAKEGATE", "BEATDROP"]),
                    "type": st.sampled_from(["threat-actor", "malware", "intrusion-set"]),
                }
            ),
            max_size=3,
        ),
        "campaigns": st.lists(
            st.fixed_dictionaries({"name": st.sampled_from(["CAMP.25.014", "GLOBAL.21.005"])}),
            max_size=2,
        ),
        "last_updated": mati_timestamps(),
        "first_seen": mati_timestamps(),
        "last_seen": mati_timestamps(),
        "is_publishable": st.booleans(),
        "misp": st.dictionaries(
            st.sampled_from(["rfc1918", "Sinkholes", "tranco10k"]), st.booleans(), max_size=3
        ),
    }
    if kind == "md5":
        optional["associated_hashes"] = st.lists(
            st.sampled_from(list(HashType)).flatmap(
                lambda h: st.fixed_dictionaries({"type": st.just(h.value), "value": hex_digests(h)})
            ),
            max_size=3,
        )
    for key, strategy in optional.items():
        if draw(st.booleans()):
            record[key] = draw(strategy)
    return record


@st.composite
def noisy_records(draw: st.DrawFn) -> dict[str, Any]:
    """A realistic record with some fields (required ones included) replaced by arbitrary JSON."""
    record = draw(mati_records())
    keys = [*record, "mscore", "threat_rating", "sources", "associated_hashes", "category", "misp"]
    for key in draw(st.lists(st.sampled_from(keys), max_size=4)):
        record[key] = draw(json_values)
    return record


indicators = mati_records().map(must_parse)


# --- policies and observables -----------------------------------------------------------------

filter_policies = st.builds(
    FilterPolicy,
    minimum_confidence=st.integers(0, 100),
    minimum_threat_score=st.integers(0, 100),
    exclude_osint=st.booleans(),
    include_uncategorized=st.booleans(),
    hash_selection=st.sampled_from(HashSelection),
    include_ipv4=st.booleans(),
    include_fqdn=st.booleans(),
    include_url=st.booleans(),
    include_hash=st.booleans(),
    exclude_warninglists=st.sampled_from(
        [frozenset(), frozenset({"all"}), frozenset({"rfc1918", "sinkholes"})]
    ),
)

_expirations = st.timedeltas(min_value=timedelta(milliseconds=1), max_value=timedelta(days=365))
stix_policies = st.builds(
    StixPolicy,
    ipv4_expiration=_expirations,
    fqdn_expiration=_expirations,
    url_expiration=_expirations,
    hash_expiration=_expirations,
    default_action=st.sampled_from(DefaultAction).map(str),
    passive_only=st.booleans(),
)

_KIND_OF = {
    IndicatorType.IPV4: ObservableKind.IPV4,
    IndicatorType.FQDN: ObservableKind.FQDN,
    IndicatorType.URL: ObservableKind.URL,
}


@st.composite
def observables(draw: st.DrawFn) -> Observable:
    """An observable of a realistic indicator, as ``evaluate`` would build it."""
    indicator = draw(indicators)
    if indicator.type is IndicatorType.MD5:
        hash_type, value = draw(st.sampled_from(indicator.hashes))
        return Observable(indicator, ObservableKind.HASH, value, hash_type)
    return Observable(indicator, _KIND_OF[indicator.type], indicator.value)


@st.composite
def text_observables(draw: st.DrawFn) -> Observable:
    """An ipv4/fqdn/url observable whose value is *any* text: quotes, backslashes, control
    characters, any plane of unicode. Hash observables are not drawn here: the OASIS pattern
    validator checks hash literals against the algorithm's hex format (see test_stix_patterns)."""
    indicator_type = draw(st.sampled_from(list(_KIND_OF)))
    value = draw(st.text())
    indicator = Indicator(
        id=f"{indicator_type}--{draw(st.uuids())}", type=indicator_type, value=value
    )
    return Observable(indicator, _KIND_OF[indicator_type], value)
