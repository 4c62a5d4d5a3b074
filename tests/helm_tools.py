"""The pinned helm (``scripts/install-chart-tools.sh``, cached in ``.tools/``) and the chart it
renders: what Kubernetes would run, for the chart tests and for the image test, which runs the
rendered pods with podman."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "k8s" / "mati2sentinel"
TOOLS = ROOT / ".tools"
HELM = TOOLS / "bin" / "helm"
KUBE_VERSION = "1.32.0"


def install_chart_tools() -> None:
    """The pinned helm (and the KEDA validator's packages), installed once into .tools/."""
    subprocess.run([str(ROOT / "scripts" / "install-chart-tools.sh")], check=True, cwd=ROOT)


def helm_template(*files: Path, sets: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    command = [str(HELM), "template", "m2s", str(CHART), "--namespace", "mati2sentinel"]
    command += ["--kube-version", KUBE_VERSION]
    for f in files:
        command += ["-f", str(f)]
    for s in sets:
        # helm --set reads 60.5 as a string; a decimal goes through --set-json as a number.
        decimal = re.fullmatch(r"[^=]+=-?[0-9]+\.[0-9]+", s)
        command += ["--set-json" if decimal else "--set", s]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=30)
