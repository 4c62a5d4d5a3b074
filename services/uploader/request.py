"""One request to Sentinel, repeated until Sentinel answers it (accepted, or refused with a 400):

- 429: every replica pauses (``RateBudget.pause``), and the same records go again;
- 5xx, timeouts, resets, unreadable answers: jittered exponential back-off, same records;
- 401/403/404 and refused TLS (after the client's one token refresh): the destination's
  circuit opens (``services.uploader.circuit``) and the records are held through the probe
  delay, then sent again as the probe.

Every attempt first takes a slot of the shared ``RateBudget``, and every wait renews the held
batch's locks (``services.uploader.waiting``). What Sentinel answered is settled by
``services.uploader.settling``.

Traces: every request is an ``upload request`` span linking each message it carried, and each
message's own span (``HeldBatch``) records every request it rode in and its outcome. When
nothing records spans (no exporter), the links are not made.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime
from typing import Any, Protocol

from services.uploader.batching import HeldBatch, Item
from services.uploader.circuit import Circuit
from services.uploader.config import UploaderConfig
from services.uploader.waiting import Waits
from shared.adapters.rate_budget import RateBudget
from shared.adapters.sentinel_client import UploadResult
from shared.contract.messages import upload_queue
from shared.core.errors import (
    AuthenticationFailed,
    BatchRejected,
    DestinationNotFound,
    MalformedResponse,
    RateLimited,
    TlsVerificationFailed,
    UpstreamUnavailable,
)
from shared.core.stix import UploadTime
from shared.core.timing import UtcClock
from shared.telemetry import logs, tracing

log = logs.get_logger(__name__)

_CIRCUIT_ERRORS = (AuthenticationFailed, DestinationNotFound, TlsVerificationFailed)
_RETRIED_ERRORS = (UpstreamUnavailable, MalformedResponse)


class Uploads(Protocol):
    """What the uploader needs from ``shared.adapters.sentinel_client.SentinelClient``."""

    async def upload(self, objects: Sequence[Mapping[str, Any]]) -> UploadResult: ...


@dataclass(frozen=True, slots=True)
class Accepted:
    """A request Sentinel answered 2xx: what was sent, as built, and what it did with each."""

    items: list[Item]
    built: list[tuple[dict[str, object], datetime]]
    result: UploadResult


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request Sentinel refused as a whole (400); nothing of it is settled yet."""

    items: list[Item]
    error: BatchRejected


Answer = Accepted | Refusal


@dataclass(eq=False)
class Requester:
    """Sends the requests of one uploader replica; counts go to the replica's ``tally``."""

    client: Uploads
    budget: RateBudget
    circuit: Circuit
    waits: Waits
    tally: Counter[str]
    config: UploaderConfig
    _: KW_ONLY
    clock: UtcClock
    rng: random.Random
    _attributes: dict[str, str | int] = field(init=False)

    def __post_init__(self) -> None:
        self._attributes = {
            "mati2sentinel.destination": self.config.destination,
            "messaging.destination.name": upload_queue(self.config.destination).name,
        }

    async def request(self, items: list[Item], held: HeldBatch) -> Answer | None:
        """One request for ``items``, repeated through 429s, outages and an open circuit until
        Sentinel answers it (accepted, or refused with a 400); None when nothing of it is held
        any more or the uploader stopped (then everything still held is abandoned)."""
        failures = 0
        tries = 0
        while True:
            items = [item for item in items if held.holds(item.delivery)]
            if not items:
                return None
            waited = await self.waits.acquire(held)
            if waited is None:
                await held.abandon("stopping")
                return None
            if waited or tries:  # time passed since ``prepare``: check again
                items = await held.without_overtaken(items)
                if not items:
                    return None
            tries += 1
            stamp = UploadTime(self.clock())
            built = [item.build(stamp) for item in items]
            self.tally["requests"] += 1
            try:
                with self._span(items, held):
                    result = await self.client.upload([obj for obj, _ in built])
            except RateLimited as exc:
                in_force = await self.budget.pause(exc.retry_after_s)
                self.tally["throttled"] += 1
                self.tally["throttle_wait_seconds"] += math.ceil(exc.retry_after_s)
                self._log(items, "throttled", waited, retry_after_s=in_force)
                continue
            except _RETRIED_ERRORS as exc:
                failures += 1
                wait = self.config.retry.jittered(failures, self.rng)
                self.tally["retried"] += 1
                self._log_failure(items, exc, waited, retry_in_s=round(wait, 3))
                if not await self.waits.wait_or_release(wait, held):
                    return None
                continue
            except BatchRejected as exc:
                self._log(
                    items, "batch_rejected", waited, detail=str(exc), rejected=len(exc.records)
                )
                return Refusal(items, exc)
            except _CIRCUIT_ERRORS as exc:
                self._log_failure(items, exc, waited)
                if not await self.waits.wait_or_release(await self.circuit.trip(exc), held):
                    return None
                continue
            self._log(
                items, "ok", waited, accepted=len(result.accepted), rejected=len(result.rejected)
            )
            return Accepted(items, built, result)

    @contextmanager
    def _span(self, items: list[Item], held: HeldBatch) -> Iterator[None]:
        """The span of one request to Sentinel, linking every message it carries; its outcome
        (``ok`` or the error's type) also goes on each message's span."""
        links = (
            tracing.links_to((item.delivery.properties, item.delivery.message_id) for item in items)
            if held.recording
            else []
        )
        with tracing.batch_span(
            "upload request",
            {**self._attributes, "upload.objects": len(items)},
            kind=tracing.SpanKind.CLIENT,
            links=links,
        ) as request:
            try:
                yield
            except Exception as exc:
                outcome = type(exc).__name__
                request.set_attribute("mati2sentinel.outcome", outcome)
                held.record_request([item.delivery for item in items], request, outcome)
                raise
            request.set_attribute("mati2sentinel.outcome", "ok")
            held.record_request([item.delivery for item in items], request, "ok")

    def _log_failure(
        self, items: list[Item], exc: Exception, waited: float, **fields: object
    ) -> None:
        """A failed request's line: the error's type, its HTTP status if any, its text."""
        status = getattr(exc, "status", None)
        self._log(items, type(exc).__name__, waited, status=status, detail=str(exc), **fields)

    def _log(self, items: list[Item], outcome: str, waited: float, **fields: object) -> None:
        fields.setdefault("accepted", 0)
        fields.setdefault("rejected", 0)
        log.info(
            "upload.request",
            count=len(items),
            outcome=outcome,
            waited_s=round(waited, 3),
            **fields,
        )
