"""Where the Redis Streams bus keeps each entity: its keys, named so every script stays in one
Redis Cluster slot, and the entity names that cannot break them.

Keys (``P`` = ``prefix``, default ``m2s``)
==========================================

Each entity's keys share one Redis Cluster hash tag, so every script touches a single slot:

``P:{<queue>}:stream`` / ``P:{<topic>/<subscription>}:stream``
    stream; fields ``body``, ``message_id``, ``properties`` (JSON object). Consumer group
    ``receivers``. Entries are deleted once completed or dead-lettered.
``P:{<entity>}:dlq``
    stream; fields ``body``, ``message_id``, ``properties``, ``reason``, ``description``,
    ``delivery_count``. Unbounded: a dead letter leaves only by ``replay`` or an operator.
``P:{<entity>}:dup:0`` / ``P:{<entity>}:dup:1``
    hashes of message id → publish time (epoch ms), plus the slot they hold under the empty
    field; each holds one slot of ``duplicate_window_s`` and is emptied when its parity's next
    slot begins, so the ids of the last one to two windows are noted (about 90 bytes each).
``P:{<topic>}:subscriptions``
    set of subscription names; written by ``ensure(Subscription)``, read by every topic
    publish.

Entity names are letters, digits, ``.``, ``_`` and ``-`` (no ``/``, so a queue can never be
mistaken for a subscription, and no braces, which would break the hash tag).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from shared.contract.bus import Queue, Source

NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,259}")
_PREFIX: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


@dataclass(frozen=True, slots=True)
class EntityKeys:
    """The Redis keys of one receivable entity (a queue or a subscription)."""

    stream: str
    dead_letter: str
    #: The two hashes of duplicate detection (``redis_streams_scripts.PUBLISH``), by slot parity.
    duplicates: tuple[str, str]


def checked_prefix(prefix: str) -> str:
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(f"prefix must match {_PREFIX.pattern}, got {prefix!r}")
    return prefix


def entity_keys(prefix: str, source: Source) -> EntityKeys:
    if isinstance(source, Queue):
        tag = _checked(source.name, "queue")
    else:
        tag = f"{_checked(source.topic, 'topic')}/{_checked(source.name, 'subscription')}"
    base = f"{prefix}:{{{tag}}}:"
    return EntityKeys(
        stream=base + "stream",
        dead_letter=base + "dlq",
        duplicates=(base + "dup:0", base + "dup:1"),
    )


def subscriptions_key(prefix: str, topic: str) -> str:
    return f"{prefix}:{{{_checked(topic, 'topic')}}}:subscriptions"


def _checked(name: str, what: str) -> str:
    if not NAME.fullmatch(name):
        raise ValueError(
            f"{what} name must match {NAME.pattern} (letters, digits, '.', '_', '-'), got {name!r}"
        )
    return name
