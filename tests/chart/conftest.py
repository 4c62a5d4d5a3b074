"""The pinned helm the chart tests render with, installed once per run (not for the alert
rules, which need promtool only)."""

from __future__ import annotations

import pytest

from tests.helm_tools import install_chart_tools


@pytest.fixture(scope="session")
def chart_tools() -> None:
    install_chart_tools()
