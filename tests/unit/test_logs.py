"""Structured logs: one event a line, context carried, and secrets masked even by accident."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator

import orjson
import pytest

from shared.core.secrets import MASK, Secret
from shared.telemetry.logs import bind, configure, get_logger

SECRET = "s3cr3t-value-Qx81"


@pytest.fixture
def lines(capsys: pytest.CaptureFixture[str]) -> Iterator[list[str]]:
    out: list[str] = []
    yield out
    out.extend(capsys.readouterr().out.splitlines())


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def read(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().out.splitlines()


def test_json_lines_carry_event_fields_and_bound_context(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure(fmt="json", level="INFO")
    log = get_logger("test")
    with bind(destination="prod", run_id="r1"):
        log.info("fetch.page", records=1000, cursor=None)
    log.debug("hidden")
    (line,) = read(capsys)
    event = orjson.loads(line)
    assert event["event"] == "fetch.page"
    assert event["level"] == "info"
    assert (event["destination"], event["run_id"], event["records"]) == ("prod", "r1", 1000)
    assert event["timestamp"].endswith("+00:00")


def test_console_lines_are_key_value(capsys: pytest.CaptureFixture[str]) -> None:
    configure(fmt="console", level="DEBUG")
    get_logger("test").warning("upload.rejected", message="bad pattern", index=3)
    (line,) = read(capsys)
    assert " warning upload.rejected " in line
    assert 'message="bad pattern"' in line
    assert line.endswith("index=3")


def test_secrets_are_masked_wherever_they_appear(capsys: pytest.CaptureFixture[str]) -> None:
    configure(fmt="json", secrets=[Secret(SECRET), None])
    log = get_logger("test")
    log.info("auth.failed", detail=f"token {SECRET} refused", key=Secret(SECRET))
    logging.getLogger("thirdparty").warning("header was Bearer %s", SECRET)
    try:
        raise RuntimeError(f"boom {SECRET}")
    except RuntimeError:
        log.exception("loop.crashed")
    output = capsys.readouterr().out
    assert SECRET not in output
    events = [orjson.loads(line) for line in output.splitlines()]
    assert events[0]["detail"] == f"token {MASK} refused"
    assert events[0]["key"] == MASK
    assert events[1]["event"] == f"header was Bearer {MASK}"
    assert events[2]["error"] == "RuntimeError"
    assert events[2]["error_message"] == MASK


def test_a_crash_in_a_task_group_names_what_was_inside(capsys: pytest.CaptureFixture[str]) -> None:
    """A task group's crash says only "1 sub-exception": the line names the exception inside,
    where it was raised, and masks a secret in its text (not only in the group's)."""
    configure(fmt="json", secrets=[Secret(SECRET)])
    log = get_logger("test")

    async def broken() -> None:
        raise AttributeError("'NoneType' object has no attribute 'flow'")

    async def leaking() -> None:
        raise ValueError(f"refused {SECRET}")

    for work in (broken, leaking):
        try:

            async def crash(work: Callable[[], Awaitable[None]] = work) -> None:
                async with asyncio.TaskGroup() as group:
                    group.create_task(work())

            asyncio.run(crash())
        except ExceptionGroup:
            log.exception("service.crashed")
    output = capsys.readouterr().out
    assert SECRET not in output
    first, second = (orjson.loads(line) for line in output.splitlines())
    assert first["error"] == "AttributeError"
    assert first["error_message"] == "'NoneType' object has no attribute 'flow'"
    assert first["error_at"] == f"tests/unit/test_logs.py:{broken.__code__.co_firstlineno + 1}"
    assert second["error"] == "ValueError"
    assert second["error_message"] == MASK
