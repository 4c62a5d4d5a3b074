"""What every service does around its loop: settings, logs, connections, signals, exit codes.

A service is a coroutine ``loop(runtime)`` that runs until ``runtime.stop`` is set. SIGTERM
(Kubernetes stopping the pod) and SIGINT set it: the loop stops taking work, finishes or
releases what it holds within ``DRAIN_TIMEOUT_SECONDS``, and returns. A second signal cancels
the loop outright; whatever it held is then released by lock expiry, never lost.

Exit codes: 0 after a clean stop; 2 when the service cannot run as configured (an invalid
setting, before anything connects; a probe port already taken; an unreadable CA file; a bus
entity that does not exist), said in one line; 1 when the loop crashed (the pod restarts;
every effect is idempotent, so restarting is safe). A Redis or bus that does not answer yet
is waited for, with readiness false, since in a cluster it may simply start later.

Redis must refuse writes when it is full rather than evict keys (``maxmemory-policy
noeviction``; ``shared.adapters.redis_memory`` says why): each service reads the policy once
Redis answers and warns in one line when it evicts; readiness is false while Redis refuses
writes, and the gauges export both, so an alert sees them.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Final

import aiohttp
from redis.asyncio import Redis

from services import observability
from services.configuration import load
from shared.adapters.http import open_session
from shared.adapters.redis_connect import RedisClient, resilient
from shared.adapters.redis_memory import FIX, check_writes, probe_key, read_memory
from shared.adapters.redis_streams import RedisStreamsBus
from shared.adapters.servicebus import ServiceBusBus
from shared.adapters.tls import client_context
from shared.contract.bus import Bus
from shared.core.errors import ConfigError, FatalError, StateUnavailable
from shared.core.secrets import Secret
from shared.core.setting_values import url_password
from shared.core.settings import Service, Settings
from shared.core.timing import sleep_unless_stopped
from shared.telemetry import logs, tracing
from shared.telemetry.gauges import Read, Reading, readiness_read
from shared.telemetry.health import Health, HealthServer

log = logs.get_logger(__name__)


@dataclass
class Runtime:
    """The connections a service loop works with, opened and closed around it."""

    settings: Settings
    service: Service
    consumer: str
    redis: Redis
    bus: Bus
    stop: asyncio.Event
    http: aiohttp.ClientSession | None = None
    health: Health = field(default_factory=Health)
    #: The destinations this process serves, by name: the fetcher feeds all of them, a
    #: filter or uploader serves its own (``settings``). Empty: ``settings``' alone.
    destinations: Mapping[str, Settings] = field(default_factory=dict)

    def served(self) -> Mapping[str, Settings]:
        return self.destinations or {self.settings.destination: self.settings}


def configure_logs(settings: Settings, destinations: Iterable[Settings] = ()) -> None:
    """Logs in the settings' format, masking every secret the process knows: its own and
    each destination's client secret."""
    redis_password = url_password(settings.redis_url)
    logs.configure(
        level=settings.log_level,
        fmt=settings.log_format,
        secrets=[
            settings.mati_api_key,
            settings.mati_api_secret,
            settings.azure_client_secret,
            settings.servicebus_connection_string,
            Secret(redis_password) if redis_password else None,
            *(each.azure_client_secret for each in destinations),
        ],
    )


def consumer_name(service: Service) -> str:
    """Unique per process, readable in ``XINFO`` and logs: ``uploader-<host>-<pid>``."""
    return f"{service.value}-{socket.gethostname()}-{os.getpid()}"


def lanes_for(bus: Bus) -> int:
    """How many batches a filter or uploader works at once. Two on Redis Streams, whose every
    call stands on its own (atomic scripts over pooled connections): one batch's Redis work
    overlaps the other's parsing or its request to Sentinel, which one replica needs to keep
    its Redis, and a wide-open quota, busy. One on Service Bus, whose SDK receiver is not safe
    for a receive or renewal racing a batch's settlements on its link (see
    ``ServiceBusBus.renew_locks``); more replicas scale it instead."""
    return 2 if isinstance(bus, RedisStreamsBus) else 1


