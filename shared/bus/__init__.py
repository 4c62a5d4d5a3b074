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
    Queue,
    Source,
    Subscription,
    Target,
    Topic,
)

__all__ = [
    "MAX_DELIVERY_REASON",
    "Bus",
    "BusUnavailable",
    "DeadLetter",
    "Delivery",
    "EntityCounts",
    "LockLost",
    "Message",
    "Queue",
    "Source",
    "Subscription",
    "Target",
    "Topic",
]
