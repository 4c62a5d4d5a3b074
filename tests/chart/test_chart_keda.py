"""KEDA scaling on the entities the services really read (the Service Bus subscription and
upload queue, or the Redis streams the bus names), so the filter and the uploader scale with
their own backlog and the fetcher never scales.
"""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis

from shared.adapters.redis_streams import GROUP, RedisStreamsBus
from shared.contract.messages import INDICATORS, revocation_queue, subscription, upload_queue
from tests.chart.chart_rig import Manifest, deployments, one, render

pytestmark = pytest.mark.usefixtures("chart_tools")


def _triggers(docs: list[Manifest], component: str) -> list[dict[str, Any]]:
    so = one(docs, "ScaledObject", f"-{component}")
    target = dict(deployments(docs))[component]["metadata"]["name"]
    assert so["spec"]["scaleTargetRef"]["name"] == target
    triggers: list[dict[str, Any]] = so["spec"]["triggers"]
    return triggers


@pytest.mark.parametrize("destination", ["default", "prod-eu"])
def test_keda_service_bus_scales_on_the_subscription_and_both_queues(destination: str) -> None:
    docs = render("servicebus", f"settings.DESTINATION={destination}")
    (f,) = _triggers(docs, "filter")
    u, lane = _triggers(docs, "uploader")
    assert f["type"] == u["type"] == lane["type"] == "azure-servicebus"
    assert f["metadata"]["topicName"] == INDICATORS.name == subscription(destination).topic
    assert f["metadata"]["subscriptionName"] == subscription(destination).name == destination
    assert u["metadata"]["queueName"] == upload_queue(destination).name == f"upload.{destination}"
    assert lane["metadata"]["queueName"] == revocation_queue(destination).name
    for t in (f, u, lane):
        assert t["metadata"]["namespace"] == "m2s-example"
        assert t["metadata"]["cloud"] == "AzurePublicCloud"
        assert int(t["metadata"]["messageCount"]) > 0
    auth = one(docs, "TriggerAuthentication")
    assert auth["spec"] == {"podIdentity": {"provider": "azure-workload"}}
    assert (
        f["authenticationRef"]["name"] == u["authenticationRef"]["name"] == auth["metadata"]["name"]
    )


def test_keda_uploader_replicas_stay_within_what_one_quota_uses() -> None:
    docs = render("servicebus")
    uploader = one(docs, "ScaledObject", "-uploader")
    assert 1 <= uploader["spec"]["maxReplicaCount"] <= 10
    assert one(docs, "ScaledObject", "-filter")["spec"]["maxReplicaCount"] >= 1


def test_keda_sovereign_cloud_namespace() -> None:
    docs = render(
        "servicebus", "settings.SERVICEBUS_NAMESPACE=m2s-gov.servicebus.usgovcloudapi.net"
    )
    (f,) = _triggers(docs, "filter")
    assert f["metadata"]["namespace"] == "m2s-gov"
    assert f["metadata"]["cloud"] == "AzureUSGovernmentCloud"


async def test_keda_redis_streams_scale_on_the_streams_the_bus_uses() -> None:
    client = Redis()
    try:
        bus = RedisStreamsBus(client, consumer="chart-test")
        for destination in ("default", "prod-eu"):
            docs = render("redis", f"settings.DESTINATION={destination}")
            (f,) = _triggers(docs, "filter")
            u, lane = _triggers(docs, "uploader")
            assert f["type"] == u["type"] == lane["type"] == "redis-streams"
            assert f["metadata"]["stream"] == bus.keys(subscription(destination)).stream
            assert u["metadata"]["stream"] == bus.keys(upload_queue(destination)).stream
            assert lane["metadata"]["stream"] == bus.keys(revocation_queue(destination)).stream
            assert f["metadata"]["stream"] == f"m2s:{{indicators/{destination}}}:stream"
            assert u["metadata"]["stream"] == f"m2s:{{upload.{destination}}}:stream"
            for t in (f, u, lane):
                # Completed entries are deleted, so XLEN is the backlog; a consumerGroup would
                # switch KEDA to pending entries, which miss what was never delivered.
                assert "streamLength" in t["metadata"]
                assert t["metadata"].get("consumerGroup", GROUP) == GROUP
                assert t["metadata"]["address"] == "redis-master.redis.svc.cluster.local:6379"
                assert t["metadata"]["enableTLS"] == "false"
    finally:
        await client.aclose()
