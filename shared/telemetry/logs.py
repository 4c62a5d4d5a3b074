"""Structured logs: one event a line, JSON in production, ``key=value`` in a terminal.

The events themselves (``get_logger``, ``bind``) are ``shared.core.events``'s, so that every
layer logs them; here they are rendered with their bound context and the current span's
``trace_id`` and ``span_id`` (shared.telemetry.tracing), so a line leads to its trace.

Secrets are kept out twice: nothing logs them on purpose, and a last filter masks the configured
secret values wherever they might still appear (an exception text from a third party, say).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson
from opentelemetry import trace

from shared.core import events
from shared.core.events import FIELDS, bound, fields_of
from shared.core.events import bind as bind
from shared.core.events import get_logger as get_logger
from shared.core.secrets import MASK, Secret


def _trace_ids() -> dict[str, object] | None:
    """``trace_id`` and ``span_id`` of the current span (shared.telemetry.tracing), None
    outside one; taken as each event is logged, since a handler may format it later."""
    span = trace.get_current_span().get_span_context()
    if not span.is_valid:
        return None
    return {
        "trace_id": trace.format_trace_id(span.trace_id),
        "span_id": trace.format_span_id(span.span_id),
    }


events.probe_with(_trace_ids)


def _event_fields(record: logging.LogRecord) -> dict[str, object]:
    fields: dict[str, object] = {
        "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname.lower(),
        "event": record.getMessage(),
        "logger": record.name,
    }
    fields.update(bound())
    fields.update(fields_of(record))
    # The span the line was logged in, so a line leads to its trace.
    ids = getattr(record, events.PROBED, None) or _trace_ids()
    if ids:
        fields.update(ids)
    if record.exc_info and record.exc_info[1] is not None:
        fields.update(error_fields(record.exc_info[1]))
    return fields


def leaves(error: BaseException) -> list[BaseException]:
    """The exceptions inside ``error``, groups opened: a task group's crash says only "1
    sub-exception", so the line names what was inside."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in leaves(inner)]
    return [error]


def error_fields(error: BaseException) -> dict[str, object]:
    """``error``, ``error_message`` and ``error_at`` (where it was raised: file and line, no
    traceback text, which could carry a value) of the first exception inside ``error``; a
    group also gives ``errors``, how many it held."""
    inner = leaves(error)
    first = inner[0]
    fields: dict[str, object] = {"error": type(first).__name__, "error_message": str(first)}
    frame = first.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    if frame is not None:
        path = frame.tb_frame.f_code.co_filename.replace("\\", "/").split("/")
        fields["error_at"] = f"{'/'.join(path[-3:])}:{frame.tb_lineno}"
    if len(inner) > 1:
        fields["errors"] = len(inner)
    return fields


def _text(value: object) -> str:
    if isinstance(value, Secret):
        return MASK
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object a line (what log shippers on AKS expect)."""

    def format(self, record: logging.LogRecord) -> str:
        return orjson.dumps(_event_fields(record), default=_text).decode()


class ConsoleFormatter(logging.Formatter):
    """``time level event key=value ...`` for people at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _event_fields(record)
        head = f"{fields.pop('timestamp')} {fields.pop('level')!s:<7} {fields.pop('event')}"
        fields.pop("logger")
        pairs = " ".join(f"{key}={_console_value(value)}" for key, value in fields.items())
        return f"{head} {pairs}" if pairs else head


def _console_value(value: object) -> str:
    text = _text(value)
    if not text or any(c.isspace() or c in '"=' for c in text):
        return orjson.dumps(text).decode()
    return text


class SecretFilter(logging.Filter):
    """Masks known secret values in the formatted line: the last line of defence."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # Short values would mask innocent text and say little about the secret; real
        # credentials are long.
        self._secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        text = record.getMessage()
        fields = getattr(record, FIELDS, None)
        if any(secret in text for secret in self._secrets):
            record.msg, record.args = _mask(text, self._secrets), ()
        if fields:
            setattr(record, FIELDS, {k: _mask_value(v, self._secrets) for k, v in fields.items()})
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            if any(secret in str(leaf) for leaf in leaves(error) for secret in self._secrets):
                record.exc_info = None
                extra = getattr(record, FIELDS, {})
                masked = {**error_fields(error), "error_message": MASK}
                setattr(record, FIELDS, {**extra, **masked})
        return True


def _mask(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def _mask_value(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        return _mask(value, secrets)
    return value


def configure(
    *, level: str = "INFO", fmt: str = "auto", secrets: Iterable[Secret | None] = ()
) -> None:
    """Route every log line to stdout in ``fmt`` (auto: console on a TTY, JSON otherwise)."""
    if fmt == "auto":
        fmt = "console" if sys.stdout.isatty() else "json"
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(ConsoleFormatter() if fmt == "console" else JsonFormatter())
    handler.addFilter(SecretFilter(s.reveal() for s in secrets if s))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Third-party libraries log request details at INFO (azure-core logs every header name
    # and URL); their warnings are what an operator needs.
    for noisy in ("azure", "urllib3", "msal", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
