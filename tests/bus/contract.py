"""The bus contract: what every backend must do, whatever carries the messages (DESIGN.md §3).

A backend's test module subclasses ``BusContract`` as ``Test<Backend>Contract`` and provides one
fixture, ``bus_factory``: ``await bus_factory(consumer, settings)`` returns a ``Bus`` on one
shared broker, as the process named ``consumer`` would see it, with ``settings`` (lock duration,
maximum delivery count, duplicate-detection window) applied to every entity it creates or uses.
For Service Bus those are entity properties: the factory applies them when ``ensure`` creates
the entity. The factory closes what it made when the test ends.

Every test uses entity names of its own (``name``), so the suite can run against a broker
that outlives one test. Every awaited bus call is bounded (``BoundedBus``): a hung backend
fails the test that hung, naming the call, instead of stalling the run. No test asserts on
speed; the short waits in the tests only let locks and windows expire.

The tests themselves are in contract_delivery.py, contract_locks.py, contract_dead_letters.py
and contract_counts.py, one part each; what they run on is in contract_rig.py.
"""

from __future__ import annotations

from tests.bus.contract_counts import CountContract
from tests.bus.contract_dead_letters import DeadLetterContract
from tests.bus.contract_delivery import DeliveryContract
from tests.bus.contract_locks import LockContract
from tests.bus.contract_rig import BusFactory, BusSettings, ids, message

__all__ = ["BusContract", "BusFactory", "BusSettings", "ids", "message"]


class BusContract(DeliveryContract, LockContract, DeadLetterContract, CountContract):
    """Service Bus peek-lock semantics (``shared.contract.bus``), held against one backend."""
