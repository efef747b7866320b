"""``evaluation.metrics: [stability]`` through explain.py: per-image values, the table, W&B, resume, bad settings."""

from __future__ import annotations

import csv
import json
import signal
from pathlib import Path

import pytest
import torch

from hdm_lightning.cli import explain_main
from hdm_lightning.explainers.modules import MaskStageModule

# 3 images in batches of 2 and 1: the "batch" condition runs both ways (each image alone; one image with companions).
CONFIG = """\
method: dm
explainer:
  schedule: {name: dm, params: {sizes: [3, 4], factors: [2], epochs: 3, lr: 0.05, eta: 1.0}}
  engine: {checkpoint_every_n_steps: 1}
batch_size: 2
device: cpu
progress: false
classifier: {name: small_cnn, num_classes: 4, preprocess: {size: 32, resize: 32}}
data: {kind: synthetic, split: test, synthetic: {num_images: 3, size: 32}}
methods:
  - {name: gradcam}
  - {name: dm}
evaluation:
  metrics: [stability]
  stability_threads: true
  gallery: 0
wandb: {mode: disabled}
"""
COLUMNS = ("pearson", "spearman", "iou5", "iou20")


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "stability.yaml"
    path.write_text(CONFIG)
    return path


def stability_values(out: Path) -> dict[tuple[str, str], dict[str, float]]:
    """Per (method, image): the stability values stored in the records."""
    values = {}
    for path in sorted((out / "methods").rglob("records/**/*.json")):
        rec = json.loads(path.read_text())
        assert rec["status"] == "ok"
        values[(rec["method"], rec["id"])] = {k: v for k, v in rec["metrics"].items() if k.startswith("stability/")}
    return values


def conditions() -> list[str]:
    return ["noise1e-06", "noise0.001", "batch", *(["threads"] if torch.get_num_threads() > 1 else [])]


@pytest.mark.slow
def test_stability_table_values_and_resume(config, tmp_path, monkeypatch):
    ref = tmp_path / "reference"
    steps = {"n": 0}
    real = MaskStageModule.training_step

    def counting(self, *args):
        steps["n"] += 1
        return real(self, *args)

    monkeypatch.setattr(MaskStageModule, "training_step", counting)
    args = ["--config", str(config), f"output.dir={ref}", "wandb.mode=offline", f"wandb.dir={tmp_path / 'wb'}"]
    assert explain_main(args) == 0
    monkeypatch.undo()

    expected = [f"stability/{c}/{k}" for c in conditions() for k in COLUMNS]
    with open(ref / "tables" / "stability.csv") as f:
        rows = list(csv.DictReader(f))
    stats = [f"{k}{s}" for k in expected for s in ("", "_ci_low", "_ci_high", "_p")]  # each cell: mean, CI, test
    assert list(rows[0]) == ["method", "images", *stats]
    table = {r["method"]: r for r in rows}
    assert list(table) == ["gradcam", "dm"] and all(r["images"] == "3" for r in rows)
    assert float(table["gradcam"]["stability/noise1e-06/pearson"]) > 0.999  # deterministic, smooth in the input
    assert float(table["gradcam"]["stability/batch/pearson"]) > 0.999  # no batch statistics in eval mode
    for r in rows:
        assert all(-1 <= float(r[k]) <= 1 for k in expected), r
    md = (ref / "tables" / "stability.md").read_text().splitlines()
    assert md[0] == "| method | images | " + " | ".join(f"{k} ↑" for k in expected) + " |"
    values = stability_values(ref)
    assert len(values) == 6 and all(sorted(v) == sorted(expected) for v in values.values())
    with open(ref / "manifest.csv") as f:
        manifest = list(csv.DictReader(f))
    assert set(expected) <= set(manifest[0])
    (wb,) = (tmp_path / "wb" / "wandb").glob("offline-run-*")
    assert list((wb / "files" / "media" / "table" / "tables").glob("stability*.table.json"))
    with open(ref / "tables" / "cost.csv") as f:
        cost = {r["method"]: r for r in csv.DictReader(f)}
    assert float(cost["gradcam"]["forward_per_image"]) == 1  # the reruns are not the run's cost
    assert float(cost["dm"]["backward_per_image"]) == 2 * 4 * 3  # 2 benchmark + 3 levels x 2 vectors, 3 epochs

    # Interrupted inside the last rerun of the second batch (its main DM call has finished), then resumed.
    out = tmp_path / "interrupted"
    calls = {"n": 0}

    def crash(self, *args):
        calls["n"] += 1
        if calls["n"] == steps["n"] - 5:
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(MaskStageModule, "training_step", crash)
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        explain_main(["--config", str(config), f"output.dir={out}"])
    monkeypatch.undo()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores SIGINT after a Ctrl+C
    assert len(stability_values(out)) == 5  # the first batch with both methods, the second with gradcam
    assert explain_main(["--config", str(config), f"output.dir={out}"]) == 0
    assert stability_values(out) == values
    assert (out / "tables" / "stability.csv").read_text() == (ref / "tables" / "stability.csv").read_text()


def test_bad_stability_settings_stop_the_run_before_any_image(config, tmp_path, capsys):
    base = ["--config", str(config), f"output.dir={tmp_path / 'o'}"]
    assert explain_main([*base, "evaluation.stability_noise=[0.0]"]) == 2
    err = capsys.readouterr().err
    assert "evaluation.stability_noise must be noise levels eps > 0" in err
    assert explain_main([*base, "evaluation.stability_top_k=[0.05,1.5]"]) == 2
    assert "evaluation.stability_top_k must be fractions of the pixels in (0, 1]" in capsys.readouterr().err
    no_condition = [f"evaluation.stability_{k}" for k in ("noise=[]", "batch=false", "threads=false")]
    assert explain_main([*base, *no_condition]) == 2
    assert "has no condition" in capsys.readouterr().err
    assert not list((tmp_path / "o").rglob("*.json"))
