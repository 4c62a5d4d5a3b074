"""The uploader loop: batches from the upload queue to Sentinel, within one shared quota.

Every outcome of DESIGN §4 is handled on the batch the uploader holds, under its locks:

- accepted records: the seen key is written (``commit``, which also clears the claim) and
  only then is the message completed; rejected records are dead-lettered with Sentinel's
  message and their claim released;
- 400 for the whole request naming the records at fault: exactly those are dead-lettered,
  each with its own message, and the rest goes again; naming none: split in halves until the
  refused record stands alone;
- 400s with a cause no record owns (a bad ``SENTINEL_SOURCE_SYSTEM``, a schema change on
  Sentinel's side): both halves of a split refused with the same message, every record of a
  request named with the same message, or ``systemic_after`` received batches in a row
  refused entirely. Splitting on would cost two requests a record and dead-letter the whole
  backlog, so the circuit opens with Sentinel's message instead (``SystemicRejection``) and
  the batch is held and probed like below; nothing is dead-lettered for it;
- 429: every replica pauses (``RateBudget.pause``), and the same batch goes again;
- 5xx, timeouts, resets, unreadable answers: jittered exponential back-off, same batch;
- 401/403/404 and refused TLS (after the client's one token refresh): the destination's
  circuit opens (``services.uploader.circuit``), the batch is held and probed with a growing
  delay, nothing more is received, so no message burns its delivery count on a problem only
  an operator can fix.

Waiting never lets a lock run out: every wait is cut into slices of a third of the lock
duration with a renewal between them. Every request, retries and split halves included, first
takes a slot of the shared ``RateBudget``. Stopping abandons whatever still waits (the
messages come straight back for another replica); a request already sent finishes and is
settled, within the drain timeout.

Lanes: one replica may hold ``lanes`` batches at once, each uploaded and settled by its own
loop exactly as a replica of its own would (every guarantee above holds per batch), so one
batch's Redis work overlaps another's request to Sentinel. Lanes receive one at a time, so
each batch still fills (or lingers) before the next starts: a trickle is not split into more,
smaller requests, which the quota counts.

Traces: every request is an ``upload request`` span linking each message it carried; each
message's own ``upload indicator`` span (``HeldBatch``) continues that indicator's trace and
records every request it rode in and its outcome (accepted, rejected, superseded, ...). When
nothing records spans (no exporter), neither the per-message spans nor the links are made.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from services.uploader.batching import (
    REJECTED_BY_SENTINEL,
    HeldBatch,
    Item,
    Prepared,
    prepare,
    receive_batch,
)
from services.uploader.circuit import Circuit
from shared.adapters.sentinel_client import UploadResult
from shared.adapters.state import DestinationState, RateBudget
from shared.contract.bus import Bus, Delivery
from shared.contract.messages import upload_queue
from shared.core.backoff import Backoff
from shared.core.errors import (
    AuthenticationFailed,
    BatchRejected,
    DestinationNotFound,
    MalformedResponse,
    RateLimited,
    StateUnavailable,
    SystemicRejection,
    TlsVerificationFailed,
    TransientError,
    UpstreamUnavailable,
)
from shared.core.fingerprint import SeenEntry
from shared.core.stix import MAX_OBJECTS_PER_REQUEST, UploadTime
from shared.telemetry import logs, tracing

log = logs.get_logger(__name__)

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], datetime]

_CIRCUIT_ERRORS = (AuthenticationFailed, DestinationNotFound, TlsVerificationFailed)
_RETRIED_ERRORS = (UpstreamUnavailable, MalformedResponse)


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


def _why(refusal: Refusal) -> str | None:
    """The one message that refused every record of the request: Sentinel's message when the
    answer names no record, the records' shared message when it names each with the same one;
    None when the records were refused for reasons of their own."""
    error = refusal.error
    if not error.records:
        return error.detail or "no message"
    if len(error.records) != len(refusal.items):
        return None
    messages = {record.messages for record in error.records}
    if len(messages) != 1:
        return None
    return "; ".join(messages.pop())


def _systemic_error(status: int, why: str) -> SystemicRejection:
    return SystemicRejection(f"Sentinel refuses every record (HTTP {status}): {why}")


class Uploads(Protocol):
    """What the worker needs from ``shared.adapters.sentinel_client.SentinelClient``."""

    async def upload(self, objects: Sequence[Mapping[str, Any]]) -> UploadResult: ...


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Uploader:
    """One uploader replica of one destination, built from injected parts."""

    def __init__(
        self,
        *,
        bus: Bus,
        state: DestinationState,
        budget: RateBudget,
        client: Uploads,
        destination: str,
        refresh_ratio: float = 0.5,
        linger_s: float = 1.0,
        lock_duration_s: float = 60.0,
        drain_timeout_s: float = 25.0,
        skip_uploaded: bool = True,
        batch_size: int = MAX_OBJECTS_PER_REQUEST,
        receive_wait_s: float = 1.0,
        lanes: int = 1,
        systemic_after: int = 3,
        retry: Backoff | None = None,
        probe: Backoff | None = None,
        clock: Clock = _utcnow,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if not 1 <= batch_size <= MAX_OBJECTS_PER_REQUEST:
            raise ValueError(f"batch_size must be within 1..{MAX_OBJECTS_PER_REQUEST}")
        if lanes < 1:
            raise ValueError(f"lanes must be at least 1, got {lanes}")
        if systemic_after < 1:
            raise ValueError(f"systemic_after must be at least 1, got {systemic_after}")
        self.destination = destination
        self.queue = upload_queue(destination)
        self._bus = bus
        self._state = state
        self._budget = budget
        self._client = client
        self._refresh_ratio = refresh_ratio
        self._linger_s = linger_s
        self._slice_s = lock_duration_s / 3
        self._drain_timeout_s = drain_timeout_s
        self._skip_uploaded = skip_uploaded
        self._batch_size = batch_size
        self._receive_wait_s = receive_wait_s
        self._lanes = lanes
        self._systemic_after = systemic_after
        #: Received batches refused entirely in a row (``_systemic``); any 2xx restarts it.
        self._refusals = 0
        self._receiving = asyncio.Lock()
        self._retry = retry or Backoff(base_s=1.0, cap_s=60.0)
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 -- jitter, not secrecy
        self._stop = asyncio.Event()
        self._tally: Counter[str] = Counter()
        self._circuit = Circuit(state, probe or Backoff(base_s=5.0, cap_s=300.0), self._tally)
        self._request_attributes: dict[str, str | int] = {
            "mati2sentinel.destination": destination,
            "messaging.destination.name": self.queue.name,
        }

    # -- the loop ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Receive and upload batches until ``stop`` is set, ``lanes`` of them at a time (each
        lane settles its own batch exactly like a replica of its own); never crashes on a
        transient failure of the bus, Redis or Sentinel."""
        self._stop = stop
        lanes = [asyncio.ensure_future(self._lane(stop, probes=n == 0)) for n in range(self._lanes)]
        try:
            await asyncio.gather(*lanes)
        finally:
            for lane in lanes:
                lane.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)
        log.info("upload.stopped")

    async def _lane(self, stop: asyncio.Event, *, probes: bool) -> None:
        failures = 0
        while not stop.is_set():
            try:
                if not await self._circuit_allows(probes):
                    continue
                async with self._receiving:  # lanes fill batches one after the other
                    if stop.is_set():  # stopped while another lane was receiving
                        break
                    batch = await receive_batch(
                        self._bus,
                        self.queue,
                        max_messages=self._batch_size,
                        first_wait_s=self._receive_wait_s,
                        linger_s=self._linger_s,
                        stop=stop,
                    )
                if not batch:
                    failures = 0
                    continue
                if stop.is_set():  # stopped while lingering: give it straight back
                    held = HeldBatch(self._bus, self.queue, self._state, batch, self._tally, 0.0)
                    await held.abandon("stopping")
                    await self._flush()
                    break
                await self._drain(asyncio.ensure_future(self.process(batch)))
                failures = 0
            except TransientError as exc:
                failures += 1
                wait = self._retry.jittered(failures, self._rng)
                log.warning(
                    "upload.loop_failed",
                    error=type(exc).__name__,
                    detail=str(exc),
                    wait_s=round(wait, 3),
                )
                await self._nap(wait)

    async def _drain(self, task: asyncio.Future[None]) -> None:
        """Wait for a batch; once stop is set, give it at most the drain timeout."""
        stopper: asyncio.Future[Any] = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            await asyncio.gather(stopper, return_exceptions=True)
        if not task.done():
            done, _ = await asyncio.wait({task}, timeout=self._drain_timeout_s)
            if not done:
                # The batch's locks expire and bring its messages back: nothing is lost.
                log.warning("upload.drain_timeout", timeout_s=self._drain_timeout_s)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                return
        await task

    async def _circuit_allows(self, probes: bool) -> bool:
        """Whether to receive now (``services.uploader.circuit``); waits first when open."""
        wait = await self._circuit.receive_delay(probing=probes)
        return wait is None or (await self._nap(wait) and probes)

    # -- one batch -----------------------------------------------------------------------------

    async def process(self, batch: Sequence[Delivery]) -> None:
        """Upload one received batch and settle every message of it (module docstring)."""
        loop = asyncio.get_running_loop()
        held = HeldBatch(self._bus, self.queue, self._state, batch, self._tally, loop.time())
        try:
            prepared = await prepare(
                batch,
                self._state,
                now=self._clock(),
                refresh_ratio=self._refresh_ratio,
                skip_uploaded=self._skip_uploaded,
            )
            await self._settle_prepared(prepared, held)
            if prepared.upload:
                await self._send(prepared.upload, held, whole=True)
        except BaseException:
            await held.abandon("failed")
            raise
        finally:
            await self._flush()

    async def _settle_prepared(self, prepared: Prepared, held: HeldBatch) -> None:
        for bad in prepared.invalid:
            # Unreadable, so no claim of ours to release: it expires with its TTL.
            await held.dead_letter(bad.delivery, bad.reason, bad.description, None)
        if prepared.superseded:
            self._tally["superseded"] += len(prepared.superseded)
            await held.complete([item.delivery for item in prepared.superseded], "superseded")
        if prepared.already_uploaded:
            self._tally["already_uploaded"] += len(prepared.already_uploaded)
            # A duplicate of what is already up: its claim (if it is still ours) is done too.
            await held.release_claims([item.claim for item in prepared.already_uploaded])
            await held.complete(
                [item.delivery for item in prepared.already_uploaded], "already_uploaded"
            )

    async def _send(
        self,
        items: list[Item],
        held: HeldBatch,
        *,
        whole: bool = False,
        answer: Answer | None = None,
    ) -> None:
        """Send ``items`` (or start from ``answer``, a request for them already answered) until
        every record is settled, held records are given back, or the uploader stops. ``whole``:
        these are the received batch itself, not a split part of it."""
        while True:
            if answer is None:
                answer = await self._request(items, held)
                if answer is None:
                    return
            if isinstance(answer, Refusal):
                items = await self._refused(answer, held, whole=whole)
                if not items:
                    return
                # The rest of a request that named its refused records is no batch of its own.
                whole = whole and len(items) == len(answer.items)
                answer = None
                continue
            self._refusals = 0
            await self._settle(answer.items, answer.built, answer.result, held)
            await self._circuit.close()
            return

    async def _request(self, items: list[Item], held: HeldBatch) -> Answer | None:
        """One request for ``items``, repeated through 429s, outages and an open circuit until
        Sentinel answers it (accepted, or refused with a 400); None when nothing of it is held
        any more or the uploader stopped (then everything still held is abandoned)."""
        failures = 0
        while True:
            items = [item for item in items if held.holds(item.delivery)]
            if not items:
                return None
            waited = await self._acquire(held)
            if waited is None:
                await held.abandon("stopping")
                return None
            stamp = UploadTime(self._clock())
            built = [item.build(stamp) for item in items]
            self._tally["requests"] += 1
            try:
                with self._request_span(items, held):
                    result = await self._client.upload([obj for obj, _ in built])
            except RateLimited as exc:
                in_force = await self._budget.pause(exc.retry_after_s)
                self._tally["throttled"] += 1
                self._tally["throttle_wait_seconds"] += math.ceil(exc.retry_after_s)
                self._log_request(items, "throttled", waited, retry_after_s=in_force)
                continue
            except _RETRIED_ERRORS as exc:
                failures += 1
                wait = self._retry.jittered(failures, self._rng)
                self._tally["retried"] += 1
                self._log_failure(items, exc, waited, retry_in_s=round(wait, 3))
                if not await self._wait_or_release(wait, held):
                    return None
                continue
            except BatchRejected as exc:
                self._log_request(
                    items, "batch_rejected", waited, detail=str(exc), rejected=len(exc.records)
                )
                return Refusal(items, exc)
            except _CIRCUIT_ERRORS as exc:
                self._log_failure(items, exc, waited)
                if not await self._wait_or_release(await self._circuit.trip(exc), held):
                    return None
                continue
            self._log_request(
                items, "ok", waited, accepted=len(result.accepted), rejected=len(result.rejected)
            )
            return Accepted(items, built, result)

    @contextmanager
    def _request_span(self, items: list[Item], held: HeldBatch) -> Iterator[None]:
        """The span of one request to Sentinel, linking every message it carries; its outcome
        (``ok`` or the error's type) also goes on each message's span."""
        links = (
            tracing.links_to((item.delivery.properties, item.delivery.message_id) for item in items)
            if held.recording
            else []
        )
        with tracing.batch_span(
            "upload request",
            {**self._request_attributes, "upload.objects": len(items)},
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

    # -- 400s: whose fault ----------------------------------------------------------------------

    async def _refused(self, refusal: Refusal, held: HeldBatch, *, whole: bool) -> list[Item]:
        """A 400 for the whole request; returns what to send again ([] when all is settled).

        - a cause no record owns (``_systemic``): the circuit opens with Sentinel's message
          and the records are held through the probe delay, then sent again;
        - the answer names records: exactly those are dead-lettered, each with its own
          messages, and the rest goes again, without splitting;
        - it names none: a lone record is dead-lettered with Sentinel's message; more are
          halved until the refused record stands alone (``_split``).
        """
        items, error = refusal.items, refusal.error
        if not any(held.holds(item.delivery) for item in items):
            return []  # given back meanwhile (stopped while the other half was out)
        message = await self._systemic(refusal, whole=whole)
        if message is not None:
            return await self._hold(items, held, error.status, message)
        if error.records:
            named = {record.index for record in error.records}
            for record in error.records:
                await self._reject(items[record.index], held, record.messages)
            return [item for index, item in enumerate(items) if index not in named]
        if len(items) == 1:
            await self._reject(items[0], held, (error.detail,))
            return []
        await self._split(items, held)
        return []

    async def _systemic(self, refusal: Refusal, *, whole: bool) -> str | None:
        """Sentinel's message when this refusal has a cause no record owns, else None:

        - the circuit is open already for this very refusal (a probe refused again, or a
          batch of another replica);
        - every record of a request of two or more is named with the same message;
        - ``systemic_after`` received batches in a row were refused entirely (the count
          restarts with any accepted request).
        Both halves of a split refused alike is judged by ``_split``.
        """
        error, why = refusal.error, _why(refusal)
        if why is not None and await self._circuit.open_for(_systemic_error(error.status, why)):
            return why
        if why is not None and error.records and len(refusal.items) > 1:
            return why
        entire = not error.records or len(error.records) == len(refusal.items)
        if whole and entire:
            self._refusals += 1
            if self._refusals >= self._systemic_after:
                return why or error.detail
        return None

    async def _split(self, items: list[Item], held: HeldBatch) -> None:
        """Halve a refused request the answer did not attribute, and send both halves. Both
        refused entirely with the same message: the cause is not in either, so none is
        dead-lettered for it (``_hold``); otherwise each half is settled on its own."""
        middle = len(items) // 2
        self._tally["split"] += 1
        log.info("upload.batch_split", count=len(items), halves=[middle, len(items) - middle])
        first = await self._request(items[:middle], held)
        if not isinstance(first, Refusal):  # accepted: settled before the other half goes
            if first is not None:
                await self._send(first.items, held, answer=first)
            await self._send(items[middle:], held)
            return
        second = await self._request(items[middle:], held)
        why = _why(first)
        if isinstance(second, Refusal) and why is not None and why == _why(second):
            again = await self._hold(first.items + second.items, held, second.error.status, why)
            if again:
                await self._send(again, held)
            return
        if second is not None:
            await self._send(second.items, held, answer=second)
        await self._send(first.items, held, answer=first)

    async def _hold(self, items: list[Item], held: HeldBatch, status: int, why: str) -> list[Item]:
        """Open the circuit with Sentinel's message and keep ``items`` through the probe delay
        (renewing their locks): nothing is dead-lettered, nothing burns a delivery. Returns
        what is still held, to be sent again as the probe; [] when stopped (given back)."""
        self._tally["systemic_rejection"] += 1
        error = _systemic_error(status, why)
        log.warning("upload.systemic_rejection", count=len(items), detail=str(error))
        wait = await self._circuit.trip(error)
        await self._flush()  # what ``status`` shows beside the open circuit, counted now
        if not await self._wait_or_release(wait, held):
            return []
        return [item for item in items if held.holds(item.delivery)]

    async def _reject(self, item: Item, held: HeldBatch, messages: Sequence[str]) -> None:
        """Dead-letter one record Sentinel refused, with its messages."""
        self._tally["rejected"] += 1
        description = "; ".join(m.strip() for m in messages if m.strip()).strip()
        await held.dead_letter(
            item.delivery, REJECTED_BY_SENTINEL, description or "no message", item.claim
        )

    async def _settle(
        self,
        items: list[Item],
        built: list[tuple[dict[str, object], datetime]],
        result: UploadResult,
        held: HeldBatch,
    ) -> None:
        """Seen keys first, then ``complete``: a crash in between costs a redelivery that the
        seen check completes without uploading again, never a record marked done unsent."""
        entries = [
            (
                items[i].stix_id,
                SeenEntry(items[i].fingerprint, built[i][1], items[i].request.source_tag),
            )
            for i in result.accepted
        ]
        if entries:
            await self._state.commit(entries, now=self._clock())
            self._tally["uploaded"] += len(entries)
            await held.complete([items[i].delivery for i in result.accepted], "accepted")
        for error in result.rejected:
            await self._reject(items[error.index], held, error.messages)

    # -- waiting -------------------------------------------------------------------------------

    async def _acquire(self, held: HeldBatch) -> float | None:
        """Take a slot of the shared budget, waiting (and renewing) as long as it says; the
        seconds waited, or None when stopped first."""
        waited = 0.0
        while True:
            if self._stop.is_set():
                return None
            try:
                wait = await self._budget.acquire()
            except StateUnavailable as exc:
                log.warning("upload.budget_unavailable", detail=str(exc))
                wait = 1.0
            if wait <= 0:
                if asyncio.get_running_loop().time() - held.renewed_at >= self._slice_s:
                    await self._renew(held)
                return waited
            chunk = min(wait, self._slice_s)
            if not await self._nap(chunk):
                return None
            waited += chunk
            await self._renew(held)

    async def _wait_or_release(self, seconds: float, held: HeldBatch) -> bool:
        """``_wait``; when stopped meanwhile, the batch is given back (abandoned) first."""
        if await self._wait(seconds, held):
            return True
        await held.abandon("stopping")
        return False

    async def _wait(self, seconds: float, held: HeldBatch) -> bool:
        """Wait ``seconds`` in slices, renewing the batch's locks; False when stopped."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return not self._stop.is_set()
            if not await self._nap(min(remaining, self._slice_s)):
                return False
            await self._renew(held)

    async def _nap(self, seconds: float) -> bool:
        """Sleep (the injected sleep) unless stop is set first; False when stopped."""
        if self._stop.is_set():
            return False
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, stopper):
                task.cancel()
            await asyncio.gather(sleeper, stopper, return_exceptions=True)
        return not self._stop.is_set()

    async def _renew(self, held: HeldBatch) -> None:
        await held.renew(asyncio.get_running_loop().time())
        await self._flush()

    async def _flush(self) -> None:
        """Write the counters gathered so far; kept for the next flush if Redis is away."""
        if not self._tally:
            return
        counts = dict(self._tally)
        self._tally.clear()
        try:
            await self._state.count(counts)
        except StateUnavailable as exc:
            self._tally.update(counts)
            log.warning("upload.count_failed", detail=str(exc))

    def _log_failure(
        self, items: list[Item], exc: Exception, waited: float, **fields: object
    ) -> None:
        """A failed request's line: the error's type, its HTTP status if any, its text."""
        status = getattr(exc, "status", None)
        self._log_request(
            items, type(exc).__name__, waited, status=status, detail=str(exc), **fields
        )

    def _log_request(
        self, items: list[Item], outcome: str, waited: float, **fields: object
    ) -> None:
        fields.setdefault("accepted", 0)
        fields.setdefault("rejected", 0)
        log.info(
            "upload.request",
            count=len(items),
            outcome=outcome,
            waited_s=round(waited, 3),
            **fields,
        )
