"""Checks of the arguments code passes to a constructor or a call: a bad one is a programming
error, a ``ValueError`` that names the argument and the value, worded the same everywhere.

Not for settings: a user's bad setting is a ``ConfigError`` with one line per problem
(``shared.core.settings``), found before any of these constructors runs.
"""

from __future__ import annotations


def at_least(name: str, value: float, minimum: float) -> None:
    """``value ≥ minimum`` (NaN fails)."""
    if not value >= minimum:
        raise ValueError(f"{name} must be ≥ {minimum}, got {value}")


def above(name: str, value: float, bound: float) -> None:
    """``value > bound`` (NaN fails)."""
    if not value > bound:
        raise ValueError(f"{name} must be > {bound}, got {value}")


def named(name: str, value: str) -> None:
    """A name that must not be empty (a consumer, a destination)."""
    if not value:
        raise ValueError(f"{name} must not be empty")
