"""What Redis does when it runs out of memory, read from the server, and whether it takes
writes right now.

The services need Redis to *refuse* writes at ``maxmemory`` (``maxmemory-policy noeviction``),
never to drop keys to make room: a refused write is an error every loop already backs off
from, with readiness false and nothing lost, while an evicted key is lost silently. Azure
Cache for Redis defaults to ``volatile-lru``, which evicts keys with a TTL: seen entries (an
evicted one costs a re-upload), in-flight claims (a needless upload), the fetcher's lease (it
stops the sync; the next one resumes from the checkpoint). The ``allkeys-*`` policies evict
anything: on ``BUS=redis`` the queues themselves (messages lost), the checkpoint and the
suppressions. So each service reads the policy at start and warns, ``status`` shows it, and
the gauges export it.

The policy is read with ``INFO memory`` (``maxmemory_policy``, ``maxmemory``,
``used_memory``), which Azure Cache for Redis serves although it refuses ``CONFIG``;
``CONFIG GET`` is only a fall-back for a server whose ``INFO`` leaves them out. A server that
answers but will not say is "unknown": never a reason not to start.

Whether Redis takes writes is asked with a write that changes nothing (``SET <key> "" XX``
on a key nobody creates): Redis decides to refuse a write before running it (out of memory,
a read-only replica after a failover, a failing snapshot), so this is refused exactly when the
services' writes are, while ``PING`` still answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from redis.exceptions import OutOfMemoryError, ReadOnlyError, RedisError, ResponseError

from shared.adapters import redis_errors
from shared.adapters.redis_connect import RedisClient
from shared.adapters.state_redis import destination_prefix, fetcher_key
from shared.core.errors import NotReady, StateUnavailable

NOEVICTION: Final = "noeviction"
#: What the fix is, in the words of a warning line and of ``status``.
FIX: Final = "set maxmemory-policy noeviction (Azure Cache for Redis: Advanced settings)"
#: The write-probe's key's last part (``probe_key``).
PROBE_NAME: Final = "write-probe"


@dataclass(frozen=True, slots=True)
class RedisMemory:
    """``maxmemory-policy``, ``maxmemory`` (bytes, 0: no limit) and ``used_memory`` (bytes),
    each ``None`` when the server would not say."""

    policy: str | None
    maxmemory: int | None
    used: int | None

    @property
    def evicting(self) -> bool | None:
        """Whether Redis drops keys at ``maxmemory`` instead of refusing writes (``None``:
        unknown). Said of the policy, whatever ``maxmemory`` is now: a limit can be set at any
        time, and Azure always sets one."""
        return None if self.policy is None else self.policy != NOEVICTION

    @property
    def used_ratio(self) -> float | None:
        """``used_memory / maxmemory``; ``None`` without a limit or when either is unknown."""
        if not self.maxmemory or self.used is None:
            return None
        return self.used / self.maxmemory

    def what_evicts(self) -> str:
        """What the policy does at ``maxmemory`` to our keys, and what that costs."""
        if self.policy is None:
            return "the server would not say"
        if self.policy == NOEVICTION:
            return "writes refused at maxmemory, nothing evicted"
        if self.policy.startswith("volatile-"):
            return (
                "evicts keys with a TTL at maxmemory: seen entries and claims (re-uploads), "
                "the fetcher's lease"
            )
        return (
            "evicts any key at maxmemory: on BUS=redis queued messages (lost), the checkpoint, "
            "suppressions"
        )

    def to_dict(self) -> dict[str, Any]:
        """For ``status --json``."""
        ratio = self.used_ratio
        return {
            "maxmemory_policy": self.policy,
            "evicting": self.evicting,
            "maxmemory": self.maxmemory,
            "used_memory": self.used,
            "used_ratio": None if ratio is None else round(ratio, 4),
        }


async def read_memory(client: RedisClient) -> RedisMemory:
    """The server's policy, limit and use. Raises ``StateUnavailable`` when Redis does not
    answer (the caller asks again later); a server that answers but refuses the questions
    gives ``None`` fields."""
    try:
        info = await client.info("memory")
    except ResponseError:  # INFO renamed or refused (an ACL): nothing to learn from it
        info = {}
    except (RedisError, OSError) as exc:
        raise StateUnavailable(redis_errors.describe("redis", "info memory", exc)) from exc
    memory = _merged([_parsed(node) for node in _nodes(info)])
    if memory.policy is not None and memory.maxmemory is not None:
        return memory
    try:
        config = await client.config_get("maxmemory*")
    except ResponseError:  # Azure Cache for Redis refuses CONFIG: keep what INFO said
        return memory
    except (RedisError, OSError) as exc:
        raise StateUnavailable(redis_errors.describe("redis", "config get", exc)) from exc
    found = _parsed(
        {
            "maxmemory_policy": _field(config, "maxmemory-policy"),
            "maxmemory": _field(config, "maxmemory"),
        }
    )
    return RedisMemory(
        policy=memory.policy or found.policy,
        maxmemory=memory.maxmemory if memory.maxmemory is not None else found.maxmemory,
        used=memory.used,
    )


def probe_key(destination: str | None) -> str:
    """The write-probe's key in the slot of ``destination``'s state (``None``: the
    fetcher's), so on Redis Cluster the probe asks the shard the service writes to. Nobody
    ever creates it (``check_writes``)."""
    if destination is None:
        return fetcher_key(PROBE_NAME)
    return destination_prefix(destination) + PROBE_NAME


async def check_writes(client: RedisClient, key: str) -> None:
    """Raise ``NotReady`` naming the cause when Redis refuses writes now; a Redis that does
    not answer raises what the client raised (the ``redis`` readiness check says more).

    ``XX``: the key is written only if it exists, and nobody creates it, so the probe leaves
    nothing behind; Redis still refuses it as the write it is."""
    try:
        await client.set(key, b"", xx=True, px=1000)
    except ResponseError as exc:
        raise NotReady(f"redis refuses writes ({refusal(exc)})") from exc


def refusal(exc: ResponseError) -> str:
    """The reply's code (``OOM``, ``READONLY``, ``MISCONF``, ``NOPERM``…), never its text,
    which can carry a key name."""
    if isinstance(exc, OutOfMemoryError):
        return "OOM: used memory above maxmemory"
    if isinstance(exc, ReadOnlyError):
        return "READONLY: a replica"
    code = str(exc).split(" ", 1)[0]
    return code if code.isupper() and code.isalpha() else type(exc).__name__


def _nodes(info: Any) -> list[Mapping[str, Any]]:
    """``INFO`` of one server, or of each node of a cluster (a mapping of node to ``INFO``)."""
    if not isinstance(info, Mapping):
        return []
    if info and all(isinstance(value, Mapping) for value in info.values()):
        return list(info.values())
    return [info]


def _parsed(info: Mapping[str, Any]) -> RedisMemory:
    policy = info.get("maxmemory_policy")
    return RedisMemory(
        policy=_text(policy) if policy is not None else None,
        maxmemory=_int(info.get("maxmemory")),
        used=_int(info.get("used_memory")),
    )


def _merged(nodes: list[RedisMemory]) -> RedisMemory:
    """One answer for a cluster: the policy that evicts if any node's does, and the node
    nearest its limit (the one that refuses writes first)."""
    if not nodes:
        return RedisMemory(None, None, None)
    policies = [node.policy for node in nodes if node.policy is not None]
    evicting = [p for p in policies if p != NOEVICTION]
    policy = evicting[0] if evicting else (policies[0] if policies else None)
    fullest = max(nodes, key=lambda node: node.used_ratio or 0.0)
    return RedisMemory(policy, fullest.maxmemory, fullest.used)


def _field(config: Any, name: str) -> Any:
    if not isinstance(config, Mapping):
        return None
    value = config.get(name)
    return value if value is not None else config.get(name.encode())


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _int(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return int(_text(value))
    except ValueError:
        return None
