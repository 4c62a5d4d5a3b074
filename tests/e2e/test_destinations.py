"""One fetch, three workspaces (issue 17; DESIGN §6), through the real services.

- **alpha** (the main tenant) takes nearly everything, hashes for 30 days;
- **bravo** (an app in another tenant, behind its own Entra) takes confidence and threat score
  from 30, no URLs, and IPs for 14 days;
- **charlie** (another tenant too) has its client secret revoked while its uploads run.

Each healthy workspace must end with exactly the set its own filters accept, each object once,
having used its own full quota (not a share of one); charlie's backlog must wait in its own
queue, never slowing the others, and arrive once its secret is fixed, with MATI paged once in
all: the held backlog is delivered from the queue, not fetched again.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from harness.pipeline import Pipeline, mati_properties
from shared.adapters.servicebus_messages import REPLAY_TO
from shared.contract.messages import INDICATORS, revocation_queue, upload_queue
from simulators.feed import Feed
from simulators.sentinel import SentinelSimulator
from tests.e2e.pipeline_tools import PipelineFactory
from tests.helpers import wait_for
from tests.servicebus_peer import FakeServiceBus, ReplayRule

#: A small quota in a short window, so a backlog meets it within seconds, even through one
#: Service Bus receiver: 2 requests of at most 100 objects per 2 s, per workspace.
QUOTA = {"SENTINEL_REQUESTS_PER_MINUTE": 2, "SENTINEL_RATE_WINDOW_SECONDS": 2}
PER_WINDOW = 2
WINDOW_S = 2.0
SETTINGS: dict[str, dict[str, Any]] = {
    "alpha": {
        "MINIMUM_CONFIDENCE": 0,
        "MINIMUM_THREAT_SCORE": 0,
        "EXCLUDE_OSINT": False,
        "HASH_INDICATOR_EXPIRATION": 30,
        **QUOTA,
    },
    "bravo": {
        "MINIMUM_CONFIDENCE": 30,
        "MINIMUM_THREAT_SCORE": 30,
        "INCLUDE_URL": False,
        "IP_INDICATOR_EXPIRATION": 14,
        **QUOTA,
    },
    # A slower quota, so the revocation finds most of its backlog still to send.
    "charlie": {
        "MINIMUM_CONFIDENCE": 50,
        "MINIMUM_THREAT_SCORE": 50,
        **QUOTA,
        "SENTINEL_REQUESTS_PER_MINUTE": 1,
    },
}
HEALTHY = ("alpha", "bravo")


@pytest.fixture(params=["redis", "servicebus"])
def bus(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The embedded bus, or Service Bus through the real SDK against the fake peer with every
    destination's entities, as an operator creates them (docs/servicebus.md)."""
    if request.param == "redis":
        yield {"BUS": "redis"}
        return
    with FakeServiceBus() as namespace:
        namespace.create_topic(INDICATORS.name)
        for name in SETTINGS:
            namespace.create_subscription(INDICATORS.name, name, rule=ReplayRule(REPLAY_TO, name))
            namespace.create_queue(upload_queue(name).name)
            namespace.create_queue(revocation_queue(name).name)
        yield {"BUS": "servicebus", "SERVICEBUS_CONNECTION_STRING": namespace.connection_string}
        assert namespace.failure is None, f"the fake Service Bus failed: {namespace.failure!r}"


def assert_holds_exactly(pipeline: Pipeline, name: str, sentinel: SentinelSimulator) -> int:
    """The workspace holds exactly what ``name``'s filters accept, each object uploaded once;
    how many objects that is."""
    expected = pipeline.expected(settings=pipeline.settings_of(name)).objects
    store = sentinel.store
    assert store.keys() == expected.keys(), (
        f"{name}: {len(expected.keys() - store.keys())} missing, "
        f"{len(store.keys() - expected.keys())} nobody expected"
    )
    stale = [k for k, fp in expected.items() if mati_properties(store[k])["fingerprint"] != fp]
    assert not stale, f"{name}: {len(stale)} objects hold other content"
    again = [k for k in expected if sentinel.uploads_for(k) != 1]
    assert not again, f"{name}: {len(again)} objects uploaded other than once"
    return len(expected)


@pytest.mark.timeout(240)
async def test_one_fetch_feeds_three_workspaces_and_a_broken_one_waits_alone(
    make_pipeline: PipelineFactory, bus: dict[str, str]
) -> None:
    feed = Feed(seed=17, count=2500, days=20)
    pipeline = await make_pipeline(feed=feed, env=bus)
    workspaces = {
        "alpha": await pipeline.add_destination(
            "alpha", SETTINGS["alpha"], requests_per_minute=PER_WINDOW, window_s=WINDOW_S
        ),
        "bravo": await pipeline.add_destination(
            "bravo",
            SETTINGS["bravo"],
            own_tenant=True,
            requests_per_minute=PER_WINDOW,
            window_s=WINDOW_S,
        ),
        # Tokens that last seconds, so the revoked secret bites at once, as it does in
        # production once the hour-long token runs out.
        "charlie": await pipeline.add_destination(
            "charlie",
            SETTINGS["charlie"],
            own_tenant=True,
            token_ttl_s=3,
            requests_per_minute=1,
            window_s=WINDOW_S,
        ),
    }
    assert workspaces["bravo"].entra is not workspaces["alpha"].entra
    uploaders = {}
    for name in SETTINGS:
        await pipeline.start_service("filter", label=f"filter-{name}", destination=name)
        uploaders[name] = await pipeline.start_service(
            "uploader", label=f"uploader-{name}", destination=name
        )
    assert await pipeline.sync_once() == 0
    charlie = workspaces["charlie"]

    # Mid-run: once charlie's uploads are under way, an admin revokes its secret.
    await wait_for(lambda: len(charlie.sentinel.store) > 0, 60, what="charlie's first upload")
    old_secret = charlie.credentials.client_secret
    new_secret = charlie.rotate_secret()
    assert new_secret != old_secret

    for name in HEALTHY:
        await pipeline.wait_drained(destination=name, timeout_s=120)
    held = await pipeline.queued_uploads("charlie")
    assert held > 0, "charlie's backlog was delivered despite its revoked secret"
    for name in HEALTHY:
        sentinel = workspaces[name].sentinel
        # Several windows' worth, so the quota binds...
        assert assert_holds_exactly(pipeline, name, sentinel) > 3 * PER_WINDOW * 100
        # ...and it used all of its own: a full window's requests, never more, no 429.
        assert sentinel.max_requests_in_any_window(admitted_only=True) == PER_WINDOW
        assert not [r for r in sentinel.request_log if r.status == 429]
    assert (
        0
        < len(charlie.sentinel.store)
        < len(pipeline.expected(settings=pipeline.settings_of("charlie")).objects)
    )

    # The operator puts the new secret where the file's reference points and restarts
    # charlie's uploader (a rollout): its held backlog drains, nothing is fetched again.
    await pipeline.stop_service(uploaders["charlie"])
    pipeline.change_settings({charlie.secret_variable: new_secret})
    await pipeline.start_service("uploader", label="uploader-charlie-fixed", destination="charlie")
    await pipeline.wait_drained(destination="charlie", timeout_s=120)
    assert_holds_exactly(pipeline, "charlie", charlie.sentinel)
    assert pipeline.sims.mati.indicators_served == len(feed)
    assert pipeline.sims.mati.scrolls_opened == 1
    feed_counters, _ = await pipeline.counters("alpha")
    assert feed_counters.get("sync_completed") == 1
