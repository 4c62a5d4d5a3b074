"""The per-record checks of both upload APIs (specs/sentinel-and-entra.md §1.3, §2.2), worded
as Sentinel words them: ``Error for Property=<name>: <problem>. Actual value: <value>.``

Every uploaded object goes through ``validate_object``; a fast path accepts the plainly valid
ones in one pass, and only a doubtful one is examined again, field by field, for the messages.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final, TypeGuard

import orjson

#: Top-level properties with this prefix are refused per record: custom data belongs in
#: ``extensions`` (accepted, not indexed, §2.2). Where Sentinel's documentation is silent on
#: top-level custom properties, the simulator is strict, so a product regression fails a test.
CUSTOM_PREFIX: Final = "x_"

_ID_RE = re.compile(
    r"^([a-z0-9][a-z0-9-]*[a-z0-9])--"
    r"([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$"
)
_TIMESTAMP_RE = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?Z$")


def property_error(prop: str, problem: str, value: Any) -> str:
    if value is None:
        shown = "NULL"
    elif isinstance(value, str):
        shown = value
    else:
        shown = orjson.dumps(value).decode()
    if len(shown) > 200:
        shown = shown[:200] + "..."
    return f"Error for Property={prop}: {problem}. Actual value: {shown}."


def _missing(prop: str) -> str:
    return property_error(prop, "Required property is missing", None)


def validate_batch(objects: list[Any], *, legacy: bool) -> dict[int, list[str]]:
    errors: dict[int, list[str]] = {}
    for index, obj in enumerate(objects):
        messages = validate_object(obj, legacy=legacy)
        if messages:
            errors[index] = messages
    return errors


def validate_object(obj: Any, *, legacy: bool) -> list[str]:
    """The per-record checks of §1.3/§2.2; an empty list means the object is accepted."""
    if _plainly_valid(obj, legacy=legacy):
        return []
    return _problems(obj, legacy=legacy)


def _plainly_valid(obj: Any, *, legacy: bool) -> bool:
    """True only for an object ``_problems`` accepts, checked in one pass (every uploaded
    object goes through here; ``_problems`` then runs only for the rare doubtful one, and
    words the messages). False may be wrong, True never is: a test holds the two together.
    """
    if type(obj) is not dict:
        return False
    get = obj.get
    obj_type, stix_id = get("type"), get("id")
    if type(obj_type) is not str or type(stix_id) is not str or not obj_type:
        return False
    if legacy and obj_type != "indicator":
        return False
    match = _ID_RE.match(stix_id)
    if match is None or match.group(1) != obj_type:
        return False
    spec_version = get("spec_version", "2.1")
    if spec_version != "2.1" and spec_version != "2.0":
        return False
    created, modified = parse_timestamp(get("created")), parse_timestamp(get("modified"))
    if created is None or modified is None or modified < created:
        return False
    if obj_type == "indicator" and not _plainly_valid_indicator(obj, spec_version):
        return False
    return _plainly_valid_optional(obj)


def _plainly_valid_indicator(obj: dict[str, Any], spec_version: str) -> bool:
    get = obj.get
    pattern, pattern_type = get("pattern"), get("pattern_type")
    if type(pattern) is not str or not pattern:
        return False
    if pattern_type:
        if type(pattern_type) is not str:
            return False
    elif spec_version != "2.0":
        return False
    valid_from = parse_timestamp(get("valid_from"))
    if valid_from is None:
        return False
    raw_until = get("valid_until")
    if raw_until:
        valid_until = parse_timestamp(raw_until)
        if valid_until is None or valid_until <= valid_from:
            return False
    return True


def _plainly_valid_optional(obj: dict[str, Any]) -> bool:
    for key in obj:
        if key.startswith(CUSTOM_PREFIX):
            return False
    if "extensions" in obj and not _plain_extensions(obj["extensions"]):
        return False
    if "confidence" in obj:
        confidence = obj["confidence"]
        if type(confidence) is not int or not 0 <= confidence <= 100:
            return False
    if "revoked" in obj and type(obj["revoked"]) is not bool:
        return False
    labels = obj.get("labels")
    if labels is None:
        return True
    return type(labels) is list and all(type(label) is str for label in labels)


def _plain_extensions(extensions: Any) -> bool:
    """STIX 2.1 ``extensions``: an object of extension objects, keyed by an extension
    definition's id (``extension-definition--<UUID>``) or a predefined ``*-ext`` name."""
    if type(extensions) is not dict or not extensions:
        return False
    for name, extension in extensions.items():
        if type(extension) is not dict or not extension:
            return False
        if name.startswith("extension-definition--"):
            match = _ID_RE.match(name)
            if match is None or match.group(1) != "extension-definition":
                return False
        elif not name.endswith("-ext"):
            return False
    return True


