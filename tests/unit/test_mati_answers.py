"""What each MATI answer means, read without a server: which failures are worth repeating,
which end a sync, and that the server's words never carry a secret into an error."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from shared.adapters import mati_answers as answers
from shared.adapters.mati_answers import Answer, Retry
from shared.core.errors import (
    MalformedResponse,
    PagingInterrupted,
    QueryRejected,
    RateLimited,
    UpstreamUnavailable,
)

SECRET = "key-0f9e8d"


def answer(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, body, CIMultiDictProxy(CIMultiDict(headers or {})))


def words(reply: Answer) -> str:
    return answers.message(reply, (SECRET,))


@pytest.mark.parametrize("status", [408, 500, 502, 503, 504])
def test_timeouts_and_server_errors_are_repeated(status: int) -> None:
    failure = answers.failure(answer(status), lambda: "unused", follow_up=False)
    assert isinstance(failure, Retry)
    assert (failure.kind, failure.status, failure.server_wait_s) == ("unavailable", status, None)


def test_a_429_is_repeated_after_the_wait_the_server_asked_for() -> None:
    failure = answers.failure(answer(429, headers={"Retry-After": "7"}), lambda: "", follow_up=True)
    assert isinstance(failure, Retry)
    assert (failure.kind, failure.server_wait_s) == ("rate_limited", 7.0)


def test_a_400_on_a_cursor_restarts_the_window_and_elsewhere_rejects_the_query() -> None:
    reply = answer(400, b'{"error": "bad cursor ' + SECRET.encode() + b'"}')
    interrupted = answers.failure(reply, lambda: words(reply), follow_up=True)
    rejected = answers.failure(reply, lambda: words(reply), follow_up=False)
    assert isinstance(interrupted, PagingInterrupted)
    assert isinstance(rejected, QueryRejected)
    assert rejected.status == 400
    for error in (interrupted, rejected):
        assert "bad cursor" in str(error)
        assert SECRET not in str(error)


def test_an_undecodable_body_is_repeated_as_malformed() -> None:
    with pytest.raises(Retry) as raised:
        answers.decode(answer(200, b"{not json"))
    assert (raised.value.kind, raised.value.status) == ("malformed", 200)
    assert answers.decode(answer(200, b'{"next": null}')) == {"next": None}


def test_a_failure_still_repeating_becomes_the_error_it_stands_for() -> None:
    limited = answers.exhausted("GET x", Retry("r", kind="rate_limited", server_wait_s=3), 6)
    assert isinstance(limited, RateLimited)
    assert limited.retry_after_s == 3
    unsaid = answers.exhausted("GET x", Retry("r", kind="rate_limited"), 6)
    assert isinstance(unsaid, RateLimited)
    assert unsaid.retry_after_s == 60
    assert isinstance(
        answers.exhausted("GET x", Retry("r", kind="malformed"), 2), MalformedResponse
    )
    down = answers.exhausted("GET x", Retry("HTTP 503", status=503), 6)
    assert isinstance(down, UpstreamUnavailable)
    assert down.status == 503
    assert str(down) == "MATI GET x: HTTP 503 after 6 attempt(s)"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(600, 600.0), ("3599", 3599.0), (1.5, 1.5), (0, 0.0), (-1, None), ("soon", None),
     (True, None), (None, None), (float("inf"), None), ("nan", None)],
)  # fmt: skip
def test_token_lifetimes_are_read_only_when_they_make_sense(value: object, seconds: float) -> None:
    assert answers.seconds(value) == seconds
