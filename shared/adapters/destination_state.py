"""One destination's state in Redis: the seen cache, in-flight claims, counters, circuit and
suppressions the filter and the uploader share (DESIGN §4).

Keys: ``shared.adapters.state_redis``."""

from __future__ import annotations

import base64
import functools
import re
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final, NamedTuple

from shared.adapters import state_counters
from shared.adapters import state_scripts as scripts
from shared.adapters.redis_connect import RedisClient
from shared.adapters.state_redis import (
    as_bytes,
    as_text,
    destination_prefix,
    from_ms,
    positive_ms,
    run,
    to_ms,
    translated,
)
from shared.adapters.suppressions import Suppressions, read_version
from shared.core.events import get_logger
from shared.core.fingerprint import SeenEntry

log = get_logger(__name__)

#: How long a ``claim`` call's answer is kept for a resend of that very call (``CLAIM``). A
#: resend is the client's own retry after a dropped connection or a timeout: within its
#: retries times its socket timeout (the services': 3 x 30 s), so five minutes cover it. The
#: receipts cost one byte per claim for that long, next to the claims' own hundred-odd bytes
#: for hours.
CLAIM_RECEIPT_TTL_S: Final = 300.0
#: How long a revoked (or re-published) lineage's seen entry outlives ``now`` in Redis: longer
#: than any expiration a workspace keeps an indicator for (Sentinel's own retention included),
#: so a lineage that passes again goes out under a fresh id, not the revoked one.
REVOCATION_MEMORY: Final = timedelta(days=400)


class Claimed(StrEnum):
    """One claim's answer (``DestinationState.claim_unless_suppressed``)."""

    GRANTED = "1"
    HELD = "0"  # someone else's claim stands: not to be forwarded
    SUPPRESSED = "s"  # the MATI id is suppressed: never to be forwarded


class BatchView(NamedTuple):
    """``DestinationState.batch_view``."""

    entries: list[SeenEntry | None]
    version: int
    born: bool


