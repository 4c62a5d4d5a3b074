"""What an operator typed to name one indicator (``explain``, ``suppress``): a MATI id, or a
value whose type its shape tells."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from shared.core.indicator import IndicatorType

#: ``<type>--<uuid>``, the shape of every MATI indicator id.
MATI_ID: Final = re.compile(
    r"(ipv4|fqdn|url|md5)--[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I
)
_IPV4: Final = re.compile(r"\d{1,3}(\.\d{1,3}){3}")
_MD5: Final = re.compile(r"[0-9a-fA-F]{32}")
_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class Query:
    """What the operator typed, read as a MATI id or as a typed value."""

    text: str
    indicator_id: str | None = None
    indicator_type: IndicatorType | None = None
    value: str | None = None


def read_query(text: str) -> Query:
    """A MATI id (``<type>--<uuid>``), else a value typed by its shape: ipv4, md5 (32 hex),
    url (has a scheme), fqdn (anything else)."""
    text = text.strip()
    if not text:
        raise ValueError("give an indicator value or a MATI id")
    if MATI_ID.fullmatch(text):
        return Query(text, indicator_id=text.lower())
    if _IPV4.fullmatch(text):
        kind = IndicatorType.IPV4
    elif _MD5.fullmatch(text):
        kind = IndicatorType.MD5
    elif _SCHEME.match(text):
        kind = IndicatorType.URL
    else:
        kind = IndicatorType.FQDN
    return Query(text, indicator_type=kind, value=text)
