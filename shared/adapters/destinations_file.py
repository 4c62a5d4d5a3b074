"""Reading ``DESTINATIONS_FILE``: the YAML document ``shared.core.destinations`` checks.

A file that cannot be read or parsed is one ``ConfigError`` line naming the file and, for a
syntax error, the line and column, like every other bad setting. A name given twice is refused
rather than letting the later one silently replace the first: in a file of a hundred customers,
a pasted block that reuses a name would otherwise send one customer's indicators with another's
identity and filters.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import yaml

from shared.core.errors import ConfigError

VARIABLE: Final = "DESTINATIONS_FILE"


class _UniqueKeys(yaml.SafeLoader):
    """Safe YAML (no tags that build objects) that refuses a key given twice in one map."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read(environ: Mapping[str, str]) -> object | None:
    """The parsed file ``DESTINATIONS_FILE`` names, or ``None`` when it is not set."""
    named = environ.get(VARIABLE, "").strip()
    if not named:
        return None
    path = Path(named)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{VARIABLE}={named!r} cannot be read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{VARIABLE}={named!r} is not UTF-8 text"]) from None
    try:
        document: object = yaml.load(text, Loader=_UniqueKeys)  # noqa: S506 (a SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            [f"{VARIABLE}={named!r} is not valid YAML{where}: {exc.problem or exc.context}"]
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{VARIABLE}={named!r} is not valid YAML: {exc}"]) from None
    return document
