"""How one setting's text becomes a value: the parsers ``load_settings`` applies, and the
``Reader`` that keeps one line per problem instead of raising at the first.

A value that fails to parse is echoed back masked (a URL's password), never a secret's: secrets
have no format to check, so they never pass through a parser.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl, urlsplit

from shared.core.filters import ALL_WARNINGLISTS
from shared.core.secrets import MASK, Secret
from shared.core.stix import check_source_system

T = TypeVar("T")
E = TypeVar("E", bound=StrEnum)

TRUE: Final = frozenset({"true", "1", "yes", "on"})
FALSE: Final = frozenset({"false", "0", "no", "off"})
GUID: Final = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
DNS_NAME: Final = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,63}$")
DESTINATION_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")

#: Query parameters redis-py reads as a password: masked wherever a URL is printed.
_QUERY_SECRETS: Final = frozenset({"password", "ssl_password"})
_QUERY_SECRET: Final = re.compile(r"(?i)([?&](?:ssl_)?password=)[^&#]*")


class Refused(ValueError):
    """A value that parses but is refused; its message says why and is printed as is, so it
    must never hold the value (the value is echoed back masked, beside it)."""


def refused_line(name: str, text: str, refused: Refused) -> str:
    """The one line an operator reads about a refused value: the variable, the value masked,
    and why."""
    return f"{name}={mask_url_password(text)!r} is refused: {refused}"


def mask_url_password(url: str) -> str:
    """``redis://user:********@host/0``: a URL may carry a password, and a URL gets printed.
    A password in the query string (``?password=``, which redis-py also reads) is masked too."""
    url = _QUERY_SECRET.sub(rf"\g<1>{MASK}", url)
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:{MASK}@{host}"


def url_password(url: str) -> str | None:
    """The password inside ``url``, so logging can mask it wherever it turns up."""
    _, sep, rest = url.partition("://")
    userinfo, at, _ = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return None
    return userinfo.split(":", 1)[1] or None


def printable(value: object) -> str:
    if isinstance(value, str) and "://" in value:
        return mask_url_password(value)
    if isinstance(value, Secret):
        return MASK if value else "(empty)"
    if value is None:
        return "(not set)"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, frozenset):
        return ",".join(sorted(value)) or "(none)"
    return str(value)


class Reader:
    """Reads one variable at a time and keeps the problems instead of raising."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[str] = []
        self.invalid: set[str] = set()
        self.values: dict[str, Any] = {}

    def raw(self, name: str) -> str | None:
        value = self.environ.get(name)
        if value is None:
            return None
        value = value.strip()
        return value or None

    def read(self, name: str, parse: Callable[[str], T], allowed: str) -> None:
        # Secrets never come through here: they have no format to check, and a value
        # echoed back in an error line is a value in a log.
        text = self.raw(name)
        if text is None:
            return
        try:
            self.values[name.lower()] = parse(text)
        except Refused as refused:
            self.problems.append(refused_line(name, text, refused))
            self.invalid.add(name)
        except ValueError:
            self.problems.append(f"{name}={mask_url_password(text)!r} is not valid: {allowed}")
            self.invalid.add(name)

    def secret(self, name: str) -> None:
        text = self.raw(name)
        if text is not None:
            self.values[name.lower()] = Secret(text)


def boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered in TRUE:
        return True
    if lowered in FALSE:
        return False
    raise ValueError(text)