def _problems(obj: Any, *, legacy: bool) -> list[str]:
    """Every problem of ``obj``, worded as Sentinel words them."""
    if not isinstance(obj, dict):
        return [property_error("root", "The STIX object must be a JSON object", obj)]
    messages = [
        _missing(name) for name in ("id", "type", "created", "modified") if not obj.get(name)
    ]
    obj_type = obj.get("type")
    if obj_type and not isinstance(obj_type, str):
        messages.append(property_error("type", "The value must be a string", obj_type))
    elif legacy and obj_type and obj_type != "indicator":
        messages.append(
            property_error("type", "Only objects of type 'indicator' are supported", obj_type)
        )
    stix_id = obj.get("id")
    if stix_id:
        match = _ID_RE.match(stix_id) if isinstance(stix_id, str) else None
        if match is None or (isinstance(obj_type, str) and match.group(1) != obj_type):
            messages.append(
                property_error("id", "The identifier must be of the form '<type>--<UUID>'", stix_id)
            )
    spec_version = obj.get("spec_version", "2.1")
    if spec_version not in ("2.0", "2.1"):
        messages.append(property_error("spec_version", "Unsupported STIX version", spec_version))
    created = _checked_timestamp(obj, "created", messages)
    modified = _checked_timestamp(obj, "modified", messages)
    if created and modified and modified < created:
        messages.append(
            property_error("modified", "modified must not be earlier than created", modified)
        )
    if obj_type == "indicator":
        messages.extend(_indicator_problems(obj, spec_version))
    messages.extend(_common_optional_problems(obj))
    return messages


def _checked_timestamp(obj: Mapping[str, Any], name: str, messages: list[str]) -> datetime | None:
    """``obj[name]`` parsed (None when absent or invalid), noting an invalid one in ``messages``:
    each timestamp is parsed once per object."""
    raw = obj.get(name)
    if not raw:
        return None
    parsed = parse_timestamp(raw)
    if parsed is None:
        messages.append(
            property_error(name, "The value is not a valid RFC 3339 UTC timestamp", raw)
        )
    return parsed


def _indicator_problems(obj: Mapping[str, Any], spec_version: Any) -> list[str]:
    messages: list[str] = []
    # STIX 2.0 indicators have no pattern_type (the swagger example uploads such objects).
    required = (
        ("pattern", "valid_from")
        if spec_version == "2.0"
        else (
            "pattern",
            "pattern_type",
            "valid_from",
        )
    )
    messages.extend(_missing(name) for name in required if not obj.get(name))
    for name in ("pattern", "pattern_type"):
        if obj.get(name) and not isinstance(obj[name], str):
            messages.append(property_error(name, "The value must be a string", obj[name]))
    valid_from = _checked_timestamp(obj, "valid_from", messages)
    valid_until = _checked_timestamp(obj, "valid_until", messages)
    if valid_from and valid_until and valid_until <= valid_from:
        messages.append(
            property_error(
                "valid_until", "valid_until must be later than valid_from", obj["valid_until"]
            )
        )
    return messages


def _common_optional_problems(obj: Mapping[str, Any]) -> list[str]:
    messages = [
        property_error(key, "Custom properties are not supported at the top level", obj[key])
        for key in obj
        if key.startswith(CUSTOM_PREFIX)
    ]
    if "extensions" in obj and not _plain_extensions(obj["extensions"]):
        messages.append(
            property_error(
                "extensions",
                "The value must map extension ids to non-empty extension objects",
                obj["extensions"],
            )
        )
    if "confidence" in obj:
        confidence = obj["confidence"]
        if (
            not isinstance(confidence, int)
            or isinstance(confidence, bool)
            or not 0 <= confidence <= 100
        ):
            messages.append(
                property_error(
                    "confidence", "The value must be an integer from 0 to 100", confidence
                )
            )
    if "revoked" in obj and not isinstance(obj["revoked"], bool):
        messages.append(property_error("revoked", "The value must be a boolean", obj["revoked"]))
    labels = obj.get("labels")
    if labels is not None and (
        not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)
    ):
        messages.append(property_error("labels", "The value must be an array of strings", labels))
    return messages


#: Longer than any string ``_TIMESTAMP_RE`` matches (30 characters, and ``$`` allows a "\n").
TIMESTAMP_MAX = 31


def timestamp_text(value: Any) -> TypeGuard[str]:
    """A value worth parsing as a timestamp: a longer string cannot match, and keeping it out
    keeps garbage out of the parse caches, which key on the text."""
    return isinstance(value, str) and len(value) <= TIMESTAMP_MAX


def parse_timestamp(value: Any) -> datetime | None:
    return parse_timestamp_text(value) if timestamp_text(value) else None


# Every object carries four timestamps, and a batch's ``modified``/``valid_from``/``valid_until``
# are mostly the same few strings: remembering recent answers saves most of the parsing.
@functools.lru_cache(maxsize=4096)
def parse_timestamp_text(value: str) -> datetime | None:
    match = _TIMESTAMP_RE.match(value)
    if match is None:
        return None
    fraction = (match.group(2) or "").ljust(6, "0")[:6]
    try:
        return datetime.fromisoformat(f"{match.group(1)}.{fraction}+00:00")
    except ValueError:
        return None
