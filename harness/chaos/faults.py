"""The chaos run's wiring into the simulators: random faults on MATI, Entra ID and Sentinel,
the gates the phases are seen through, the upload ledger fed from what Sentinel stores, and
the simulators' request records kept small.

Faults hit a share of every API request of the three (never the simulators' control routes,
never Log Analytics, which only the cache rebuild reads); each simulator draws from its own
generator, seeded from the run's seed. A body that stalls after Sentinel stored the upload is
a disruption of that request in the ledger: the client will send it again.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web

from harness.chaos.ledger import Disruption, DisruptionKind, Ledger, Upload
from harness.pipeline import mati_properties
from simulators.faults import RecordedRequest
from simulators.gates import SERIAL, Gates
from simulators.random_faults import Fired, RandomFaults, RandomKind
from simulators.sentinel import STIX_ROUTE
from simulators.together import Simulators

#: The simulators faults are injected into, by the name the report uses.
FAULTED = ("mati", "entra", "sentinel")


class _BodilessRequests(list[RecordedRequest]):
    """A simulator's request record without bodies and headers: a back-fill's uploads would
    otherwise keep every request body (about 100 KB each) for the whole run."""

    def append(self, request: RecordedRequest) -> None:
        super().append(replace(request, body=b"", headers={}))


@dataclass
class Injection:
    gates: dict[str, Gates]
    faults: dict[str, RandomFaults]
    #: When the last fault was answered (``time.monotonic()``), None before the first.
    last_fault_at: float | None = None
    by_route: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: Other sources of faults to silence with the simulators' (the fake Service Bus).
    quieted: list[Callable[[], None]] = field(default_factory=list)

    def fired(self) -> dict[str, dict[str, int]]:
        """Faults answered so far: simulator -> kind -> count."""
        return {
            name: {kind.value: n for kind, n in sorted(faults.fired.items())}
            for name, faults in self.faults.items()
        }

    def quiet(self) -> None:
        """No more faults from now on."""
        for faults in self.faults.values():
            faults.rate = 0.0
        for quiet in self.quieted:
            quiet()


def install(sims: Simulators, *, seed: int, rate: float, ledger: Ledger) -> Injection:
    """Faults, gates and the ledger's feed on ``sims``; call before they start."""
    servers: dict[str, Any] = {"mati": sims.mati, "entra": sims.entra, "sentinel": sims.sentinel}
    injection = Injection(gates={}, faults={})
    sentinel_gates = Gates()

    def heard(request: web.Request, fired: Fired) -> None:
        injection.last_fault_at = fired.at
        injection.by_route[(fired.simulator, fired.route)] += 1
        lost = fired.kind is RandomKind.STALL and fired.after_handler
        if lost and fired.simulator == "sentinel" and fired.route == STIX_ROUTE:
            serial = request.get(SERIAL)
            ledger.disrupt(
                Disruption(DisruptionKind.ANSWER_LOST, fired.at, fired.at, serial=serial)
            )

    for name, server in servers.items():
        gates = sentinel_gates if name == "sentinel" else Gates()
        gates.install(server.app)
        injection.gates[name] = gates
        rng = random.Random(f"{seed}:{name}")  # noqa: S311 - reproducible faults, not secrets
        faults = RandomFaults(name, rng, rate, listener=heard)
        faults.install(server.app)
        injection.faults[name] = faults

    def stored(request: web.Request, objects: list[dict[str, Any]]) -> None:
        serial = request.get(SERIAL, 0)
        passing = sentinel_gates.in_flight.get(serial)
        at = passing.at if passing is not None else time.monotonic()
        port = passing.peer_port if passing is not None else None
        for obj in objects:
            ours = mati_properties(obj)
            fingerprint, mati_id = str(ours.get("fingerprint", "")), str(ours.get("mati_id", ""))
            ledger.upload((str(obj["id"]), fingerprint), Upload(at, serial, port, mati_id))

    sims.sentinel.upload_listeners.append(stored)
    for server in sims.servers:
        server.recorder.requests = _BodilessRequests()
    return injection
