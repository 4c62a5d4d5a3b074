"""MATI's timestamps, in both formats it sends, become aware UTC and anything else becomes
``None``; the fast path is held to the pattern it replaced, and ``format_timestamp`` writes the
STIX form that parses back to the same millisecond."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.core.parsing import format_timestamp, parse_timestamp
from tests.unit.parsing_rig import at
from tests.unit.strategies import PROPERTY, mati_timestamps, utc_datetimes

# --- timestamps -------------------------------------------------------------------------------


def assert_utc(parsed: datetime | None, expected: datetime) -> None:
    assert parsed == expected
    assert parsed is not None
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-03-09T08:02:44.617Z", at(2025, 3, 9, 8, 2, 44, 617000)),
        ("2025-03-09T08:02:44.617+0000", at(2025, 3, 9, 8, 2, 44, 617000)),
        ("2025-03-09T08:02:44Z", at(2025, 3, 9, 8, 2, 44)),
        ("2025-03-09T08:02:44.617+00:00", at(2025, 3, 9, 8, 2, 44, 617000)),
        ("2025-03-09T08:02:44+0200", at(2025, 3, 9, 6, 2, 44)),
        ("2025-03-09T08:02:44-05:30", at(2025, 3, 9, 13, 32, 44)),
        ("2025-03-09T08:02:44.1Z", at(2025, 3, 9, 8, 2, 44, 100000)),
        ("2025-03-09T08:02:44.123456789Z", at(2025, 3, 9, 8, 2, 44, 123456)),
        ("2025-03-09t08:02:44z", at(2025, 3, 9, 8, 2, 44)),
        ("2025-03-09T23:30:00-01:00", at(2025, 3, 10, 0, 30)),
    ],
)
def test_timestamps_in_every_mati_shape_become_aware_utc(text: str, expected: datetime) -> None:
    assert_utc(parse_timestamp(text), expected)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2025-03-09",
        "2025-03-09T08:02:44",
        "2025-03-09T08:02:44.617",
        "2025-03-09 08:02:44Z",
        "2025-13-09T08:02:44Z",
        "2025-02-30T08:02:44Z",
        "2025-03-09T24:00:00Z",
        "2025-03-09T08:02:60Z",
        "2025-03-09T08:02:44+2400",
        "2025-03-09T08:02:44+02",
        "2025-03-09T08:02:44.Z",
        "2025-03-09T08:02:44Z\n",
        " 2025-03-09T08:02:44Z",
        "0000-01-01T00:00:00Z",
        "0001-01-01T00:30:00+01:00",
        "9999-12-31T23:30:00-01:00",
        "２０２５-03-09T08:02:44Z",
        "20250309T080244Z",
    ],
)
def test_anything_else_is_not_a_timestamp(text: str) -> None:
    assert parse_timestamp(text) is None


@pytest.mark.parametrize("value", [None, 1741507364, 1741507364.5, ["2025-03-09T08:02:44Z"]])
def test_non_strings_are_not_timestamps(value: object) -> None:
    assert parse_timestamp(value) is None


@pytest.mark.parametrize(
    ("dt", "expected"),
    [
        (at(2025, 3, 9, 8, 2, 44, 617999), "2025-03-09T08:02:44.617Z"),
        (at(2025, 3, 9, 8, 2, 44), "2025-03-09T08:02:44.000Z"),
        (at(5, 1, 2, 3, 4, 5), "0005-01-02T03:04:05.000Z"),
        (
            datetime(2025, 3, 9, 10, 2, 44, 1000, tzinfo=timezone(timedelta(hours=2))),
            "2025-03-09T08:02:44.001Z",
        ),
    ],
)
def test_format_timestamp_writes_stix_utc_milliseconds(dt: datetime, expected: str) -> None:
    assert format_timestamp(dt) == expected


def test_format_timestamp_refuses_a_naive_datetime() -> None:
    with pytest.raises(ValueError, match="aware"):
        format_timestamp(datetime(2025, 3, 9))


@PROPERTY
@given(utc_datetimes)
def test_formatted_timestamps_parse_back_to_the_millisecond(dt: datetime) -> None:
    assert parse_timestamp(format_timestamp(dt)) == dt.replace(
        microsecond=dt.microsecond // 1000 * 1000
    )


@PROPERTY
@given(st.data(), utc_datetimes)
def test_every_mati_timestamp_shape_round_trips(data: st.DataObject, dt: datetime) -> None:
    dt = dt.replace(microsecond=dt.microsecond // 1000 * 1000)
    text = data.draw(mati_timestamps(dt))
    parsed = parse_timestamp(text)
    assert parsed is not None
    assert parsed == (dt if "." in text else dt.replace(microsecond=0))


# --- the fast timestamp path ------------------------------------------------------------------
# parse_timestamp hands the shapes MATI sends to ``datetime.fromisoformat``, which also accepts
# much that is not a MATI timestamp. These tests hold it to the pattern definition below,
# which is the parser as it was before the fast path: same strings accepted, same instants.

_REFERENCE_PATTERN = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:[Zz]|([+-])(\d{2}):?(\d{2}))",
    re.ASCII,
)


def reference_timestamp(text: str) -> datetime | None:
    """The definition: the pattern, fields read as written, the fraction truncated to
    microseconds, any result outside ``datetime``'s range refused."""
    match = _REFERENCE_PATTERN.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, sign, off_h, off_m = match.groups()
    offset = timedelta(hours=int(off_h), minutes=int(off_m)) if sign else timedelta(0)
    try:
        zone = timezone(-offset if sign == "-" else offset)
        micros = int((fraction or "0")[:6].ljust(6, "0"))
        return datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micros, zone
        ).astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def _two(top: int) -> st.SearchStrategy[str]:
    return st.integers(0, top).map(lambda n: f"{n:02d}")


