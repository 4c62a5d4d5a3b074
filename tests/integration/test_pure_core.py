"""The pure core stays pure at run time: importing it loads no I/O module (DESIGN §10).

``lint-imports`` forbids the core's own imports of aiohttp, redis, azure and opentelemetry; this
asks a fresh interpreter what importing the core really loads, the standard library's asyncio,
logging, socket and ssl included. A child process, because pytest itself has imported logging
and asyncio."""

from __future__ import annotations

import subprocess
import sys

_CORE = ("indicator", "parsing", "filters", "fingerprint", "stix")
_IO_ROOTS = {"aiohttp", "redis", "azure", "asyncio", "logging", "opentelemetry", "socket", "ssl"}


def test_the_pure_core_imports_no_io_module() -> None:
    probe = (
        "import sys\n"
        + "".join(f"import shared.core.{name}\n" for name in _CORE)
        + "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "shared" in loaded
    assert _IO_ROOTS.isdisjoint(loaded)
