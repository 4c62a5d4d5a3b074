"""``mati2sentinel`` as a user runs it, and the project's scripts as a developer runs them: a
child process, its exit code and output kept for the test to judge."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def json(self) -> Any:
        return orjson.loads(self.stdout)


async def run_command(env: Mapping[str, str], *args: str, timeout_s: float = 30.0) -> CliResult:
    """``python -m services.cli args`` with exactly ``env``; killed past ``timeout_s``."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        *args,
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return CliResult(process.returncode or 0, out.decode(), err.decode())


async def run_bare(env: Mapping[str, str], *args: str, timeout_s: float = 30.0) -> CliResult:
    """``run_command`` with ``env`` and a system ``PATH`` only: the developer's settings, venv
    and tools never reach the child, so what it prints comes from ``env`` alone."""
    return await run_command({"PATH": "/usr/bin:/bin", **env}, *args, timeout_s=timeout_s)


def run_script(name: str, *, timeout_s: float) -> subprocess.CompletedProcess[str]:
    """``scripts/<name>`` from the checkout's root, as ``make`` runs it; a failure is left to
    the caller, which knows what to tell the developer to do about it."""
    return subprocess.run(
        [str(ROOT / "scripts" / name)],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout_s,
        cwd=ROOT,
    )