def open_bus(settings: Settings, redis: Redis, consumer: str) -> Bus:
    if settings.bus == "redis":
        return RedisStreamsBus(
            redis,
            consumer=consumer,
            lock_duration_s=settings.bus_lock_duration_seconds,
            max_delivery_count=settings.bus_max_delivery_count,
        )
    if settings.bus == "servicebus":
        # Lock duration and maximum delivery count are entity properties on Service Bus
        # (docs/servicebus.md): BUS_LOCK_DURATION_SECONDS and BUS_MAX_DELIVERY_COUNT must match
        # what the entities were created with.
        if settings.servicebus_connection_string:
            return ServiceBusBus.from_connection_string(
                settings.servicebus_connection_string.reveal(), consumer=consumer
            )
        if settings.servicebus_namespace:
            return ServiceBusBus.from_namespace(settings.servicebus_namespace, consumer=consumer)
        raise ConfigError(
            ["BUS=servicebus needs SERVICEBUS_NAMESPACE or SERVICEBUS_CONNECTION_STRING"]
        )
    raise ConfigError([f"BUS={settings.bus!r} is not available: use redis or servicebus"])


@asynccontextmanager
async def open_runtime(
    settings: Settings,
    service: Service,
    *,
    http: bool,
    destinations: Mapping[str, Settings] | None = None,
) -> AsyncIterator[Runtime]:
    async with AsyncExitStack() as stack:
        redis = resilient(settings.redis_url, socket_timeout_s=30, socket_connect_timeout=10)
        stack.push_async_callback(redis.aclose)
        consumer = consumer_name(service)
        bus = open_bus(settings, redis, consumer)
        stack.push_async_callback(bus.aclose)
        session = None
        if http:
            session = open_session(client_context(settings.ssl_cert_file))
            stack.push_async_callback(session.close)
        health = Health()

        async def redis_answers() -> None:
            await redis.ping()

        async def redis_takes_writes() -> None:
            # The fetcher writes in its own slot, the others in the destination's.
            slot = None if service is Service.FETCHER else settings.destination
            await check_writes(redis, probe_key(slot))

        health.add_check("redis", redis_answers)
        health.add_check("redis_writes", redis_takes_writes)
        health.add_check("bus", bus.ping)
        yield Runtime(
            settings=settings,
            service=service,
            consumer=consumer,
            redis=redis,
            bus=bus,
            stop=asyncio.Event(),
            health=health,
            http=session,
            destinations=destinations or {},
        )


Loop = Callable[[Runtime], Awaitable[None]]

#: The longest wait between two attempts to read Redis's eviction policy at start.
POLICY_RETRY_MAX_S: Final = 60.0


async def warn_if_evicting(redis: RedisClient, stop: asyncio.Event) -> None:
    """Read Redis's ``maxmemory-policy`` once it answers (it may start after us) and, when it
    drops keys at ``maxmemory``, say so in one warning line with the fix. Never fails the
    service: a policy nobody can read is a warning too."""
    wait, memory = 1.0, None
    while memory is None:
        try:
            memory = await read_memory(redis)
        except StateUnavailable:
            if wait == 1.0:  # once: why the policy line has not come yet
                log.info("redis.policy_unread", reason="redis does not answer yet")
            if not await sleep_unless_stopped(stop, wait):
                return
            wait = min(wait * 2, POLICY_RETRY_MAX_S)
    if memory.evicting:
        log.warning(
            "redis.evicting_policy",
            maxmemory_policy=memory.policy,
            effect=memory.what_evicts(),
            fix=FIX,
        )
    elif memory.policy is None:
        log.warning("redis.policy_unknown", maxmemory_policy="unknown", fix=f"make sure: {FIX}")
    else:
        log.info("redis.policy", maxmemory_policy=memory.policy)


def redis_memory_read(redis: RedisClient, destination: str) -> Read:
    """Whether Redis's policy evicts, and how full it is; what nobody knows is left out."""
    attributes = {"destination": destination}

    async def read() -> list[Reading]:
        memory = await read_memory(redis)
        readings: list[Reading] = []
        if memory.evicting is not None:
            evicting = 1.0 if memory.evicting else 0.0
            readings.append(("mati2sentinel_redis_evicting", evicting, attributes))
        ratio = memory.used_ratio
        if ratio is not None:
            readings.append(("mati2sentinel_redis_memory_used_ratio", ratio, attributes))
        return readings

    return read


#: How often the event loop proves it is alive; /livez fails after HEARTBEAT_STALE_S without.
HEARTBEAT_S = 5.0


async def _heartbeat(health: Health) -> None:
    """Beats while the event loop runs. A loop blocked by a hung call stops beating, and the
    kubelet restarts the pod; a service waiting hours for its next sync still beats."""
    while True:
        health.beat()
        await asyncio.sleep(HEARTBEAT_S)


