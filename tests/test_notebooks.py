"""The notebooks: committed without outputs, and executed end to end (smoke settings) with nbclient.

Also ``configs/custom_schedule.yaml``, the notebook's user schedule run from YAML through ``imports:``.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch
from nbclient import NotebookClient

from hdm_lightning.cli import explain_main

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
NOTEBOOK_NAMES = ("quickstart.ipynb", "custom_schedule.ipynb", "prototypes.ipynb")
CUSTOM = str(REPO / "configs" / "custom_schedule.yaml")
FLOAT = r"(-?\d+\.\d+)"


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def execute(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the notebook in a fresh kernel, cwd = notebooks/ (as Jupyter does), smoke settings; return its stdout."""
    monkeypatch.setenv("HDM_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")  # no display: figures are drawn, never shown
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebooks' temporary run folders
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    book = read(name)  # executed in memory: the committed file is never written
    client = NotebookClient(
        book, timeout=600, startup_timeout=180, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()  # a failing cell raises CellExecutionError with its traceback
    return "".join(
        out.get("text", "")
        for cell in book.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == "stream" and out.name == "stdout"
    )


def auc_rows(text: str, names: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    """The ``name  deletion  insertion`` table the notebooks print."""
    rows = {}
    for name in names:
        found = re.findall(rf"^{re.escape(name)}\s+{FLOAT}\s+{FLOAT}\s*$", text, flags=re.MULTILINE)
        assert len(found) == 1, f"no deletion/insertion row for {name!r} in:\n{text}"
        rows[name] = tuple(float(v) for v in found[0])
    return rows


@pytest.mark.parametrize("name", NOTEBOOK_NAMES)
def test_notebooks_are_committed_without_outputs(name):
    book = read(name)
    nbformat.validate(book)
    code = [c for c in book.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code), f"clear the outputs of {name}"
    assert "HDM_NOTEBOOK_SMOKE" in code[0].source, "the first code cell reads the smoke switch"
    assert book.metadata.kernelspec.name == "python3"


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    text = execute("quickstart.ipynb", tmp_path, monkeypatch)
    assert "smoke mode: True" in text
    explained = re.search(r"explained class: (.+) \(p = " + FLOAT + r"\)", text)
    assert explained and "cat" in explained.group(1), text  # chelsea is a tabby: tiger cat / tabby / Egyptian cat
    assert 0 < float(explained.group(2)) <= 1
    weights = [float(w) for w in re.search(r"stage weights w: \[(.*)\]", text).group(1).split(",")]
    assert len(weights) == 2 and sum(weights) == pytest.approx(1, abs=1e-2)
    assert weights[0] >= weights[1] >= 0  # w_j = sum_{k>=j} v_k^2 is non-increasing
    assert re.search(r"benchmark: d1, d2$", text, flags=re.MULTILINE)  # DM levels listed by stage
    assert re.search(r"level1: d1/t2/k1, d2/t2/k1$", text, flags=re.MULTILINE)
    for deletion, insertion in auc_rows(text, ("hdm", "dm", "mdm", "gradcam")).values():
        assert 0 <= deletion <= 1 and 0 <= insertion <= 1


@pytest.mark.slow
def test_custom_schedule_notebook_runs(tmp_path, monkeypatch):
    text = execute("custom_schedule.ipynb", tmp_path, monkeypatch)
    assert "smoke mode: True" in text
    assert re.search(r"registered schedules: .*'geometric'", text)
    assert "class GeometricLadder(MaskSchedule)" in text  # the module's source is shown
    assert "passes per 224x224 image: 8" in text  # 4 rungs x 2 steps
    for name in ("geometric", "dm"):
        low, high = (float(v) for v in re.search(rf"{name} map range: \[{FLOAT}, {FLOAT}\]", text).groups())
        assert 0 <= low <= high <= 1
    assert float(re.search(r"max \|geometric - dm\| = " + FLOAT, text).group(1)) > 0  # a different map
    for deletion, insertion in auc_rows(text, ("geometric", "dm")).values():
        assert 0 <= deletion <= 1 and 0 <= insertion <= 1
    compared = re.search(r"max \|comparison's maps - the maps above\| = (\S+)", text)
    assert compared and float(compared.group(1)) < 1e-6  # hl.compare's maps are hl.explain's
    assert "exit status: 0" in text
    assert re.search(r"^chelsea\s+ok\s+.*passes 8$", text, flags=re.MULTILINE), text  # the YAML run's manifest
    same = re.search(r"max \|YAML run's map - notebook's geometric map\| for chelsea: (\S+)", text)
    assert same and float(same.group(1)) < 1e-6  # the config reproduces the in-notebook call


@pytest.mark.slow
def test_prototypes_notebook_runs(tmp_path, monkeypatch):
    text = execute("prototypes.ipynb", tmp_path, monkeypatch)
    assert "smoke mode: True" in text
    assert re.search(r"^prototypes: 40 \(10 per class\)$", text, flags=re.MULTILINE), text
    assert re.search(r"^prototype 0 \(circle\) is a patch of train/\d+ at \(\d, \d\)$", text, flags=re.MULTILINE)
    assert float(re.search(r"\|prototype - patch\| = " + FLOAT, text).group(1)) < 1e-5  # the push, in the network
    for name in ("prototype_upsample", "mdm"):
        dice = float(re.search(rf"^{name}\s+dice@90 {FLOAT}$", text, flags=re.MULTILINE).group(1))
        assert 0 <= dice <= 1


@pytest.mark.slow
def test_custom_schedule_config_runs_in_process(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))  # what `python explain.py` from the repo root has: the script's folder
    out = tmp_path / "run"
    status = explain_main(
        [
            "--config",
            CUSTOM,
            f"output.dir={out}",
            "wandb.mode=disabled",
            "progress=false",
            "device=cpu",
            "data.photos=[chelsea,coffee]",
            "explainer.schedule.params.steps=2",
        ]
    )
    assert status == 0
    with open(out / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == ["chelsea", "coffee"]
    assert all(r["status"] == "ok" and r["method"] == "dm" and r["passes"] == "8" for r in rows)  # 4 rungs x 2
    for r in rows:
        saliency = torch.load(out / r["map"], weights_only=True)["saliency"]
        assert saliency.shape == (1, 224, 224) and saliency.min() >= 0 and saliency.max() <= 1
    assert "name: geometric" in (out / "config.yaml").read_text()


@pytest.mark.slow
def test_custom_schedule_imports_resolve_from_repo_root():
    """``python explain.py`` in a fresh process, from the repo root, with no PYTHONPATH: `imports:` finds the module."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "explain.py", "--config", "configs/custom_schedule.yaml", "--print-config"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "- notebooks.geometric_schedule" in done.stdout and "name: geometric" in done.stdout
