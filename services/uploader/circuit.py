"""The destination's circuit as one uploader replica keeps it (DESIGN §4).

401/403/404 (after the client's one token refresh), refused TLS and a systemic refusal
(Sentinel refusing every record for one reason no record owns: ``SystemicRejection``) are
problems only an operator (or Sentinel's side) can fix: the circuit opens in Redis with the
reason, so every replica stops receiving and no message burns its delivery count on them.
While it is open, one lane per replica receives one probe batch per growing delay (the replica
that opened it may have died; someone must find out when the operator fixed the problem); a
probe refused the same way again keeps it open and the delay grows; the first request Sentinel
accepts closes it again.

Kept apart from the worker so the worker reads as the upload loop; the waiting itself (which
renews the held batch's locks) stays with the worker, which owns the batch.
"""

from __future__ import annotations

from collections import Counter

from shared.adapters.destination_state import CircuitState, DestinationState
from shared.core.backoff import Backoff
from shared.core.errors import StateUnavailable
from shared.telemetry import logs

log = logs.get_logger(__name__)


def reason_for(exc: Exception) -> str:
    """What the circuit records (and ``status`` and readiness show) for ``exc``."""
    return f"{type(exc).__name__}: {exc}"[:500]


class Circuit:
    """Probe count and the last state this replica wrote; counts go to the worker's tally."""

    def __init__(self, state: DestinationState, probe: Backoff, tally: Counter[str]) -> None:
        self._state = state
        self._probe = probe
        self._tally = tally
        self._probes = 0
        self._open = False

    async def receive_delay(self, *, probing: bool) -> float | None:
        """None when the circuit is closed (receive now); otherwise how long to wait before
        receiving (the probing lane then takes one probe batch; the others only look again)."""
        state, reason, _ = await self._state.circuit()
        if state is CircuitState.CLOSED:
            self._probes = 0
            return None
        self._open = True
        if probing:
            self._probes += 1
        wait = self._probe.ceiling(max(self._probes, 1))
        log.info("upload.circuit_wait", reason=reason, wait_s=wait)
        return wait

    async def open_for(self, exc: Exception) -> bool:
        """Whether the circuit is open for exactly ``exc`` (opened by any replica): a probe
        refused the same way again, or a batch of another replica meeting the same cause."""
        try:
            state, reason, _ = await self._state.circuit()
        except StateUnavailable:
            return False
        return state is CircuitState.OPEN and reason == reason_for(exc)

    async def trip(self, exc: Exception) -> float:
        """Open the circuit for ``exc`` (or keep it open, with ``exc`` as its reason); the probe
        delay to wait (holding the batch) before the same request goes again, longer with
        each probe refused."""
        reason = reason_for(exc)
        try:
            changed = await self._state.set_circuit(CircuitState.OPEN, reason)
        except StateUnavailable as failure:
            log.warning("upload.circuit_unrecorded", detail=str(failure))
            changed = False
        if changed:
            self._tally["circuit_opened"] += 1
            log.error("upload.circuit_opened", reason=reason)
        self._open = True
        self._probes += 1
        return self._probe.ceiling(self._probes)

    async def close(self) -> None:
        """After a request got an answer: close the circuit if this replica saw it open."""
        self._probes = 0
        if not self._open:
            return
        try:
            changed = await self._state.set_circuit(CircuitState.CLOSED, "")
        except StateUnavailable as exc:
            log.warning("upload.circuit_unrecorded", detail=str(exc))
            return  # tried again after the next successful request
        if changed:
            log.info("upload.circuit_closed")
        self._open = False
