"""Hypothesis strategies of hostile MATI records, for the fuzz tests of the parser, the filter's
judging and the STIX mapping (tests/unit/test_record_fuzz.py), and of the filter worker over a
real bus (tests/clients/test_edge_input_pipeline.py).

Where ``tests.unit.strategies`` draws records from the spec's shape, these start from the MATI
simulator's own feed (every type, the blocks the simulator sends, its real-looking values) and
break them the ways an upstream could: a field replaced by arbitrary JSON, dropped, turned into a
string of kilobytes or a value nested two hundred deep, a nested block garbled, text from any
plane of unicode, a value grown by tens of kilobytes. Nesting stays within what orjson writes
(254 levels), so every record can be a message body; deeper bodies are the tests' own bytes.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any, Final

from hypothesis import strategies as st

from simulators.feed import Feed
from tests.unit.strategies import json_values, noisy_records

FEED: Final = Feed(seed=5, count=400, days=30, now=datetime(2025, 6, 1, tzinfo=UTC))
#: Keys a mutation aims at: the record's own, and the optional blocks the parser reads.
_KEYS: Final = (
    "id",
    "type",
    "value",
    "mscore",
    "threat_rating",
    "sources",
    "category",
    "associated_hashes",
    "attributed_associations",
    "campaigns",
    "misp",
    "last_updated",
    "first_seen",
    "last_seen",
)
#: Any unicode but lone surrogates, which no JSON text can carry.
_any_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)


def _nested(depth: int) -> object:
    value: object = []
    for _ in range(depth - 1):
        value = [value]
    return value


feed_records = st.integers(0, len(FEED) - 1).map(lambda i: copy.deepcopy(FEED.record(i)))

#: What a field may become.
garbage: st.SearchStrategy[Any] = st.one_of(
    json_values,
    _any_text,
    st.integers(1_000, 20_000).map(lambda n: "A" * n),
    st.integers(2, 200).map(_nested),
    st.sampled_from([None, "", " ", 0, -1, 101, 1e308, True, [], {}]),
)


@st.composite
def mutated_records(draw: st.DrawFn) -> dict[str, Any]:
    """A simulator feed record with one to four fields, or fields of its blocks, broken."""
    record = draw(feed_records)
    for _ in range(draw(st.integers(1, 4))):
        key = draw(st.sampled_from(_KEYS))
        action = draw(st.sampled_from(["replace", "drop", "inner", "long_value"]))
        if action == "long_value":  # the record stays well formed but for its length
            record["value"] = str(record.get("value")) + "a" * draw(st.integers(1_000, 60_000))
        elif action == "drop":
            record.pop(key, None)
        elif action == "inner" and isinstance(record.get(key), list) and record[key]:
            items = record[key]
            index = draw(st.integers(0, len(items) - 1))
            if isinstance(items[index], dict) and items[index]:
                inner = draw(st.sampled_from(sorted(items[index])))
                items[index][inner] = draw(garbage)
            else:
                items[index] = draw(garbage)
        elif action == "inner" and isinstance(record.get(key), dict) and record[key]:
            inner = draw(st.sampled_from(sorted(record[key])))
            record[key][inner] = draw(garbage)
        else:
            record[key] = draw(garbage)
    return record


#: Every kind of hostile record: a broken feed record, a spec-shaped one with garbled fields,
#: or any JSON value at all.
hostile_records: st.SearchStrategy[Any] = st.one_of(
    mutated_records(), mutated_records(), noisy_records(), json_values
)
