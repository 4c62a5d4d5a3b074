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

import asyncio
import contextlib
import re
import signal
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from harness.pipeline import DESTINATION, Pipeline, mati_properties
from services.cli.redis_server import free_port
from simulators.feed import Feed
from tests.commands import CliResult, run_script
from tests.e2e.pipeline_tools import (
    PipelineFactory,
    assert_delivered,
    log_events,
    synced_and_drained,
)
from tests.helm_tools import CHART, helm_template, install_chart_tools
from tests.helpers import assert_one_line, wait_for

#: podman as this machine runs it: vfs storage (no overlay mounts), runc (crun refuses these
#: cgroups), cgroupfs (no systemd), and ulimits within the machine's hard limits.
PODMAN = ("podman", "--storage-driver", "vfs", "--runtime", "runc", "--cgroup-manager", "cgroupfs")
LIMITS = ("--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096")
#: Where the chart mounts ``caBundle`` (values ``caBundle.key``: ca.crt).
CA_CONFIGMAP = "simulators-ca"
CA_IN_POD = "/etc/mati2sentinel/ca/ca.crt"
COMPONENTS = ("fetcher", "filter", "uploader")
#: Every command ``mati2sentinel --help`` offers, and the test here that runs it.
OFFERED = {
    "fetcher": "test_cli_services_start_and_fail_in_one_line",
    "filter": "test_cli_services_start_and_fail_in_one_line",
    "uploader": "test_cli_services_start_and_fail_in_one_line",
    "sync": "test_chart_pods_deliver_a_sync_and_drain_on_sigterm",
    "status": "test_chart_pods_deliver_a_sync_and_drain_on_sigterm",
    "dlq": "test_chart_pods_deliver_a_sync_and_drain_on_sigterm",
    "explain": "test_chart_pods_deliver_a_sync_and_drain_on_sigterm",
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


async def podman_captured(*args: str, timeout_s: float) -> CliResult:
    """``podman args`` run to its end: its exit code (a container's, for run and exec), its
    stdout and its stderr."""
    process = await asyncio.create_subprocess_exec(
        *PODMAN,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout_s)
    return CliResult(process.returncode or 0, out.decode(), err.decode())


# ---- the chart's pods ----------------------------------------------------------------------


@dataclass(frozen=True)
class PodSpec:
    """What one rendered Deployment asks the container runtime for."""

    component: str
    command: list[str]
    env: dict[str, str]
    user: str
    read_only: bool
    capabilities_dropped: list[str]
    no_new_privileges: bool
    tmp_size: str


def render_pods(pipeline: Pipeline) -> dict[str, PodSpec]:
    """The chart's redis render with the site's values pointing at the simulators; each
    secretKeyRef resolved from the simulators' credentials, as the Secret would hold them."""
    env = pipeline.env
    settings = {
        "MATI_BASE_URL": env["MATI_BASE_URL"],
        "AZURE_AUTHORITY_HOST": env["AZURE_AUTHORITY_HOST"],
        "SENTINEL_BASE_URL": env["SENTINEL_BASE_URL"],
        "LOG_ANALYTICS_BASE_URL": env["LOG_ANALYTICS_BASE_URL"],
        "AZURE_TENANT_ID": env["AZURE_TENANT_ID"],
        "AZURE_CLIENT_ID": env["AZURE_CLIENT_ID"],
        "AZURE_WORKSPACE_ID": env["AZURE_WORKSPACE_ID"],
        # The chart refuses a loopback Redis (none runs in a pod); the pods here get the host's
        # below, in place of the cluster's service name.
        "REDIS_URL": "redis://redis-master.redis.svc.cluster.local:6379/0",
        "DESTINATION": DESTINATION,
        "LOG_FORMAT": "json",
    }
    sets = tuple(f"settings.{name}={value}" for name, value in settings.items())
    sets += (f"caBundle.configMap={CA_CONFIGMAP}", "secrets.existingSecret=credentials")
    result = helm_template(CHART / "values-redis.yaml", sets=sets)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap"]
    pods = {}
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        component = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        spec = deployment["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        security = container["securityContext"]
        secrets = {e["name"]: env[e["name"]] for e in container.get("env", [])}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert {m["mountPath"]: m["name"] for m in container["volumeMounts"]} == {
            "/tmp": "tmp",  # noqa: S108 - a path inside the container
            "/etc/mati2sentinel/ca": "ca-bundle",
        }
        pods[component] = PodSpec(
            component=component,
            command=container["command"],
            env={**configmap["data"], **secrets, "REDIS_URL": env["REDIS_URL"]},
            user=f"{security['runAsUser']}:{security['runAsGroup']}",
            read_only=security["readOnlyRootFilesystem"],
            capabilities_dropped=security["capabilities"]["drop"],
            no_new_privileges=not security["allowPrivilegeEscalation"],
            tmp_size=volumes["tmp"]["emptyDir"]["sizeLimit"].replace("Mi", "m"),
        )
    assert set(pods) == set(COMPONENTS)
    return pods


@dataclass
class Container:
    name: str
    label: str
    process: asyncio.subprocess.Process
    health_port: int | None


class Host:
    """Containers of one image on this host, each one's output in the pipeline's log folder
    (``<label>.log``, where ``log_events`` and the failure report look)."""

    def __init__(self, image: str, pipeline: Pipeline, env_dir: Path) -> None:
        self.image = image
        self.pipeline = pipeline
        self.env_dir = env_dir
        self.logs = pipeline.state_dir / "logs"
        self.containers: list[Container] = []
        env_dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)

    def run_args(self, spec: PodSpec, name: str, env: Mapping[str, str]) -> list[str]:
        """``podman run`` for a pod spec: the security context, the volumes, the settings (in
        an env file, so no secret is on a command line)."""
        env_file = self.env_dir / f"{name}.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        env_file.chmod(0o600)
        args = ["run", "--rm", "--name", name, "--network", "host", *LIMITS]
        args += ["--user", spec.user, "--env-file", str(env_file)]
        if spec.read_only:
            # Only the chart's emptyDir is writable: no tmpfs of podman's own on /run, /var/tmp.
            args += ["--read-only", "--read-only-tmpfs=false"]
        args += ["--tmpfs", f"/tmp:rw,size={spec.tmp_size}"]  # noqa: S108 - in the container
        args += [f"--cap-drop={cap}" for cap in spec.capabilities_dropped]
        if spec.no_new_privileges:
            args += ["--security-opt", "no-new-privileges"]
        args += ["-v", f"{self.pipeline.sims.ca.ca_path}:{CA_IN_POD}:ro"]
        return args

    async def start(
        self,
        spec: PodSpec,
        *,
        label: str,
        command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Container:
        """Start a container in the background (``podman run``, attached, so its exit code is
        the container's and SIGTERM sent to podman reaches the service)."""
        name = f"m2s-e2e-{label}-{uuid.uuid4().hex[:8]}"
        settings = {**spec.env, **(env or {})}
        port = int(settings["HEALTH_PORT"]) if settings.get("HEALTH_PORT", "0") != "0" else None
        args = self.run_args(spec, name, settings)
        with (self.logs / f"{label}.log").open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                *PODMAN,
                *args,
                self.image,
                *(command or spec.command),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        container = Container(name, label, process, port)
        self.containers.append(container)
        return container

    async def run(
        self,
        spec: PodSpec,
        *command: str,
        label: str,
        env: Mapping[str, str] | None = None,
        unset: Sequence[str] = (),
    ) -> CliResult:
        """A one-shot container: its exit code, stdout and stderr. ``env`` adds to the pod's
        settings, and the names in ``unset`` are left out."""
        name = f"m2s-e2e-{label}-{uuid.uuid4().hex[:8]}"
        settings = {k: v for k, v in {**spec.env, **(env or {})}.items() if k not in unset}
        args = self.run_args(spec, name, settings)
        return await podman_captured(*args, self.image, *command, timeout_s=120)

    async def exec(self, container: Container, *command: str) -> CliResult:
        """``podman exec`` into a running container, as ``kubectl exec`` into a pod."""
        return await podman_captured("exec", container.name, *command, timeout_s=60)

    def log(self, container: Container) -> str:
        return (self.logs / f"{container.label}.log").read_text(errors="replace")

    async def ready(self, container: Container, path: str = "/readyz") -> None:
        """Poll the probe as the kubelet does, until it answers 200."""
        assert container.health_port is not None

        async def answers() -> bool:
            assert container.process.returncode is None, self.log(container)
            try:
                async with (
                    aiohttp.ClientSession() as http,
                    http.get(f"http://127.0.0.1:{container.health_port}{path}") as response,
                ):
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await wait_for(answers, 90, what=f"{container.label} {path}", interval=0.2)

    async def stop(self, container: Container, timeout_s: float = 60) -> int:
        """SIGTERM, as the kubelet sends it; the container's exit code."""
        if container.process.returncode is None:
            container.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(container.process.wait(), timeout_s)

    async def aclose(self) -> None:
        for container in self.containers:
            if container.process.returncode is None:
                await podman_captured("rm", "--force", "--time", "0", container.name, timeout_s=120)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(container.process.wait(), 60)


@contextlib.asynccontextmanager
async def host_of(image: str, pipeline: Pipeline, tmp_path: Path) -> AsyncIterator[Host]:
    host = Host(image, pipeline, tmp_path / "env")
    try:
        yield host
    finally:
        await host.aclose()


@pytest.fixture(scope="module", autouse=True)
def _chart_tools() -> None:
    install_chart_tools()


def secrets_of(pipeline: Pipeline) -> Iterator[str]:
    for name in ("MATI_API_KEY", "MATI_API_SECRET", "AZURE_CLIENT_SECRET"):
        yield pipeline.env[name]


def proc_ids(pid: int) -> tuple[str, str]:
    """(real uid, real gid) of a process, from /proc on this host (no user namespace)."""
    status = Path(f"/proc/{pid}/status").read_text()
    uid = re.search(r"^Uid:\s+(\d+)", status, re.MULTILINE)
    gid = re.search(r"^Gid:\s+(\d+)", status, re.MULTILINE)
    assert uid, status
    assert gid, status
    return uid[1], gid[1]


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
