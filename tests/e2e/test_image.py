"""The image users deploy, built from the Dockerfile and run the way the chart runs it.

``scripts/build-image.sh`` (``make image``) builds it with buildah; podman runs each pod of the
chart's render (``values-redis.yaml``, pointed at the simulators) as a container: the
Deployment's command, the ConfigMap's settings and the secrets it references, uid 10001 with
every capability dropped and no privilege escalation, a read-only root filesystem with only
the chart's ``/tmp`` writable, and the CA bundle mounted where ``caBundle`` puts it. Redis and
the simulators run on this host; the containers share its network, so each one gets its own
``HEALTH_PORT`` where pods each have their own address, and ``REDIS_URL`` names the host's
Redis on loopback where the chart names a cluster service (the two settings that differ).

Every command the image offers is run in it: the three services as pods, ``sync --once`` and
the operator commands as an operator runs them beside the pods (``kubectl exec``, here
``podman exec``), ``run-local`` with an external Redis and without one, and the start-up
failures a user meets (a taken port, a bad setting). No mock: podman, runc and buildah are the
real ones, from Debian's packages (the script installs them when missing).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from harness.pipeline import mati_properties
from services.cli.redis_server import free_port
from simulators.feed import Feed
from tests.commands import run_script
from tests.e2e.pipeline_tools import (
    PipelineFactory,
    assert_delivered,
    log_events,
    synced_and_drained,
)
from tests.e2e.podman_pods import (
    COMPONENTS,
    LIMITS,
    host_of,
    podman_captured,
    proc_ids,
    render_pods,
    secrets_of,
)
from tests.helm_tools import install_chart_tools
from tests.helpers import assert_one_line, wait_for

#: Every command ``mati2sentinel --help`` offers, and the test here that runs it.
OFFERED = {
    "fetcher": "test_cli_services_start_and_fail_in_one_line",
    "filter": "test_cli_services_start_and_fail_in_one_line",
    "uploader": "test_cli_services_start_and_fail_in_one_line",
    "sync": "test_chart_pods_deliver_a_sync_and_drain_on_sigterm",
    "status": "test_chart_pods_deliver_a_sync_and_drain_on_sigterm",
    "dlq": "test_chart_pods_deliver_a_sync_and_drain_on_sigterm",
    "explain": "test_chart_pods_deliver_a_sync_and_drain_on_sigterm",
    "suppress": "test_chart_pods_deliver_a_sync_and_drain_on_sigterm",
    "reconcile": "test_chart_pods_deliver_a_sync_and_drain_on_sigterm",
    "check-config": "test_chart_pods_deliver_a_sync_and_drain_on_sigterm",
    "run-local": "test_run_local_in_the_image",
}

Json = dict[str, Any]
#: The first test to need the image builds it (about two minutes on a fresh machine, the
#: base included; seconds when nothing changed), so every test here may take that long.
pytestmark = pytest.mark.timeout(600)


# ---- the image -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def image() -> str:
    """``make image``: the base once, then the image (cached layers when nothing changed)."""
    result = run_script("build-image.sh", timeout_s=900)
    built = re.search(r"^build-image: (\S+), \d+ MB$", result.stdout, re.MULTILINE)
    if result.returncode != 0 or built is None:
        pytest.fail(f"make image failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return built[1]


@pytest.fixture(scope="module", autouse=True)
def _chart_tools() -> None:
    install_chart_tools()


# ---- the tests -----------------------------------------------------------------------------


async def test_the_image_offers_exactly_the_commands_tested_here(image: str) -> None:
    offline = ("run", "--rm", *LIMITS, "--network", "none", image)
    result = await podman_captured(*offline, "mati2sentinel", "--help", timeout_s=120)
    assert result.code == 0, result.stderr
    help_text = result.stdout.split("positional arguments:", 1)[1].split("options:", 1)[0]
    offered = set(re.findall(r"^    ([a-z][a-z-]*)", help_text, re.MULTILINE))
    assert offered == set(OFFERED), offered ^ set(OFFERED)
    # The development tree stays out of the image: no simulators, no tests, no dev tools.
    probe = "import importlib.util as u; print([m for m in ('simulators', 'tests', 'pytest', 'trustme') if u.find_spec(m)])"  # noqa: E501
    result = await podman_captured(*offline, "python", "-c", probe, timeout_s=120)
    assert result.code == 0, result.stderr
    assert result.stdout.strip() == "[]"


async def test_chart_pods_deliver_a_sync_and_drain_on_sigterm(
    image: str, make_pipeline: PipelineFactory, tmp_path: Path
) -> None:
    pipeline = await make_pipeline(feed=Feed(seed=12, count=400, days=20))
    pods = render_pods(pipeline)
    async with host_of(image, pipeline, tmp_path) as host:
        started = {}
        for component in ("filter", "uploader", "fetcher"):
            port = free_port()
            started[component] = await host.start(
                pods[component], label=component, env={"HEALTH_PORT": str(port)}
            )
        for component, container in started.items():
            await host.ready(container)
            # The service itself runs as the chart's user, on a read-only root filesystem.
            inspect = await podman_captured(
                "inspect", "--format", "json", container.name, timeout_s=60
            )
            (state,) = inspect.json()
            assert state["HostConfig"]["ReadonlyRootfs"] is True
            assert proc_ids(state["State"]["Pid"]) == ("10001", "10001"), component
            # Only the chart's /tmp takes a write.
            assert (await host.exec(container, "touch", "/app/written")).code != 0
            wrote = await host.exec(container, "touch", "/tmp/written")  # noqa: S108 - its /tmp
            assert wrote.code == 0, wrote.output

        # The scheduled sync at start reaches the simulated Sentinel, exactly the accepted set.
        store = await synced_and_drained(pipeline)
        pipeline.env.update(
            {k: v for k, v in pods["filter"].env.items() if k not in ("SSL_CERT_FILE",)}
        )
        expected = pipeline.expected()
        assert expected.objects
        assert len(store) == len(expected.objects)
        assert_delivered(pipeline, expected, max_uploads=1)

        # The operator's commands, beside the pods (kubectl exec); secrets from the pod's env.
        fetcher = started["fetcher"]
        sync = await host.exec(fetcher, "mati2sentinel", "sync", "--once")
        assert sync.code == 0, sync.output
        assert ": completed," in sync.output.strip().splitlines()[-1], sync.output
        status = await host.exec(fetcher, "mati2sentinel", "status", "--json")
        assert status.code == 0, status.output
        counters = status.json()["counters"]
        assert counters["uploaded"] == len(store), counters
        dlq = await host.exec(fetcher, "mati2sentinel", "dlq", "list", "--json")
        assert dlq.code == 0, dlq.output
        assert dlq.json() == [], dlq.output
        mati_id = mati_properties(next(iter(store.values())))["mati_id"]
        explain = await host.exec(fetcher, "mati2sentinel", "explain", mati_id, "--json")
        assert explain.code == 0, explain.output
        assert explain.json()["verdict"] == "uploaded", explain.stdout
        pulled = await host.exec(
            fetcher, "mati2sentinel", "suppress", "add", mati_id, "--reason", "image test"
        )
        assert pulled.code == 0, pulled.output
        assert "1 object(s) queued for revocation" in pulled.stdout, pulled.output
        key = next(k for k, obj in store.items() if mati_properties(obj)["mati_id"] == mati_id)
        workspace = pipeline.sims.sentinel.store
        await wait_for(lambda: workspace[key].get("revoked") is True, 60, what="the revocation")
        listed = await host.exec(fetcher, "mati2sentinel", "suppress", "list", "--json")
        assert [s["mati_id"] for s in listed.json()["suppressions"]] == [mati_id], listed.output
        # The workspace read back through Log Analytics with the uploader's identity.
        proof = await host.exec(
            started["uploader"], "mati2sentinel", "reconcile", "--json", "--quiet"
        )
        assert proof.code == 0, proof.output
        assert proof.json()["drifted"] == 0, proof.stdout
        check = await host.exec(
            started["uploader"], "mati2sentinel", "check-config", "--service", "uploader"
        )
        assert check.code == 0, check.output
        assert "AZURE_CLIENT_SECRET" in check.stdout
        for secret in secrets_of(pipeline):
            assert secret not in check.output

        # SIGTERM: each pod drains and exits 0, the fetcher first, as a rollout would.
        for component in ("fetcher", "filter", "uploader"):
            container = started[component]
            assert await host.stop(container) == 0, host.log(container)
            events = [e["event"] for e in log_events(pipeline, component)]
            assert "service.stopped" in events, events
            assert "Traceback" not in host.log(container)
        for container in started.values():
            for secret in secrets_of(pipeline):
                assert secret not in host.log(container)


async def test_run_local_in_the_image(
    image: str, make_pipeline: PipelineFactory, tmp_path: Path
) -> None:
    """``run-local`` in the image: the three services with the Redis that ``REDIS_URL``
    names; without one, there is no redis-server to start, and it says so in one line."""
    pipeline = await make_pipeline(feed=Feed(seed=13, count=200, days=20))
    pods = render_pods(pipeline)
    spec = pods["fetcher"]
    env = {**pods["uploader"].env, **spec.env}
    async with host_of(image, pipeline, tmp_path) as host:
        refused = await host.run(
            spec, "mati2sentinel", "run-local", label="no-redis", env=env, unset=["REDIS_URL"]
        )
        assert refused.code == 2, refused.output
        assert_one_line(refused, "mati2sentinel run-local:", "no redis-server", "REDIS_URL")

        local = await host.start(
            spec, label="run-local", command=("mati2sentinel", "run-local"), env=env
        )
        store = await synced_and_drained(pipeline)
        assert store
        assert await host.stop(local) == 0, host.log(local)
        assert "Traceback" not in host.log(local)


async def test_cli_services_start_and_fail_in_one_line(
    image: str, make_pipeline: PipelineFactory, tmp_path: Path
) -> None:
    """``mati2sentinel fetcher|filter|uploader`` in the image: each starts, is ready and stops
    on SIGTERM with 0; a taken port and a bad setting are one line and exit 2."""
    pipeline = await make_pipeline(feed=Feed(seed=14, count=50, days=20))
    pods = render_pods(pipeline)
    async with host_of(image, pipeline, tmp_path) as host:
        running = {}
        for component in COMPONENTS:
            port = free_port()
            running[component] = await host.start(
                pods[component],
                label=f"cli-{component}",
                command=("mati2sentinel", component),
                env={"HEALTH_PORT": str(port)},
            )
        for container in running.values():
            await host.ready(container)

        # A second filter where the first already listens: the port is taken.
        taken = running["filter"].health_port
        clash = await host.run(
            pods["filter"],
            "mati2sentinel",
            "filter",
            label="clash",
            env={"HEALTH_PORT": str(taken)},
        )
        assert clash.code == 2, clash.output
        assert_one_line(clash, "HEALTH_PORT", str(taken))

        bad = await host.run(
            pods["uploader"],
            "mati2sentinel",
            "uploader",
            label="bad-setting",
            env={"MINIMUM_CONFIDENCE": "high", "HEALTH_PORT": "0"},
        )
        assert bad.code == 2, bad.output
        # A service names what is wrong under one heading: one line per bad value.
        assert "Traceback" not in bad.output, bad.output
        heading, *problems = bad.stderr.strip().splitlines()
        assert heading == "mati2sentinel: invalid settings:", bad.stderr
        assert len(problems) == 1, bad.stderr
        assert "MINIMUM_CONFIDENCE='high'" in problems[0], bad.stderr

        for component, container in running.items():
            assert await host.stop(container) == 0, host.log(container)
            assert "Traceback" not in host.log(container), component


def test_every_offered_command_names_a_test_here() -> None:
    """``OFFERED`` points at real tests: a new command needs a run in the image."""
    names = {name for name in globals() if name.startswith("test_")}
    assert set(OFFERED.values()) <= names