def int_range(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise ValueError(text)
        return value

    return parse


def float_range(low: float, high: float, *, low_open: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text)
        if value != value or value > high or value < low or (low_open and value == low):
            raise ValueError(text)
        return value

    return parse


def choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        lowered = text.lower()
        if lowered not in options:
            raise ValueError(text)
        return lowered

    return parse


def member(enum: type[E]) -> Callable[[str], E]:
    def parse(text: str) -> E:
        return enum(text.lower())  # an unknown value raises ValueError

    return parse


def pattern(regex: re.Pattern[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not regex.match(text):
            raise ValueError(text)
        return text

    return parse


def tenant(text: str) -> str:
    if GUID.match(text) or DNS_NAME.match(text):
        return text
    raise ValueError(text)


def https_url(text: str) -> str:
    url = text.rstrip("/")
    if not url.startswith("https://") or len(url) <= len("https://") or " " in url:
        raise ValueError(text)
    return url


def authority(text: str) -> str:
    # azure-identity accepts a bare host and prepends https; so do we, but never plain http.
    return https_url(text if "://" in text else f"https://{text}")


def redis_url(text: str) -> str:
    """A ``redis://``, ``rediss://`` or ``unix://`` URL whose query string neither weakens TLS
    nor hides a password (``Refused`` says which parameter and why).

    redis-py hands every query parameter to its connection as a keyword, so
    ``?ssl_cert_reqs=none`` would turn certificate checks off; verification is not a setting
    anywhere in the product. CA files (``ssl_ca_certs``) only add trust and stay allowed.
    """
    if not text.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(text)
    for name, value in parse_qsl(urlsplit(text).query, keep_blank_values=True):
        problem = _redis_query_problem(name.lower(), value.strip().lower())
        if problem is not None:
            raise Refused(problem)
    return text


#: ``ssl_min_version`` as redis-py reads it: an ``ssl.TLSVersion`` number; 771 is TLS 1.2.
_TLS_1_2: Final = 771


def _redis_query_problem(name: str, value: str) -> str | None:
    weakening = "TLS verification is always on and is not a setting"
    if name == "ssl_cert_reqs" and value != "required":
        return f"ssl_cert_reqs={value} would not verify Redis's certificate: {weakening}"
    if name == "ssl_check_hostname" and value not in TRUE:
        return f"ssl_check_hostname={value} would accept any host's certificate: {weakening}"
    if name in {"ssl_include_verify_flags", "ssl_exclude_verify_flags", "ssl_ciphers"}:
        return f"{name} would change how Redis's certificate is checked: {weakening}"
    if name == "ssl_min_version" and not (value.isdigit() and int(value) >= _TLS_1_2):
        return f"ssl_min_version={value} is below TLS 1.2 ({_TLS_1_2}): {weakening}"
    if name in _QUERY_SECRETS:
        return f"{name} in the query string: put the password in the URL (rediss://user:pw@host)"
    return None


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ``::1`` (bracketed or not): this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def emulator_host(connection_string: str) -> str | None:
    """The endpoint's host name when a Service Bus connection string turns the SDK's
    development-emulator mode on (plain AMQP, no TLS), else None. Keys are read in any case,
    as the SDK reads them; the value in any case too, which is stricter than the SDK."""
    fields: dict[str, str] = {}
    for part in connection_string.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            fields[key.strip().lower()] = value.strip()
    if fields.get("usedevelopmentemulator", "").lower() != "true":
        return None
    endpoint = fields.get("endpoint") or fields.get("hostname") or ""
    try:
        return urlsplit(endpoint if "://" in endpoint else f"sb://{endpoint}").hostname or ""
    except ValueError:
        return ""


def servicebus_namespace(text: str) -> str:
    host = text.removeprefix("sb://").rstrip("/")
    if not DNS_NAME.match(host):
        raise ValueError(text)
    return host


def existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise ValueError(text)
    return path


def source_system_name(text: str) -> str:
    if check_source_system(text) is not None:
        raise ValueError(text)
    return text


#: A MISP warning-list name as MATI keys them: ``alexa_1M``, ``eicar.com``, ``public-dns-v4``.
_WARNING_LIST: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def warning_lists(text: str) -> frozenset[str]:
    """Comma-separated names, in any case (blanks around them ignored); ``all`` anywhere means
    every list."""
    names = {name.strip().lower() for name in text.split(",")} - {""}
    if any(_WARNING_LIST.fullmatch(name) is None for name in names):
        raise ValueError(text)
    return frozenset({ALL_WARNINGLISTS}) if ALL_WARNINGLISTS in names else frozenset(names)


def log_level(text: str) -> str:
    level = text.upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError(text)
    return level
