"""The layout's import contracts (``[tool.importlinter]`` in pyproject.toml) hold, and each one
bites: the same ``lint-imports`` run on a copy of the tree with one wrong import planted fails,
naming that contract. Without this, a contract that matched nothing would pass forever."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("shared", "services", "simulators", "harness")

#: contract id -> (module to plant in, the import that breaks the contract)
PLANTS = {
    "layers": ("shared/contract/bus.py", "import shared.adapters.destination_state"),
    "layers-siblings": ("shared/telemetry/gauges.py", "import shared.adapters.destination_state"),
    "services-independent": ("services/filter/worker.py", "import services.uploader.circuit"),
    "pure-core": ("shared/core/parsing.py", "import aiohttp"),
    "product-without-simulators": ("services/cli/status.py", "import simulators.feed"),
    "simulators-without-product": ("simulators/feed.py", "import shared.core.indicator"),
}
#: The contract each plant must break (the layers contract covers siblings too).
BREAKS = {plant: plant.removesuffix("-siblings") for plant in PLANTS}


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def copy_tree(into: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package, into / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(ROOT / "pyproject.toml", into / "pyproject.toml")
    return into


def contract_name(contract_id: str) -> str:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (name,) = [c["name"] for c in config["contracts"] if c["id"] == contract_id]
    return str(name)


def test_the_tree_keeps_every_contract() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("plant", PLANTS)
def test_a_planted_wrong_import_breaks_its_contract(plant: str, tmp_path: Path) -> None:
    tree = copy_tree(tmp_path)
    assert lint_imports(tree).returncode == 0, "the unplanted copy keeps every contract"
    module, wrong = PLANTS[plant]
    path = tree / module
    path.write_text(path.read_text() + f"\n{wrong}  # planted by the test\n")
    result = lint_imports(tree)
    assert result.returncode != 0, f"{wrong} in {module} broke nothing:\n{result.stdout}"
    # The report wraps long names at 80 columns.
    broken = " ".join(result.stdout.split("Broken contracts", 1)[1].split())
    assert contract_name(BREAKS[plant]) in broken, result.stdout
