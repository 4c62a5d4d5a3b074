"""What Sentinel's answers do to the held batch (DESIGN §4), under the batch's locks:

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
  the batch is held and probed like any open circuit; nothing is dead-lettered for it.

Each request goes through ``services.uploader.request``, which repeats it until Sentinel
answers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime

from services.uploader.batching import HeldBatch, Item
from services.uploader.circuit import Circuit
from services.uploader.reasons import REJECTED_BY_SENTINEL
from services.uploader.request import Answer, Refusal, Requester
from services.uploader.waiting import Waits
from shared.adapters.destination_state import DestinationState
from shared.adapters.sentinel_client import UploadResult
from shared.core.errors import SystemicRejection
from shared.core.fingerprint import SeenEntry
from shared.core.timing import UtcClock
from shared.telemetry import logs

log = logs.get_logger(__name__)


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


@dataclass(eq=False)
class Settler:
    """Sends the records of held batches until each is settled, for one uploader replica;
    counts go to the replica's ``tally``."""

    requester: Requester
    state: DestinationState
    circuit: Circuit
    waits: Waits
    tally: Counter[str]
    _: KW_ONLY
    systemic_after: int
    clock: UtcClock
    #: ``UploaderConfig.recent_s``: what ``commit`` keeps for ``reconcile``'s grace.
    recent_s: float = 0.0
    #: Received batches refused entirely in a row (``_systemic``); any 2xx restarts it.
    _refusals: int = field(default=0, init=False)

    async def send(
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
                answer = await self.requester.request(items, held)
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
            await self.circuit.close()
            return

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
        if why is not None and await self.circuit.open_for(_systemic_error(error.status, why)):
            return why
        if why is not None and error.records and len(refusal.items) > 1:
            return why
        entire = not error.records or len(error.records) == len(refusal.items)
        if whole and entire:
            self._refusals += 1
            if self._refusals >= self.systemic_after:
                return why or error.detail
        return None

    async def _split(self, items: list[Item], held: HeldBatch) -> None:
        """Halve a refused request the answer did not attribute, and send both halves. Both
        refused entirely with the same message: the cause is not in either, so none is
        dead-lettered for it (``_hold``); otherwise each half is settled on its own."""
        middle = len(items) // 2
        self.tally["split"] += 1
        log.info("upload.batch_split", count=len(items), halves=[middle, len(items) - middle])
        first = await self.requester.request(items[:middle], held)
        if not isinstance(first, Refusal):  # accepted: settled before the other half goes
            if first is not None:
                await self.send(first.items, held, answer=first)
            await self.send(items[middle:], held)
            return
        second = await self.requester.request(items[middle:], held)
        why = _why(first)
        if isinstance(second, Refusal) and why is not None and why == _why(second):
            again = await self._hold(first.items + second.items, held, second.error.status, why)
            if again:
                await self.send(again, held)
            return
        if second is not None:
            await self.send(second.items, held, answer=second)
        await self.send(first.items, held, answer=first)

    async def _hold(self, items: list[Item], held: HeldBatch, status: int, why: str) -> list[Item]:
        """Open the circuit with Sentinel's message and keep ``items`` through the probe delay
        (renewing their locks): nothing is dead-lettered, nothing burns a delivery. Returns
        what is still held, to be sent again as the probe; [] when stopped (given back)."""
        self.tally["systemic_rejection"] += 1
        error = _systemic_error(status, why)
        log.warning("upload.systemic_rejection", count=len(items), detail=str(error))
        wait = await self.circuit.trip(error)
        await self.waits.flush()  # what ``status`` shows beside the open circuit, counted now
        if not await self.waits.wait_or_release(wait, held):
            return []
        return [item for item in items if held.holds(item.delivery)]

    # -- settling ------------------------------------------------------------------------------

    async def _reject(self, item: Item, held: HeldBatch, messages: Sequence[str]) -> None:
        """Dead-letter one record Sentinel refused, with its messages."""
        self.tally["rejected"] += 1
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
                SeenEntry(
                    items[i].fingerprint,
                    built[i][1],
                    items[i].request.source_tag,
                    revoked=items[i].request.revoked,
                    generation=items[i].request.generation,
                ),
            )
            for i in result.accepted
        ]
        if entries:
            await self.state.commit(entries, now=self.clock(), recent_s=self.recent_s)
            self.tally["uploaded"] += len(entries)
            await held.complete([items[i].delivery for i in result.accepted], "accepted")
        for error in result.rejected:
            await self._reject(items[error.index], held, error.messages)
