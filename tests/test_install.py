"""A fresh virtualenv, set up the way the chapters' Colab cell sets up Colab, runs a chapter.

Slow (it installs the dependencies from the package index into a new environment), so it runs
with ``make check-install`` (CNA_INSTALL_TEST=1), not in ``make test``."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not os.environ.get("CNA_INSTALL_TEST"),
                                reason="a fresh virtualenv: run `make check-install`")


def colab_commands(notebook: Path) -> tuple[str, str]:
    """The package requirement and the weights the notebook's Colab cell installs."""
    cell = next("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"]
                if "google.colab" in "".join(c["source"]))
    m = re.search(r'pip install -q "(cna_utils @ [^"]+)" && python -m cna_utils\.install (\S+)', cell)
    assert m, f"the Colab cell of {notebook.name} does not install the package and the weights"
    return m.group(1), m.group(2)


def test_a_fresh_environment_set_up_as_on_colab_runs_chapter_1(tmp_path):
    nb = ROOT / "notebooks" / "01_arithmetic_heads.ipynb"
    requirement, weights = colab_commands(nb)
    env = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    py = str(env / "bin" / "python")
    pip = [py, "-m", "pip", "install", "-q"]
    # what a Colab runtime has before the cell runs: torch, a Jupyter kernel, papermill
    subprocess.run(pip + ["torch==2.13.0", "ipykernel", "papermill"], check=True)
    # the cell: the package with the dependencies pyproject.toml declares (from this checkout
    # instead of the repository URL), then the weights
    subprocess.run(pip + [requirement.split(" @ ")[0] + " @ " + ROOT.as_uri()], check=True)
    subprocess.run([py, "-m", "cna_utils.model.install", weights], check=True)
    out = tmp_path / "01.ipynb"
    subprocess.run([py, "-m", "papermill", str(nb), str(out), "--cwd", str(tmp_path), "-p", "PROFILE", "smoke",
                    "-p", "MODEL", weights, "-p", "RESULTS_DIR", str(tmp_path / "results")], check=True)
    results = json.loads((tmp_path / "results" / "01_arithmetic_heads.json").read_text())
    assert results["profile"] == "smoke" and results["run"]["model"] == weights
