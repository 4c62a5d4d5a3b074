"""Which settings a process runs with: the environment's, and with ``DESTINATIONS_FILE`` the
destinations it serves (DESIGN §6).

- A filter or an uploader serves one destination, named by ``--destination`` or
  ``DESTINATION``; with a file, its settings are that destination's block over the environment.
- The fetcher serves them all: its own settings are the environment's (MATI, Redis, the bus),
  and it reads every destination's filters, to fetch what any of them may need.
- Operator commands and ``check-config`` go through every destination, or the one named.

Without a file, the environment is the one destination, as before.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Final

from shared.adapters import destinations_file
from shared.core.destinations import load_destinations, one_destination
from shared.core.errors import ConfigError
from shared.core.settings import Service, Settings, load_settings

#: With a file, what each destination must have, by the process that reads it: the fetcher
#: needs only their filters; whoever uploads (``ALL``: ``check-config``) their identities.
_PER_DESTINATION: Final = {
    Service.FETCHER: Service.FILTER,
    Service.ADMIN: Service.ADMIN,
    Service.ALL: Service.UPLOADER,
}
#: With a file, what the process's own settings must have: identities live in the file, and
#: what goes through several destinations (an operator command) is no uploader itself.
_PROCESS: Final = {
    Service.FETCHER: Service.FETCHER,
    Service.FILTER: Service.ADMIN,
    Service.UPLOADER: Service.ADMIN,
    Service.ADMIN: Service.ADMIN,
    Service.ALL: Service.FETCHER,
}


def settings_from(
    environ: Mapping[str, str],
    service: Service,
    destination: str | None = None,
    *,
    each: Service | None = None,
) -> tuple[Settings, dict[str, Settings]]:
    """The process's settings and the destinations it serves, by name; ``ConfigError`` with
    one line per problem. ``destination`` (``--destination``) overrides ``DESTINATION``.

    ``each``: an operator command going through the destinations, each needing what ``each``
    needs (``reconcile`` reads every workspace with its uploader's identity); without it a
    filter or an uploader serves exactly one destination."""
    if destination is not None:
        environ = {**environ, "DESTINATION": destination}
    document = destinations_file.read(environ)
    if document is None:
        settings = load_settings(environ, service)
        return settings, {settings.destination: settings}
    named = environ.get("DESTINATION", "").strip() or None
    if each is None and service in (Service.FILTER, Service.UPLOADER):
        chosen = one_destination(environ, document, service, named)
        return chosen, {chosen.destination: chosen}
    process = load_settings(environ, _PROCESS[service])
    # The fetcher feeds every destination, whatever DESTINATION its environment carries.
    only = None if service is Service.FETCHER and each is None else named
    each = each or _PER_DESTINATION[service]
    return process, load_destinations(environ, document, each, only=only)


def load(
    service: Service, destination: str | None = None, *, each: Service | None = None
) -> tuple[Settings, dict[str, Settings]]:
    """``settings_from`` the process's environment, or exit 2 with one line per problem,
    before anything connects."""
    try:
        settings, destinations = settings_from(os.environ, service, destination, each=each)
    except ConfigError as exc:
        print("mati2sentinel: invalid settings:", file=sys.stderr)
        for line in exc.problems:
            print(f"  {line}", file=sys.stderr)
        raise SystemExit(2) from None
    for line in settings.warnings:
        print(f"mati2sentinel: warning: {line}", file=sys.stderr)
    return settings, destinations
