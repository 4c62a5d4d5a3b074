"""Destinations: the Sentinel workspaces one fetch feeds (DESIGN §6), each with its own
identity, filters, expirations, Sentinel API, endpoints and budget.

A destinations file (``DESTINATIONS_FILE``, YAML) maps each destination's name to settings
under their environment names. A destination's settings are the process's environment with
its keys laid over it, then checked by ``load_settings`` like any environment, so a value means
the same in the file as in a variable and anything the file leaves out falls back to the
environment, then to the default. Without a file the environment describes one destination,
named by ``DESTINATION``, as before.

Only what can differ between workspaces may be set per destination: MATI, Redis, the bus and
the process's own knobs are one for the whole deployment, and a file that sets them is refused
rather than half-applied. A secret is only ever a reference (``{env: NAME}``): the file is a
ConfigMap, readable by whoever can read the namespace, and a secret written into it would be
in clear in the cluster and in every copy of the values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from shared.core.errors import ConfigError
from shared.core.settings import EXPIRATIONS, SWITCHES, Service, Settings, load_settings

#: A destination's name becomes part of Kubernetes object names (``<release>-filter-<name>``),
#: queue names and Redis keys: a DNS label, short enough to leave room for the rest.
NAME: Final = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,22}[a-z0-9])?$")
NAME_HELP: Final = (
    "lower-case letters, digits and '-', at most 24, starting and ending with a letter or digit"
)

#: The settings a destination may set: its identity and workspace, filters, expirations,
#: action labels, Sentinel API and endpoints, rate limit and source system.
PER_DESTINATION: Final = frozenset(
    {
        "AZURE_WORKSPACE_ID",
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_ID",
        "AZURE_CLIENT_SECRET",
        "AZURE_FEDERATED_TOKEN_FILE",
        "AZURE_AUTHORITY_HOST",
        "AZURE_WORKSPACE_NAME",
        "AZURE_SUBSCRIPTION_ID",
        "AZURE_RESOURCE_GROUP_NAME",
        *EXPIRATIONS,
        *SWITCHES,
        "MINIMUM_CONFIDENCE",
        "MINIMUM_THREAT_SCORE",
        "DEFAULT_ACTION",
        "HASH_TYPE",
        "EXCLUDE_WARNINGLISTS",
        "VALIDITY_REFRESH_RATIO",
        "SENTINEL_API",
        "SENTINEL_BASE_URL",
        "SENTINEL_REQUESTS_PER_MINUTE",
        "SENTINEL_SOURCE_SYSTEM",
        "SENTINEL_RATE_WINDOW_SECONDS",
        "LOG_ANALYTICS_BASE_URL",
        "CACHE_REBUILD",
        "RECONCILE_GRACE_MINUTES",
    }
)
#: Given only by reference, never as a literal in the file.
SECRETS: Final = frozenset({"AZURE_CLIENT_SECRET"})

_FILE: Final = "DESTINATIONS_FILE"


def overlays(
    document: object,
    environ: Mapping[str, str],
    unresolved: dict[str, dict[str, str]] | None = None,
) -> dict[str, dict[str, str]]:
    """Each destination's settings as environment text, references resolved from ``environ``;
    ``ConfigError`` with one line per problem, each naming its destination and key.

    A reference to a variable this process does not have is left out of the overlay and
    noted in ``unresolved`` (name -> key -> variable), not refused here: a pod holds only its
    own destination's secret, and the fetcher none, so only the process that loads that
    destination and needs that value may call it missing (``load_destinations``)."""
    if not isinstance(document, Mapping) or set(document) != {"destinations"}:
        raise ConfigError([f"{_FILE}: the file must hold one key, destinations: a map of names"])
    declared = document["destinations"]
    if not isinstance(declared, Mapping) or not declared:
        raise ConfigError([f"{_FILE}: destinations must map at least one name to its settings"])
    problems: list[str] = []
    result: dict[str, dict[str, str]] = {}
    for name, keys in declared.items():
        if not isinstance(name, str) or NAME.match(name) is None:
            problems.append(f"{_FILE}: destination name {name!r} is not valid: {NAME_HELP}")
            continue
        if keys is None:
            keys = {}
        if not isinstance(keys, Mapping):
            problems.append(f"{_FILE}: {name}: its settings must be a map of NAME: value")
            continue
        overlay: dict[str, str] = {}
        for key, value in keys.items():
            problem = _problem(key, value)
            if problem is None:
                text, problem = _text(key, value, environ)
                if text is not None:
                    overlay[key] = text
                elif problem is None and unresolved is not None:
                    unresolved.setdefault(name, {})[key] = _variable(value)
            if problem is not None:
                problems.append(f"{_FILE}: {name}: {problem}")
        result[name] = overlay
    if problems:
        raise ConfigError(problems)
    return result


def _problem(key: object, value: object) -> str | None:
    if not isinstance(key, str):
        return f"{key!r} is not a setting name"
    if key not in PER_DESTINATION:
        if key.upper() in PER_DESTINATION:
            return f"{key} is not a setting: names are upper case ({key.upper()})"
        return (
            f"{key} is not a per-destination setting: it is one for the whole deployment, "
            "set in the environment"
        )
    if key in SECRETS and not _is_reference(value):
        return (
            f"{key} is a secret and is given only by reference, "
            f"{{env: NAME_OF_A_VARIABLE}}: the file is not a secret store"
        )
    return None


def _is_reference(value: object) -> bool:
    return isinstance(value, Mapping) and set(value) == {"env"}


def _text(key: str, value: object, environ: Mapping[str, str]) -> tuple[str | None, str | None]:
    """The environment text of one value, or the problem with it (never echoing a secret)."""
    if _is_reference(value):
        assert isinstance(value, Mapping)
        variable = value["env"]
        if not isinstance(variable, str) or not variable:
            return None, f"{key}: env must name a variable"
        if not environ.get(variable, "").strip():
            return None, None
        return environ[variable], None
    if isinstance(value, bool):
        return ("TRUE" if value else "FALSE"), None
    if isinstance(value, int | float | str):
        return str(value), None
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return ",".join(value), None
    return None, f"{key} has no usable value: give text, a number, true/false or a list"


def _variable(reference: object) -> str:
    assert isinstance(reference, Mapping)
    return str(reference["env"])


def load_destinations(
    environ: Mapping[str, str], document: object, service: Service, only: str | None = None
) -> dict[str, Settings]:
    """Every destination's settings (or ``only`` the one named), as ``service`` needs them.
    All problems come out in one ``ConfigError``, each line naming its destination. A file
    whose shape is wrong fails every destination; a bad value fails only its own, so one
    customer's typo never stops another's pods."""
    unresolved: dict[str, dict[str, str]] = {}
    declared = overlays(document, environ, unresolved)
    if only is not None:
        if only not in declared:
            raise ConfigError(
                [f"destination {only!r} is not in {_FILE}: it declares {', '.join(declared)}"]
            )
        declared = {only: declared[only]}
    problems: list[str] = []
    loaded: dict[str, Settings] = {}
    secrets_needed = service in (Service.UPLOADER, Service.ALL)
    for name, overlay in declared.items():
        missing = [
            f"{_FILE}: {name}: {key} refers to {variable}, which is not set"
            for key, variable in unresolved.get(name, {}).items()
            if secrets_needed or key not in SECRETS
        ]
        if missing:
            problems += missing
            continue
        try:
            loaded[name] = load_settings({**environ, **overlay, "DESTINATION": name}, service)
        except ConfigError as exc:
            problems += [f"destination {name}: {line}" for line in exc.problems]
    if problems:
        raise ConfigError(problems)
    return loaded


def one_destination(
    environ: Mapping[str, str], document: object, service: Service, name: str | None
) -> Settings:
    """The one destination a filter or an uploader serves: each has its own queue and budget,
    so a process never guesses which."""
    if name is None:
        declared = overlays(document, environ)
        raise ConfigError(
            [
                f"{_FILE} declares {', '.join(declared)}: choose the destination this "
                "process serves with --destination NAME or DESTINATION"
            ]
        )
    return load_destinations(environ, document, service, only=name)[name]
