"""How the KQL simulator reads a query's text: split at ``|`` (outside string literals), each
stage cut into tokens, and literals turned into values (``simulators.kql`` does the rest).

Every read either matches or raises ``KqlError``, which the Log Analytics simulator answers as
a 400 ``BadArgumentError``: text outside the subset is refused, never guessed at.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


class KqlError(Exception):
    """A query outside the supported subset, or one that refers to what does not exist."""

    def __init__(self, message: str, *, code: str = "SyntaxError"):
        super().__init__(message)
        self.code = code


def parse_instant(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def split_pipes(query: str) -> list[str]:
    stages, current, quote = [], [], ""
    escaped = False
    for char in query:
        if quote:
            current.append(char)
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
            current.append(char)
        elif char == "|":
            stages.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    if quote:
        raise KqlError("Unterminated string literal")
    stages.append("".join(current).strip())
    return stages


def row_time(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    return f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S.%f}Z"  # %Y does not pad years < 1000


_TOKEN_RE = re.compile(
    r"""\s*(?:
      (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
     |(?P<datetime>datetime\(\s*[^)]*\))
     |(?P<number>-?\d+(?:\.\d+)?)
     |(?P<op>==|!=|=~|>=|<=|!in(?=[\s(])|!startswith(?![A-Za-z0-9_])|[><=(),*.\[\]])
     |(?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Token:
    kind: str
    text: str


class Tokens:
    """A cursor over one stage's tokens; every read either matches or raises ``KqlError``."""

    def __init__(self, stage: str):
        self.items: list[Token] = []
        position = 0
        stage = stage.rstrip()
        while position < len(stage):
            match = _TOKEN_RE.match(stage, position)
            if match is None or match.end() == position:
                raise KqlError(f"Query could not be parsed at '{stage[position:].strip()}'")
            kind = match.lastgroup or ""
            self.items.append(Token(kind, match.group(kind)))
            position = match.end()
        self.position = 0

    def peek(self) -> Token | None:
        return self.items[self.position] if self.position < len(self.items) else None

    def take(self) -> Token:
        token = self.peek()
        if token is None:
            raise KqlError("Query ended unexpectedly")
        self.position += 1
        return token

    def ident(self) -> str:
        token = self.take()
        if token.kind != "ident":
            raise KqlError(f"Expected a name, found '{token.text}'")
        return token.text

    def keyword(self, word: str) -> None:
        token = self.take()
        if token.text != word:
            raise KqlError(f"Expected '{word}', found '{token.text}'")

    def accept(self, text: str) -> bool:
        token = self.peek()
        if token is not None and token.text == text:
            self.position += 1
            return True
        return False

    def end(self) -> None:
        token = self.peek()
        if token is not None:
            raise KqlError(f"Query could not be parsed at '{token.text}'")

    def names(self) -> Iterator[str]:
        yield self.ident()
        while self.accept(","):
            yield self.ident()


#: KQL's escapes in a quoted string literal; any other is refused rather than guessed.
_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t", "r": "\r"}
_ESCAPE_RE = re.compile(r"\\(.)", re.DOTALL)


def _unescape(match: re.Match[str]) -> str:
    char = match.group(1)
    if char not in _ESCAPES:
        raise KqlError(f"Unsupported escape sequence '\\{char}' in a string literal")
    return _ESCAPES[char]


def literal_value(token: Token) -> Any:
    if token.kind == "string":
        return _ESCAPE_RE.sub(_unescape, token.text[1:-1])
    if token.kind == "number":
        return float(token.text) if "." in token.text else int(token.text)
    if token.kind == "ident" and token.text in ("true", "false"):
        return token.text == "true"
    if token.kind == "datetime":
        inner = token.text[len("datetime(") : -1].strip()
        moment = parse_instant(inner.replace("Z", "+00:00"))
        if moment is None:
            raise KqlError(f"Invalid datetime literal '{token.text}'")
        return row_time(moment)
    raise KqlError(f"Expected a literal, found '{token.text}'")