@st.composite
def timestamp_like(draw: st.DrawFn) -> str:
    """Strings near the MATI shapes: fields in and out of range, every separator, fraction and
    offset form ISO 8601 or ``fromisoformat`` knows, upper and lower case."""
    date_sep = draw(st.sampled_from(["-", "-", "-", "", "/"]))
    time_sep = draw(st.sampled_from([":", ":", ":", ""]))
    year = draw(st.integers(0, 9999).map(lambda n: f"{n:04d}"))
    date = date_sep.join([year, draw(_two(13)), draw(_two(32))])
    if draw(st.booleans()):
        date = f"{year}-W{draw(_two(54))}-{draw(st.integers(0, 8))}"
    clock = time_sep.join([draw(_two(25)), draw(_two(61)), draw(_two(61))])
    if draw(st.integers(0, 9)) == 0:
        clock = clock[: draw(st.sampled_from([2, 5]))]
    separator = draw(st.sampled_from(["T", "T", "t", " ", "x", "_"]))
    mark = draw(st.sampled_from(["", "", ".", ","]))
    fraction = mark + draw(st.text("0123456789", max_size=12)) if mark else ""
    sign = draw(st.sampled_from(["+", "-"]))
    offset = sign + draw(_two(25)) + draw(st.sampled_from([":", ""])) + draw(_two(99))
    zone = draw(
        st.sampled_from(
            ["Z", "z", "", "ZZ", sign + draw(_two(23)), offset, offset]
            + [offset + extra for extra in (":00", "00", ".5", ":30.25")]
        )
    )
    return date + separator + clock + fraction + zone


@st.composite
def mutated_timestamps(draw: st.DrawFn) -> str:
    """A near-MATI string with one character replaced, inserted or removed: the digits at
    every position must be checked, not only the separators."""
    text: str = draw(timestamp_like() | mati_timestamps())
    at_index = draw(st.integers(0, len(text)))
    char: str = draw(st.sampled_from([*"0123456789-:T.Z+z ,W", "٣", "２", "\n", "é", ""]))
    drop = draw(st.booleans())
    return text[:at_index] + char + text[at_index + drop :]


@PROPERTY
@given(timestamp_like() | mutated_timestamps() | st.text(max_size=40))
def test_parse_timestamp_accepts_exactly_what_the_definition_does(text: str) -> None:
    parsed = parse_timestamp(text)
    assert parsed == reference_timestamp(text)
    if parsed is not None:
        assert type(parsed) is datetime
        assert parsed.tzinfo is UTC


