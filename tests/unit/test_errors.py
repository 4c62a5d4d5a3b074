"""Every exception the product defines sits in the one error tree (shared.core.errors), under
the branch that tells its caller what to do: a class outside it would be caught by nobody's
``except TransientError`` / ``PermanentError`` / ``FatalError`` and crash a loop instead."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Iterator

import pytest

import services
import shared
from shared.core.errors import (
    ConfigError,
    FatalError,
    PermanentError,
    PipelineError,
    TransientError,
)

#: The branches a caller decides on; every other error derives from one of them.
BRANCHES = (ConfigError, TransientError, PermanentError, FatalError)

#: Exceptions that never leave the code that raises them, so no caller decides on them.
CONTROL_FLOW = {
    # One failed MATI attempt inside the client's retry loop; it leaves the client only as the
    # tree's RateLimited / UpstreamUnavailable / MalformedResponse once the retries run out.
    "shared.adapters.mati_answers.Retry": "caught by MatiClient._with_retries",
    # A shutdown, not a failure: the loop was asked to stop while it waited to retry.
    "shared.core.retrying.Stopped": "a stop request interrupting a retry wait",
    # A setting's parser refusing a value it can read (a REDIS_URL that weakens TLS); caught
    # where settings are loaded, and by redis_connect.connect, and said as a ConfigError line.
    "shared.core.setting_values.Refused": "caught by load_settings and redis_connect.connect",
}


def _modules() -> Iterator[str]:
    """Every module of the product packages; ``__main__`` modules would start a service."""
    for package in (shared, services):
        yield package.__name__
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if info.name.rsplit(".", 1)[-1] != "__main__":
                yield info.name


def _exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in _modules():
        module = importlib.import_module(name)
        for _, member in inspect.getmembers(module, inspect.isclass):
            if issubclass(member, BaseException) and member.__module__ == name:
                found[f"{name}.{member.__qualname__}"] = member
    return found


EXCEPTIONS = _exceptions()


def test_the_walk_finds_the_tree_and_the_adapters() -> None:
    """Guards the walk itself: an empty or partial walk would pass every other test."""
    assert {
        "shared.core.errors.PipelineError",
        "shared.core.errors.BusUnavailable",
        "shared.core.errors.MalformedMessage",
        "shared.adapters.mati_answers.Retry",
    } <= set(EXCEPTIONS)


@pytest.mark.parametrize("name", sorted(set(EXCEPTIONS) - set(CONTROL_FLOW)))
def test_every_exception_is_a_pipeline_error_on_a_branch(name: str) -> None:
    cls = EXCEPTIONS[name]
    assert issubclass(cls, PipelineError), f"{name} is outside the error tree"
    if cls is not PipelineError and cls not in BRANCHES:
        assert issubclass(cls, BRANCHES), f"{name} says nothing about what its caller must do"


@pytest.mark.parametrize("name", sorted(CONTROL_FLOW))
def test_control_flow_exceptions_still_exist_and_stay_out_of_the_tree(name: str) -> None:
    """A stale entry would silently exempt whatever takes the name later."""
    assert name in EXCEPTIONS
    assert not issubclass(EXCEPTIONS[name], PipelineError)


def test_errors_are_defined_in_the_tree_module() -> None:
    """One place to read what every error means: adapters and services raise, never define."""
    outside = [
        name
        for name, cls in EXCEPTIONS.items()
        if issubclass(cls, PipelineError) and cls.__module__ != "shared.core.errors"
    ]
    assert outside == []


@pytest.mark.parametrize(
    ("name", "branch"),
    [
        ("BusUnavailable", TransientError),
        ("LockLost", TransientError),
        ("StateUnavailable", TransientError),
        ("NotReady", TransientError),
        ("MalformedMessage", PermanentError),
        ("BusRefused", FatalError),
        ("BusEntityMissing", FatalError),
        ("BusAccessDenied", FatalError),
        ("StateRefused", FatalError),
    ],
)
def test_moved_errors_keep_what_their_caller_does(name: str, branch: type[PipelineError]) -> None:
    assert issubclass(EXCEPTIONS[f"shared.core.errors.{name}"], branch)
