"""The chart's pods as podman containers on this host, for the image tests (test_image.py):
podman as this machine can run it, each rendered Deployment as the ``PodSpec`` it asks the
runtime for, and ``Host``, which starts, probes, execs into and stops the containers the way the
kubelet and ``kubectl exec`` would, each container's output where the failure report looks.
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

import aiohttp
import yaml

from harness.pipeline import DESTINATION, Pipeline
from tests.commands import CliResult
from tests.helm_tools import CHART, helm_template
from tests.helpers import wait_for

#: podman as this machine runs it: vfs storage (no overlay mounts), runc (crun refuses these
#: cgroups), cgroupfs (no systemd), and ulimits within the machine's hard limits.
PODMAN = ("podman", "--storage-driver", "vfs", "--runtime", "runc", "--cgroup-manager", "cgroupfs")
LIMITS = ("--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096")
#: Where the chart mounts ``caBundle`` (values ``caBundle.key``: ca.crt).
CA_CONFIGMAP = "simulators-ca"
CA_IN_POD = "/etc/mati2sentinel/ca/ca.crt"
COMPONENTS = ("fetcher", "filter", "uploader")


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