@PROPERTY
@given(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.integers(0, 999_999_999),
    st.integers(0, 9),
    st.integers(-(24 * 60 - 1), 24 * 60 - 1),
    st.sampled_from(["Z", "+hhmm", "+hh:mm"]),
)
def test_every_fraction_length_and_offset_reads_as_the_instant_it_names(
    local: datetime, nanos: int, digits: int, offset_minutes: int, style: str
) -> None:
    """Fractions of 0..9 digits are truncated to microseconds; ``+hh:mm`` means local time
    ``hh:mm`` ahead of UTC; the result is that instant in UTC."""
    offset = timedelta(minutes=0 if style == "Z" else offset_minutes)
    fraction = f"{nanos:09d}"[:digits]
    sign = "-" if offset < timedelta(0) else "+"
    hours, minutes = divmod(abs(offset_minutes) if style != "Z" else 0, 60)
    zone = {
        "Z": "Z",
        "+hhmm": f"{sign}{hours:02d}{minutes:02d}",
        "+hh:mm": f"{sign}{hours:02d}:{minutes:02d}",
    }[style]
    base = f"{local.year:04d}-{local:%m-%dT%H:%M:%S}"  # %Y would not pad year 999
    text = base + (f".{fraction}" if digits else "") + zone
    micros = int(fraction[:6].ljust(6, "0")) if digits else 0
    expected = (local.replace(microsecond=micros) - offset).replace(tzinfo=UTC)
    assert_utc(parse_timestamp(text), expected)


@pytest.mark.parametrize(
    "text",
    [
        "2025-03-09T08:02:44-00.0",  # fromisoformat reads an hour fraction in the offset
        "2025-03-09T08:02:44+02:00:00",
        "2025-03-09T08:02:44.617+00:00:00.5",
        "2025-03-09T08:02:44,617Z",
        "2025-03-09T08:02:44.1234567890Z",
        "2025-03-09x08:02:44Z",
        "2025-W10-1T08:02:44Z",
        "2025-03-09T08:02Z",
        "2025-03-09T080244Z",
        "2025-03-09T08:02:44+2359",  # only with the offset's minutes read as minutes
        "2025-03-09T08:02:4٣Z",
        "2025-03-09T08:02:44.61٣Z",
        "2025-03-09T08:02:44+0٣00",
        "2025-03-09T08:02:44\ud800Z",
    ],
)
def test_what_fromisoformat_alone_would_misread_is_decided_by_the_definition(text: str) -> None:
    assert parse_timestamp(text) == reference_timestamp(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-03-09T08:02:44+0099", at(2025, 3, 9, 6, 23, 44)),  # 99 minutes, as written
        ("2025-03-09T08:02:44-0000", at(2025, 3, 9, 8, 2, 44)),
        ("2025-03-09T08:02:44.999999999Z", at(2025, 3, 9, 8, 2, 44, 999999)),
        ("0001-01-01T00:30:00-01:00", at(1, 1, 1, 1, 30)),
        ("9999-12-31T23:30:00+01:00", at(9999, 12, 31, 22, 30)),
        ("2025-03-09T08:02:44+23:59", at(2025, 3, 8, 8, 3, 44)),
    ],
)
def test_edge_instants_read_as_written(text: str, expected: datetime) -> None:
    assert_utc(parse_timestamp(text), expected)


@PROPERTY
@given(
    st.datetimes(
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=5, minutes=45)), timezone(-timedelta(hours=11))]
        )
    )
)
def test_format_timestamp_is_the_utc_instant_truncated_to_milliseconds(dt: datetime) -> None:
    try:
        u = dt.astimezone(UTC)
    except OverflowError:
        with pytest.raises(OverflowError):
            format_timestamp(dt)
        return
    expected = (
        f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}"
        f".{u.microsecond // 1000:03d}Z"
    )
    assert format_timestamp(dt) == expected
    assert parse_timestamp(expected) == u.replace(microsecond=u.microsecond // 1000 * 1000)


def test_a_zone_that_declines_an_offset_is_still_refused_by_format_timestamp() -> None:
    class NoOffset(tzinfo):
        def utcoffset(self, dt: datetime | None) -> timedelta | None:
            return None

        def dst(self, dt: datetime | None) -> timedelta | None:
            return None

        def tzname(self, dt: datetime | None) -> str | None:
            return None

    with pytest.raises(ValueError, match="aware"):
        format_timestamp(datetime(2025, 3, 9, tzinfo=NoOffset()))
