"""Debian's ``prometheus`` package (``prometheus`` and ``promtool``) for the telemetry tests:
``scripts/ensure-prometheus.sh`` installs it when it is missing and we are root."""

from __future__ import annotations

import shutil

import pytest

from tests.commands import run_script


def ensure_prometheus(tool: str) -> str:
    """The path of ``tool`` (``prometheus`` or ``promtool``) once ``scripts/ensure-prometheus.sh``
    has made the package available; otherwise the test fails, saying how to install it."""
    result = run_script("ensure-prometheus.sh", timeout_s=300)
    found = shutil.which(tool)
    if result.returncode != 0 or found is None:
        pytest.fail(
            f"{tool} is missing and could not be installed (scripts/ensure-prometheus.sh): "
            f"{result.stderr.strip()}; install Debian's prometheus package",
            pytrace=False,
        )
    return found
