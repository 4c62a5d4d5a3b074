"""The back-off policy and the parsers of the waits servers ask for: pure, no clock, no sleep."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.core.backoff import Backoff, parse_retry_after, parse_try_again_text

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


class TestCeiling:
    def test_doubles_from_base_until_the_cap(self) -> None:
        policy = Backoff(base_s=1.0, cap_s=10.0)
        assert [policy.ceiling(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]

    def test_huge_retry_numbers_do_not_overflow(self) -> None:
        assert Backoff(base_s=0.5, cap_s=30.0).ceiling(10_000) == 30.0

    def test_retry_numbers_start_at_one(self) -> None:
        with pytest.raises(ValueError, match="start at 1"):
            Backoff().ceiling(0)


class TestValidation:
    @pytest.mark.parametrize(
        "kwargs",
        [
            {"base_s": 0.0},
            {"base_s": -1.0},
            {"base_s": math.nan},
            {"base_s": 5.0, "cap_s": 1.0},
            {"cap_s": math.inf},
            {"max_attempts": 0},
            {"budget_s": -1.0},
            {"budget_s": math.inf},
        ],
    )
    def test_rejects_nonsense(self, kwargs: dict[str, float]) -> None:
        with pytest.raises(ValueError):  # noqa: PT011 - several messages, one contract
            Backoff(**kwargs)  # type: ignore[arg-type]


class TestNextWait:
    @given(
        base=st.floats(min_value=0.01, max_value=10),
        factor=st.floats(min_value=1, max_value=100),
        attempts=st.integers(min_value=1, max_value=40),
        seed=st.integers(min_value=0, max_value=2**32),
    )
    def test_full_jitter_stays_within_zero_and_the_ceiling(
        self, base: float, factor: float, attempts: int, seed: int
    ) -> None:
        policy = Backoff(base_s=base, cap_s=base * factor, max_attempts=100, budget_s=1e9)
        wait = policy.next_wait(attempts, 0.0, random.Random(seed))
        assert wait is not None
        assert 0.0 <= wait <= policy.ceiling(attempts)

    def test_waits_are_jittered_not_fixed(self) -> None:
        policy = Backoff(base_s=1.0, cap_s=60.0, max_attempts=10, budget_s=1e6)
        rng = random.Random(3)
        draws = {policy.next_wait(5, 0.0, rng) for _ in range(50)}
        assert len(draws) == 50

    @given(max_attempts=st.integers(min_value=1, max_value=20))
    def test_gives_up_after_max_attempts(self, max_attempts: int) -> None:
        policy = Backoff(max_attempts=max_attempts, budget_s=1e9)
        rng = random.Random(0)
        allowed = [policy.next_wait(n, 0.0, rng) is not None for n in range(1, max_attempts + 3)]
        assert allowed == [True] * (max_attempts - 1) + [False] * 3

    @given(
        elapsed=st.floats(min_value=0, max_value=1000),
        server_wait=st.floats(min_value=0, max_value=1000),
        budget=st.floats(min_value=0, max_value=1000),
    )
    def test_never_exceeds_the_time_budget(
        self, elapsed: float, server_wait: float, budget: float
    ) -> None:
        policy = Backoff(max_attempts=100, budget_s=budget)
        wait = policy.next_wait(1, elapsed, random.Random(0), server_wait_s=server_wait)
        if elapsed + server_wait <= budget:
            assert wait == server_wait
        else:
            assert wait is None

    def test_the_server_wait_is_used_as_is(self) -> None:
        policy = Backoff(base_s=1.0, cap_s=2.0, budget_s=600)
        assert policy.next_wait(1, 0.0, random.Random(0), server_wait_s=120.0) == 120.0

    @pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
    def test_a_nonsense_server_wait_falls_back_to_jitter(self, bad: float) -> None:
        policy = Backoff(base_s=1.0, cap_s=2.0, budget_s=600)
        wait = policy.next_wait(1, 0.0, random.Random(0), server_wait_s=bad)
        assert wait is not None
        assert 0.0 <= wait <= 1.0

    def test_is_asked_only_after_a_failure(self) -> None:
        with pytest.raises(ValueError, match="at least one failed attempt"):
            Backoff().next_wait(0, 0.0, random.Random(0))

    @given(seed=st.integers(min_value=0, max_value=2**32))
    def test_a_whole_schedule_respects_both_bounds(self, seed: int) -> None:
        policy = Backoff(base_s=1.0, cap_s=30.0, max_attempts=8, budget_s=45.0)
        rng = random.Random(seed)
        elapsed, failures = 0.0, 0
        while True:
            failures += 1
            wait = policy.next_wait(failures, elapsed, rng)
            if wait is None:
                break
            elapsed += wait
        assert failures <= policy.max_attempts
        assert elapsed <= policy.budget_s


class TestRetryAfter:
    @pytest.mark.parametrize(
        ("header", "seconds"),
        [("0", 0.0), ("7", 7.0), (" 120 ", 120.0), ("1.5", 1.5), ("0.25", 0.25)],
    )
    def test_delta_seconds(self, header: str, seconds: float) -> None:
        assert parse_retry_after(header, now=NOW) == seconds

    def test_http_date_in_the_future(self) -> None:
        header = format_datetime(NOW + timedelta(seconds=90), usegmt=True)
        assert parse_retry_after(header, now=NOW) == 90.0

    def test_http_date_in_the_past_means_now(self) -> None:
        header = format_datetime(NOW - timedelta(minutes=5), usegmt=True)
        assert parse_retry_after(header, now=NOW) == 0.0

    def test_obsolete_date_forms_are_read_too(self) -> None:
        # RFC 850 form, which RFC 9110 still requires recipients to accept.
        assert parse_retry_after("Saturday, 01-Mar-25 12:00:30 GMT", now=NOW) == 30.0

    def test_http_date_against_the_real_clock(self) -> None:
        header = format_datetime(datetime.now(UTC) + timedelta(hours=1), usegmt=True)
        wait = parse_retry_after(header)
        assert wait is not None
        assert 3500 < wait <= 3600

    @pytest.mark.parametrize("header", [None, "", "soon", "-5", "1e3", "NaN", "12 seconds"])
    def test_garbage_is_none(self, header: str | None) -> None:
        assert parse_retry_after(header, now=NOW) is None

    @given(st.integers(min_value=0, max_value=10**9))
    def test_any_delta_seconds_round_trips(self, seconds: int) -> None:
        assert parse_retry_after(str(seconds), now=NOW) == float(seconds)

    @given(st.text(max_size=40))
    def test_never_raises_and_never_negative(self, text: str) -> None:
        wait = parse_retry_after(text, now=NOW)
        assert wait is None or (wait >= 0 and math.isfinite(wait))


class TestTryAgainText:
    @pytest.mark.parametrize(
        ("text", "seconds"),
        [
            ("Rate limit is exceeded. Try again in 23 seconds.", 23.0),
            ("rate limit is exceeded. try again in 1 second.", 1.0),
            (
                '{"statusCode":429,"message":"Rate limit is exceeded. Try again in 60 seconds."}',
                60.0,
            ),
            ("Try again in 2.5 seconds", 2.5),
        ],
    )
    def test_reads_the_number(self, text: str, seconds: float) -> None:
        assert parse_try_again_text(text) == seconds

    @pytest.mark.parametrize("text", [None, "", "Rate limit is exceeded.", "Try again later."])
    def test_no_number_is_none(self, text: str | None) -> None:
        assert parse_try_again_text(text) is None

    @given(st.text(max_size=80))
    def test_never_raises(self, text: str) -> None:
        wait = parse_try_again_text(text)
        assert wait is None or wait >= 0