@asynccontextmanager
async def _probes(health: Health, port: int | None) -> AsyncIterator[int | None]:
    """``/livez``, ``/readyz`` and ``/metrics`` on ``port`` (``None``: none at all, for a
    one-shot command); yields the port listened on. A port that cannot be had is a start-up
    failure stated in one line, like a bad setting."""
    if port is None:
        yield None
        return
    server = HealthServer(health, port=port)
    try:
        await server.start()
    except OSError as exc:
        await server.stop()
        reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
        raise ConfigError(
            [
                f"HEALTH_PORT={port} cannot be served ({reason.lower()}): stop the process "
                "that holds it, or set HEALTH_PORT to a free port (0 picks any)"
            ]
        ) from None
    try:
        yield server.port
    finally:
        await server.stop()


async def _serve(
    settings: Settings,
    service: Service,
    loop: Loop,
    *,
    http: bool,
    probes: bool,
    destinations: Mapping[str, Settings],
) -> int:
    async with (
        open_runtime(settings, service, http=http, destinations=destinations) as runtime,
        # Counters, gauges and upload latency; /metrics on the probes' port.
        observability.serving(
            service,
            settings,
            redis=runtime.redis,
            bus=runtime.bus,
            health=runtime.health,
            destinations=list(runtime.served()),
        ) as metrics,
        _probes(runtime.health, settings.health_port if probes else None) as port,
    ):
        # Every service reports its own readiness and its view of Redis's memory.
        metrics.gauges.add("readiness", readiness_read(runtime.health, settings.destination))
        metrics.gauges.add("redis_memory", redis_memory_read(runtime.redis, settings.destination))
        beating = asyncio.create_task(_heartbeat(runtime.health))
        task = asyncio.current_task()
        signals = asyncio.get_running_loop()

        def on_signal() -> None:
            if runtime.stop.is_set() and task is not None:
                log.warning("service.forced_stop", service=service.value)
                task.cancel()
            runtime.stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            signals.add_signal_handler(signum, on_signal)
        with logs.bind(service=service.value, destination=settings.destination):
            log.info(
                "service.started",
                consumer=runtime.consumer,
                bus=settings.bus,
                health_port=port,
            )
            # In the bound context, so its line names the service like every other.
            policy = asyncio.create_task(warn_if_evicting(runtime.redis, runtime.stop))
            try:
                await loop(runtime)
            except asyncio.CancelledError:
                log.warning("service.cancelled")
                return 1
            except FatalError as exc:
                # A missing bus entity, a refused bus or credential: restarting cannot help,
                # an operator must act. One line that says what, not a traceback.
                log.error("service.cannot_run", error=type(exc).__name__, detail=str(exc))
                return 2
            except Exception:
                log.exception("service.crashed")
                return 1
            finally:
                beating.cancel()
                policy.cancel()
            log.info("service.stopped")
            return 0


#: Net allocations of container objects between two young-generation collections (CPython's
#: default is 700). A filter batch holds some 40 objects per record until it is settled, so
#: with the default a batch of 500 set off dozens of collections, each moving survivors
#: towards the expensive full ones: measured, a third of the time to decode a record. Nearly
#: everything here is freed by reference counting, so the higher bound costs little memory.
GC_YOUNG_THRESHOLD: Final = 20_000


def tune_gc() -> None:
    """Collect less often, and never re-examine what start-up built (modules, settings,
    clients): ``gc.freeze`` moves it out of every later collection."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 50, 100)


def run_service(
    service: Service,
    loop: Loop,
    *,
    http: bool,
    probes: bool = True,
    destination: str | None = None,
) -> int:
    """Run ``loop`` as ``service`` until a signal stops it; returns the exit code.

    ``probes=False`` for a one-shot command (``sync --once``): it binds no port, so it runs
    beside the long-running services of one host. ``destination``: ``--destination``."""
    settings, destinations = load(service, destination)
    configure_logs(settings, destinations.values())
    tune_gc()
    try:
        # Traces: exporters from OTEL_TRACES_EXPORTER; what is buffered is flushed at exit.
        with tracing.configured(service.value, os.environ):
            return asyncio.run(
                _serve(settings, service, loop, http=http, probes=probes, destinations=destinations)
            )
    except ConfigError as exc:
        for line in exc.problems:
            print(f"mati2sentinel: {line}", file=sys.stderr)
        return 2