class CircuitState(StrEnum):
    """The uploader's circuit for one destination, shared by every replica."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


_STIX_ID: Final = re.compile(
    r"indicator--[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
)


@functools.lru_cache(maxsize=4096)
def compact_id(stix_id: str) -> str:
    """``indicator--<uuid>`` as 96 of its random bits in 16 base64url characters (bytes 6 and
    8, which carry the UUID's version and variant, are left out). Two ids share a key with a
    probability of about n² / 2^97 (6 × 10^-16 for ten million indicators), and the key is
    short enough for Redis to keep in 32 bytes (see the key list in ``state_redis``). Anything else
    (``stix_id`` never makes it) is kept as it is.

    Cached: a batch names each id three or four times (seen, claim, commit, release), and
    4,096 ids cover the batches a process holds at once (under 2 MB, whatever the backlog)."""
    if _STIX_ID.fullmatch(stix_id) is None:
        return stix_id
    raw = bytes.fromhex(stix_id[11:].replace("-", ""))
    return base64.urlsafe_b64encode(raw[:6] + raw[7:8] + raw[9:14]).decode("ascii")


class DestinationState:
    """One destination's seen cache, in-flight claims, counters and circuit (DESIGN §4).

    Every per-indicator operation takes a batch and costs one round trip whatever its size.
    """

    def __init__(self, client: RedisClient, destination: str) -> None:
        self.destination = destination
        self.prefix = destination_prefix(destination)
        self.counters_key = f"{self.prefix}counters"
        self.circuit_key = f"{self.prefix}circuit"
        #: Written once the seen cache is trusted (``shared.adapters.workspace_state``).
        self.born_key = f"{self.prefix}born"
        self._client = client
        self.suppressions = Suppressions(client, destination)
        self._claim = client.register_script(scripts.CLAIM)
        self._claim_over = client.register_script(scripts.CLAIM_OVER)
        self._release = client.register_script(scripts.RELEASE)
        self._commit = client.register_script(scripts.COMMIT)
        self._count = client.register_script(scripts.COUNT)
        self._set_circuit = client.register_script(scripts.SET_CIRCUIT)

    def seen_key(self, stix_id: str) -> str:
        return f"{self.prefix}s:{compact_id(stix_id)}"

    def inflight_key(self, stix_id: str) -> str:
        return f"{self.prefix}inflight:{compact_id(stix_id)}"

    def claim_receipt_key(self, token: str) -> str:
        return f"{self.prefix}claimed:{token}"

    async def seen(self, stix_ids: Sequence[str]) -> list[SeenEntry | None]:
        """What was last uploaded for each id (one ``MGET``); unreadable values read as
        ``None``, i.e. "not seen": one extra upload, never a lost indicator."""
        if not stix_ids:
            return []
        with translated("seen"):
            values = await self._client.mget([self.seen_key(i) for i in stix_ids])
        return _entries(values)

    async def seen_with_version(
        self, stix_ids: Sequence[str]
    ) -> tuple[list[SeenEntry | None], int]:
        """``seen`` and the suppressions' version in the same ``MGET``: the filter learns
        whether its copy of the suppressions is current at no extra round trip."""
        view = await self.batch_view(stix_ids)
        return view.entries, view.version

    async def batch_view(self, stix_ids: Sequence[str]) -> BatchView:
        """What the filter reads per batch, in one ``MGET``: the seen entries, the
        suppressions' version and whether the state is born (``WorkspaceState``): a cache lost
        with Redis must not be decided against while it is rebuilt."""
        keys = [self.seen_key(i) for i in stix_ids]
        keys += (self.suppressions.version_key, self.born_key)
        with translated("seen"):
            values = await self._client.mget(keys)
        born = values.pop() is not None
        version = read_version(values.pop())
        return BatchView(_entries(values), version, born)

    async def born(self) -> bool:
        """Whether the seen cache is trusted (``shared.adapters.workspace_state``)."""
        with translated("born"):
            return bool(await self._client.exists(self.born_key))

    async def claim(
        self, claims: Sequence[tuple[str, str]], *, ttl_s: float, redelivery: bool = False
    ) -> list[bool]:
        """``claim_unless_suppressed`` with no suppression check; True = forward it."""
        answers = await self.claim_unless_suppressed(
            [(stix_id, fingerprint, "") for stix_id, fingerprint in claims],
            ttl_s=ttl_s,
            redelivery=redelivery,
        )
        return [answer is Claimed.GRANTED for answer in answers]

    async def claim_unless_suppressed(
        self, claims: Sequence[tuple[str, str, str]], *, ttl_s: float, redelivery: bool = False
    ) -> list[Claimed]:
        """Claim ``(stix_id, fingerprint, mati_id)`` triples before forwarding them; GRANTED =
        forward it. A non-empty ``mati_id`` that is suppressed is answered SUPPRESSED and not
        claimed, checked in the same script: a batch judged before a suppression was added
        cannot queue its indicator after ``suppress add`` took the claim (``claim_over``).

        Otherwise:

        - free: claimed (``SET … PX``), GRANTED;
        - held with the same fingerprint: someone already queued this very version, HELD —
          unless ``redelivery`` (this raw message was delivered before and its forward may
          have failed), then it counts as ours and its TTL restarts, GRANTED;
        - held with a different fingerprint: on a first delivery this is the newer version,
          which supersedes the queued one (the uploader will skip that one, see ``claims``):
          overwritten, GRANTED. On a redelivery it is not: the redelivered message may be
          older than the version that claimed since, so it must not push it aside, HELD.

        ``ttl_s`` should outlast the upload queue's worst backlog: an expired claim only lets a
        later sync queue a duplicate (an idempotent re-upload), never loses anything. Pairs are
        applied in order, so a repeated id in one batch sees the claim its predecessor made.

        A call is answered once: the client resends it when the reply was lost (a dropped
        connection, a Redis restart, a timeout) after the script had run, and that resend gets
        the first run's answer from the call's receipt. Judged afresh, a first delivery would
        find its own claims "held with the same fingerprint" and drop its indicators as
        already queued, with nothing queued (``CLAIM_RECEIPT_TTL_S``).
        """
        if not claims:
            return []
        keys = [self.inflight_key(stix_id) for stix_id, _, _ in claims]
        keys.append(self.suppressions.key)
        keys.append(self.claim_receipt_key(secrets.token_hex(8)))
        args: list[str | int] = [
            positive_ms(ttl_s, "ttl_s"),
            "1" if redelivery else "0",
            positive_ms(CLAIM_RECEIPT_TTL_S, "receipt ttl"),
        ]
        for _, fingerprint, mati_id in claims:
            args += (fingerprint, mati_id)
        answer = as_text(await run(self._claim, keys, args, "claim"))
        return [Claimed(flag) for flag in answer]

    async def claim_over(self, claims: Sequence[tuple[str, str]], *, ttl_s: float) -> None:
        """Take the claims of ``(stix_id, fingerprint)`` whoever holds them: ``suppress add``'s
        revocations. An operator's suppression must win over whatever is queued: an ordinary
        upload (a different fingerprint, which the uploader then skips as superseded), a
        revocation of the same content that may wait behind a back-fill in the upload queue,
        or a claim whose message was lost and would otherwise hold the id until its TTL.
        Queuing a revocation twice costs nothing: the second finds it already uploaded."""
        if not claims:
            return
        keys = [self.inflight_key(stix_id) for stix_id, _ in claims]
        args: list[str | int] = [positive_ms(ttl_s, "ttl_s")]
        args.extend(fingerprint for _, fingerprint in claims)
        await run(self._claim_over, keys, args, "claim over")

    async def release(self, claims: Sequence[tuple[str, str]]) -> list[bool]:
        """Drop claims we made but will not forward (the forward failed, the message was
        dead-lettered); a claim another version took over is left alone. Returns which were
        released."""
        if not claims:
            return []
        keys = [self.inflight_key(stix_id) for stix_id, _ in claims]
        args = [fingerprint for _, fingerprint in claims]
        return [bool(flag) for flag in await run(self._release, keys, args, "release")]

    async def claims(self, stix_ids: Sequence[str]) -> list[str | None]:
        """The fingerprint each id's claim holds now (one ``MGET``): the uploader skips a
        message whose fingerprint is no longer the claimed one, a newer version is queued."""
        if not stix_ids:
            return []
        with translated("claims"):
            values = await self._client.mget([self.inflight_key(i) for i in stix_ids])
        return [None if value is None else as_text(value) for value in values]

    async def claims_and_seen(
        self, stix_ids: Sequence[str]
    ) -> tuple[list[str | None], list[SeenEntry | None]]:
        """``claims`` and ``seen`` of the same ids in one ``MGET``: what the uploader checks
        before it sends (a newer version queued, a revocation already in Sentinel)."""
        if not stix_ids:
            return [], []
        keys = [self.inflight_key(i) for i in stix_ids] + [self.seen_key(i) for i in stix_ids]
        with translated("claims"):
            values = await self._client.mget(keys)
        claims, entries = values[: len(stix_ids)], values[len(stix_ids) :]
        return (
            [None if value is None else as_text(value) for value in claims],
            _entries(entries),
        )

    def recent_key(self, token: str) -> str:
        return f"{self.prefix}recent:{token}"

    async def commit(
        self,
        entries: Sequence[tuple[str, SeenEntry]],
        *,
        now: datetime,
        recent_s: float = 0.0,
    ) -> int:
        """Record uploads Sentinel accepted, atomically for the batch: each ``seen`` key is set
        to the entry and expires at its ``valid_until`` (an entry already past ``now`` is
        removed instead), and each claim still holding the entry's fingerprint is cleared.

        A revoked entry, or one of a later generation, is kept for ``REVOCATION_MEMORY`` past
        ``now`` instead: forgetting it would publish the lineage under a revoked id again
        (refused: STIX forbids un-revoking) or revoke it twice.

        With ``recent_s`` the batch's ids are also kept that long under one ``recent`` key
        (``recent_uploads``): Log Analytics shows an upload minutes later, and ``reconcile``
        must not call it missing meanwhile.

        Call it ONLY after Sentinel accepted these records (DESIGN §4; writing it earlier was
        the vendor's v1.2.3 bug). Returns how many seen keys were written.
        """
        if not entries:
            return 0
        keys: list[str] = []
        args: list[str | int | bytes] = [to_ms(now)]
        for stix_id, entry in entries:
            keys += (self.seen_key(stix_id), self.inflight_key(stix_id))
            args += (entry.encode(), to_ms(seen_expiry(entry, now)), entry.fingerprint)
        recent_ms = round(recent_s * 1000)
        if recent_ms > 0:
            keys.append(self.recent_key(secrets.token_hex(8)))
            ids = "".join(compact_id(stix_id) for stix_id, _ in entries)
            args += (f"{to_ms(now)}:{ids}", recent_ms)
        return int(await run(self._commit, keys, args, "commit"))

    async def forget(self, stix_ids: Sequence[str]) -> int:
        """Drop seen entries (tests, ops: force a re-upload); returns how many existed."""
        if not stix_ids:
            return 0
        with translated("forget"):
            return int(await self._client.delete(*[self.seen_key(i) for i in stix_ids]))

    async def count(self, counts: Mapping[str, int]) -> None:
        """Add to the destination's counters by reason (dropped_low_confidence, forwarded,
        uploaded, rejected, dead_lettered, …), all in one atomic round trip."""
        await state_counters.count(self._count, self.counters_key, counts)
        state_counters.counted(self.destination, counts)

    async def counters(self) -> dict[str, int]:
        return await state_counters.counters(self._client, self.counters_key)

    async def set_circuit(self, state: CircuitState, reason: str = "") -> bool:
        """Set the circuit every replica of this destination obeys; returns whether the state
        changed (``since`` then restarts, by the Redis server's clock)."""
        args = [CircuitState(state).value, reason]
        return bool(await run(self._set_circuit, [self.circuit_key], args, "set circuit"))

    async def circuit(self) -> tuple[CircuitState, str, datetime | None]:
        """``(state, reason, since)``; closed when never set. An unreadable state reads as
        closed: the next failure opens it again, while a stuck "open" would stop the
        destination for good."""
        with translated("circuit"):
            state, reason, since = await self._client.hmget(
                self.circuit_key, ["state", "reason", "since"]
            )
        try:
            parsed = CircuitState(as_text(state)) if state is not None else CircuitState.CLOSED
        except ValueError:
            log.warning("state.circuit_unreadable", key=self.circuit_key)
            return CircuitState.CLOSED, "", None
        try:
            when = None if since is None else from_ms(int(as_text(since)))
        except (ValueError, OverflowError):
            when = None
        return parsed, "" if reason is None else as_text(reason), when


def seen_expiry(entry: SeenEntry, now: datetime) -> datetime:
    """When a seen key may go: at its ``valid_until``, or ``REVOCATION_MEMORY`` past ``now``
    for a revoked or later-generation lineage (see ``DestinationState.commit``)."""
    if entry.revoked or entry.generation:
        return max(entry.valid_until, now + REVOCATION_MEMORY)
    return entry.valid_until


def _entries(values: Sequence[bytes | str | None]) -> list[SeenEntry | None]:
    """Seen entries as ``MGET`` returns them; a missing key reads as ``None``."""
    return [None if value is None else SeenEntry.decode(as_bytes(value)) for value in values]
