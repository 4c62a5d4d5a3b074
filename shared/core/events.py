"""Events to log, for every layer: ``log.info("fetch.page", records=1000)``.

Events are namespaced snake case (``fetch.page``, ``upload.rejected``) with their data in
fields, never interpolated into the text, so a log pipeline can count and filter them. Context
that belongs to a unit of work (destination, run id) is bound once with ``bind()`` and rides on
every line logged inside it.

This module only puts an event and its fields on a standard ``logging`` record; rendering it
(JSON or ``key=value``, with the current span's ids and the bound context) and masking secrets
is ``shared.telemetry.logs``'s, configured by the composition root. So the core and the
adapters log events like the services do without importing telemetry.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Final

# Immutable default: bind() always builds a new mapping, never mutates the current one.
_context: contextvars.ContextVar[Mapping[str, object]] = contextvars.ContextVar(
    "mati2sentinel_log_context", default=MappingProxyType({})
)
#: The record attributes an event's fields, and what the probe saw, ride on.
FIELDS: Final = "m2s_fields"
PROBED: Final = "m2s_probed"
#: Called as each event is logged (telemetry installs one that reads the current span's ids),
#: so a handler that formats the line later, outside the span, still names it.
_probe: Callable[[], Mapping[str, object] | None] | None = None


def probe_with(probe: Callable[[], Mapping[str, object] | None] | None) -> None:
    """What every event also records when it is logged; None for nothing."""
    global _probe
    _probe = probe


class Log:
    """A logger that takes an event name and fields."""

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)

    def debug(self, event: str, **fields: object) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: object) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, **fields: object) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, **fields: object) -> None:
        self._log(logging.ERROR, event, fields)

    def exception(self, event: str, **fields: object) -> None:
        self._log(logging.ERROR, event, fields, exc_info=True)

    def _log(
        self, level: int, event: str, fields: dict[str, object], exc_info: bool = False
    ) -> None:
        if self._logger.isEnabledFor(level):
            extra: dict[str, object] = {FIELDS: fields}
            probed = _probe() if _probe is not None else None
            if probed:
                extra[PROBED] = probed
            self._logger.log(level, event, extra=extra, exc_info=exc_info)


def get_logger(name: str) -> Log:
    return Log(name)


@contextmanager
def bind(**fields: object) -> Iterator[None]:
    """Add ``fields`` to every line logged inside the block (and in tasks it starts)."""
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def bound() -> Mapping[str, object]:
    """The fields ``bind`` holds here and now."""
    return _context.get()


def fields_of(record: logging.LogRecord) -> Mapping[str, object]:
    """The event fields a record carries (none for a third party's line)."""
    fields: Mapping[str, object] = getattr(record, FIELDS, {})
    return fields
