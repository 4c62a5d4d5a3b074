"""How one uploader replica works, built from the settings once (``UploaderConfig.from_settings``):
the settings object already validated every value it holds, so only what the code chooses (the
batch size, the lanes, the systemic threshold) is checked here, once, and the worker takes them
as they are."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from shared.core import checks
from shared.core.backoff import Backoff
from shared.core.settings import Settings
from shared.core.stix import MAX_OBJECTS_PER_REQUEST

#: Back-off between requests repeated through 5xx, timeouts and unreadable answers, and after a
#: failure of the bus or Redis in the receive loop.
RETRY: Final = Backoff(base_s=1.0, cap_s=60.0)
#: The growing delay between probes while the destination's circuit is open.
PROBE: Final = Backoff(base_s=5.0, cap_s=300.0)


@dataclass(frozen=True, slots=True)
class UploaderConfig:
    """One destination's uploader: its batches, its waits, and when a refusal is systemic."""

    destination: str
    refresh_ratio: float = 0.5
    linger_s: float = 1.0
    lock_duration_s: float = 60.0
    drain_timeout_s: float = 25.0
    #: Complete what the seen cache says is uploaded already (``ENABLE_DEDUPLICATION``).
    skip_uploaded: bool = True
    batch_size: int = MAX_OBJECTS_PER_REQUEST
    #: Longest wait for the first message of a batch; also bounds how long a lane takes to
    #: notice ``stop`` while the queue is idle.
    receive_wait_s: float = 1.0
    #: Batches held at once in one process (``services.runtime.lanes_for`` the bus).
    lanes: int = 1
    #: Received batches refused entirely in a row that open the circuit (module docstring of
    #: ``services.uploader.worker``).
    systemic_after: int = 3
    #: How long the ids of a committed batch are kept for ``reconcile``'s grace (0: not kept).
    recent_s: float = 15 * 60.0
    retry: Backoff = RETRY
    probe: Backoff = PROBE

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= MAX_OBJECTS_PER_REQUEST:
            raise ValueError(f"batch_size must be within 1..{MAX_OBJECTS_PER_REQUEST}")
        checks.at_least("lanes", self.lanes, 1)
        checks.at_least("systemic_after", self.systemic_after, 1)

    @property
    def slice_s(self) -> float:
        """The longest single wait while a batch is held: a third of the lock duration, so a
        renewal always comes before the lock runs out."""
        return self.lock_duration_s / 3

    @classmethod
    def from_settings(cls, settings: Settings, *, lanes: int = 1) -> UploaderConfig:
        return cls(
            destination=settings.destination,
            refresh_ratio=settings.validity_refresh_ratio,
            linger_s=settings.upload_linger_seconds,
            lock_duration_s=settings.bus_lock_duration_seconds,
            drain_timeout_s=settings.drain_timeout_seconds,
            skip_uploaded=settings.enable_deduplication,
            lanes=lanes,
            recent_s=settings.reconcile_grace_minutes * 60,
        )
