"""``mati2sentinel`` as a user runs it: a child process with a given environment, its exit
code and output kept for the test to judge."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson


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
