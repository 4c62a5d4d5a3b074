"""Debian's ``prometheus`` package (``prometheus`` and ``promtool``) for the telemetry tests:
``scripts/ensure-prometheus.sh`` installs it when it is missing and we are root."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def ensure_prometheus(tool: str) -> str:
    """The path of ``tool`` (``prometheus`` or ``promtool``) once ``scripts/ensure-prometheus.sh``
    has made the package available; otherwise the test fails, saying how to install it."""
    result = subprocess.run(
        [str(ROOT / "scripts" / "ensure-prometheus.sh")],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    found = shutil.which(tool)
    if result.returncode != 0 or found is None:
        pytest.fail(
            f"{tool} is missing and could not be installed (scripts/ensure-prometheus.sh): "
            f"{result.stderr.strip()}; install Debian's prometheus package",
            pytrace=False,
        )
    return found
