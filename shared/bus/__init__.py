"""The bus interface and its backends; services import only from here."""

from shared.bus.base import (
    MAX_DELIVERY_REASON,
    Bus,
    BusUnavailable,
    DeadLetter,
    Delivery,
    EntityCounts,
    LockLost,
    Message,
    Peeked,
    Queue,
    Source,
    Subscription,
    Target,
    Topic,
)
from shared.bus.redis_streams import RedisStreamsBus

__all__ = [
    "MAX_DELIVERY_REASON",
    "Bus",
    "BusUnavailable",
    "DeadLetter",
    "Delivery",
    "EntityCounts",
    "LockLost",
    "Message",
    "Peeked",
    "Queue",
    "RedisStreamsBus",
    "Source",
    "Subscription",
    "Target",
    "Topic",
]
