"""The uploader loop: batches from the upload queue to Sentinel, within one shared quota.

Every outcome of DESIGN §4 is handled on the batch the uploader holds, under its locks:
messages that need no upload (unreadable, superseded, already uploaded) are settled first
(``services.uploader.batching``); the rest is sent, each request repeated through 429s, outages
and an open circuit until Sentinel answers it (``services.uploader.request``), and the answer
settles each record: uploaded, dead-lettered with Sentinel's message, split to find the record
at fault, or held while the circuit is open for a cause no record owns
(``services.uploader.settling``). 401/403/404, refused TLS and such systemic refusals open the
destination's circuit (``services.uploader.circuit``): nothing more is received, so no message
burns its delivery count on a problem only an operator can fix.

Waiting never lets a lock run out (``services.uploader.waiting``). Stopping abandons whatever
still waits (the messages come straight back for another replica); a request already sent
finishes and is settled, within the drain timeout.

Lanes: one replica may hold ``lanes`` batches at once, each uploaded and settled by its own
loop exactly as a replica of its own would (every guarantee above holds per batch), so one
batch's Redis work overlaps another's request to Sentinel. Lanes receive one at a time, so
each batch still fills (or lingers) before the next starts: a trickle is not split into more,
smaller requests, which the quota counts.

Traces: each message's own ``upload indicator`` span (``HeldBatch``) continues that
indicator's trace and records every request it rode in and its outcome (accepted, rejected,
superseded, ...). When nothing records spans (no exporter), no per-message span is made.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

from services.uploader.batching import HeldBatch, Prepared, Received, prepare, receive_batch
from services.uploader.circuit import Circuit
from services.uploader.config import UploaderConfig
from services.uploader.request import Requester, Uploads
from services.uploader.settling import Settler
from services.uploader.waiting import Waits
from shared.adapters.destination_state import DestinationState
from shared.adapters.rate_budget import RateBudget
from shared.contract.bus import Bus, Delivery
from shared.contract.messages import revocation_queue, upload_queue
from shared.core.errors import TransientError
from shared.core.retrying import Retrier
from shared.core.timing import Sleep, UtcClock, utc_now
from shared.telemetry import logs

log = logs.get_logger(__name__)


class Uploader:
    """One uploader replica of one destination: its ``config``, and the parts it is given."""

    def __init__(
        self,
        *,
        bus: Bus,
        state: DestinationState,
        budget: RateBudget,
        client: Uploads,
        config: UploaderConfig,
        clock: UtcClock = utc_now,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.destination = config.destination
        self.queue = upload_queue(config.destination)
        #: The priority lane: revocations, taken ahead of the queue (``receive_batch``).
        self.priority = revocation_queue(config.destination)
        self._bus = bus
        self._state = state
        self._config = config
        self._receiving = asyncio.Lock()
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 -- jitter, not secrecy
        self._tally: Counter[str] = Counter()
        self._circuit = Circuit(state, config.probe, self._tally)
        self._waits = Waits(state, budget, self._tally, slice_s=config.slice_s, sleep=sleep)
        requester = Requester(
            client,
            budget,
            self._circuit,
            self._waits,
            self._tally,
            config,
            clock=clock,
            rng=self._rng,
        )
        self._settler = Settler(
            requester,
            state,
            self._circuit,
            self._waits,
            self._tally,
            systemic_after=config.systemic_after,
            clock=clock,
            recent_s=config.recent_s,
        )

    # -- the loop ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Receive and upload batches until ``stop`` is set, ``lanes`` of them at a time (each
        lane settles its own batch exactly like a replica of its own); never crashes on a
        transient failure of the bus, Redis or Sentinel."""
        self._waits.stop = stop
        lanes = [
            asyncio.ensure_future(self._lane(stop, probes=n == 0))
            for n in range(self._config.lanes)
        ]
        try:
            await asyncio.gather(*lanes)
        finally:
            for lane in lanes:
                lane.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)
        log.info("upload.stopped")

    async def _lane(self, stop: asyncio.Event, *, probes: bool) -> None:
        config = self._config
        retrier = Retrier(config.retry, self._rng, bounded=False)
        while not stop.is_set():
            try:
                if not await self._circuit_allows(probes):
                    continue
                async with self._receiving:  # lanes fill batches one after the other
                    if stop.is_set():  # stopped while another lane was receiving
                        break
                    batch = await receive_batch(
                        self._bus,
                        self.priority,
                        self.queue,
                        max_messages=config.batch_size,
                        first_wait_s=config.receive_wait_s,
                        linger_s=config.linger_s,
                        stop=stop,
                    )
                if not batch:
                    retrier.reset()
                    continue
                if stop.is_set():  # stopped while lingering: give it straight back
                    held = HeldBatch(self._bus, batch, self._state, self._tally, 0.0)
                    await held.abandon("stopping")
                    await self._waits.flush()
                    break
                await self._drain(asyncio.ensure_future(self.process(batch)))
                retrier.reset()
            except TransientError as exc:
                wait = retrier.next_wait() or 0.0
                log.warning(
                    "upload.loop_failed",
                    error=type(exc).__name__,
                    detail=str(exc),
                    wait_s=round(wait, 3),
                )
                await self._waits.nap(wait)

    async def _drain(self, task: asyncio.Future[None]) -> None:
        """Wait for a batch; once stop is set, give it at most the drain timeout."""
        stopper: asyncio.Future[Any] = asyncio.ensure_future(self._waits.stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            await asyncio.gather(stopper, return_exceptions=True)
        if not task.done():
            timeout_s = self._config.drain_timeout_s
            done, _ = await asyncio.wait({task}, timeout=timeout_s)
            if not done:
                # The batch's locks expire and bring its messages back: nothing is lost.
                log.warning("upload.drain_timeout", timeout_s=timeout_s)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                return
        await task

    async def _circuit_allows(self, probes: bool) -> bool:
        """Whether to receive now (``services.uploader.circuit``); waits first when open."""
        wait = await self._circuit.receive_delay(probing=probes)
        return wait is None or (await self._waits.nap(wait) and probes)

    # -- one batch -----------------------------------------------------------------------------

    async def process(self, batch: Received | Sequence[Delivery]) -> None:
        """Upload one received batch and settle every message of it (module docstring); a
        plain sequence is of the ordinary queue."""
        if not isinstance(batch, Received):
            batch = Received.of(self.queue, batch)
        loop = asyncio.get_running_loop()
        held = HeldBatch(self._bus, batch, self._state, self._tally, loop.time())
        try:
            prepared = await prepare(
                batch.deliveries,
                self._state,
                now=self._clock(),
                refresh_ratio=self._config.refresh_ratio,
                skip_uploaded=self._config.skip_uploaded,
            )
            await self._settle_prepared(prepared, held)
            if prepared.upload:
                await self._settler.send(prepared.upload, held, whole=True)
        except BaseException:
            await held.abandon("failed")
            raise
        finally:
            await self._waits.flush()

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
