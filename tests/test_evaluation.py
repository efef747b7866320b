"""Comparisons through explain.py: every method on the same images, the papers' tables, curves, gallery, cost."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from hdm_lightning.cli import explain_main
from hdm_lightning.evaluation import mean_curves, write_tables
from hdm_lightning.explainers.modules import MaskStageModule

REPO = Path(__file__).resolve().parents[1]
COMPARE = """\
method: hdm
explainer:
  schedule: {name: dm, params: {sizes: [3, 4], factors: [2], epochs: 3, lr: 0.05, eta: 1.0}}
  stages: 2
  mixing: {epochs: 3}
  engine: {checkpoint_every_n_steps: 1}
batch_size: 3
device: cpu
progress: false
classifier: {name: small_cnn, num_classes: 4, preprocess: {size: 32, resize: 32}}
data: {kind: synthetic, split: test, synthetic: {num_images: 5, size: 32}}
methods:
  - {name: hdm}
  - {name: gradient}
  - {name: gradcam}
  - {name: rise, params: {n_masks: 32, batch_size: 16}}
  - {name: random}
evaluation:
  metrics: [drop_increase, deletion_insertion, proportion, segmentation]
  steps: 10
  gallery: 2
wandb: {mode: disabled}
"""
LABELS = ["hdm", "gradient", "gradcam", "rise", "random"]


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "compare.yaml"
    path.write_text(COMPARE)
    return path


def table(out: Path, family: str) -> dict[str, dict[str, str]]:
    with open(out / "tables" / f"{family}.csv") as f:
        return {r["method"]: r for r in csv.DictReader(f)}


@pytest.mark.slow
def test_comparison_writes_tables_curves_gallery_and_cost(config, tmp_path):
    out = tmp_path / "run"
    args = ["--config", str(config), f"output.dir={out}", "wandb.mode=offline", f"wandb.dir={tmp_path / 'wb'}"]
    assert explain_main(args) == 0
    (wb,) = (tmp_path / "wb" / "wandb").glob("offline-run-*")  # the comparison reached W&B too
    logged = {p.name.split("_")[0] for p in (wb / "files" / "media").rglob("*") if p.is_file()}
    assert {"deletion", "insertion", "summary"} <= logged, logged
    assert list((wb / "files" / "media" / "table" / "tables").glob("deletion*.table.json"))
    for family in ("drop_increase", "deletion_insertion", "proportion", "segmentation", "cost"):
        rows = table(out, family)
        assert list(rows) == LABELS and all(r["images"] == "5" for r in rows.values()), family
        assert (out / "tables" / f"{family}.md").read_text().startswith("| method | images |")
    di = table(out, "deletion_insertion")
    assert all(0 <= float(r["deletion"]) <= 1 and 0 <= float(r["insertion"]) <= 1 for r in di.values())
    assert "dice/mean" in table(out, "segmentation")["hdm"] and "proportion" in table(out, "proportion")["rise"]
    cost = table(out, "cost")
    assert float(cost["gradient"]["forward_per_image"]) == 1 and float(cost["gradient"]["backward_per_image"]) == 1
    assert float(cost["rise"]["forward_per_image"]) == 32 and float(cost["rise"]["backward_per_image"]) == 0
    assert float(cost["random"]["forward_per_image"]) == 0
    # HDM at 32 px: S=2 DM runs x (2 benchmark + 3 levels x 2 vectors) x 3 epochs + 3 mixing steps
    assert float(cost["hdm"]["backward_per_image"]) == 2 * 8 * 3 + 3
    for kind in ("deletion", "insertion"):
        assert (out / "curves" / f"{kind}.png").stat().st_size > 1000
        with open(out / "curves" / f"{kind}.csv") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["fraction", *LABELS] and len(rows) == 1 + 11
    assert sorted(p.name for p in (out / "gallery" / "test").iterdir()) == ["000000.png", "000001.png"]
    for label in LABELS:
        maps = sorted((out / "methods" / label / "maps" / "test").glob("*.pt"))
        assert len(maps) == 5
        sal = torch.load(maps[0], weights_only=True)["saliency"]
        assert sal.shape == (1, 32, 32) and float(sal.min()) >= 0 and float(sal.max()) <= 1
    with open(out / "manifest.csv") as f:
        manifest = list(csv.DictReader(f))
    assert len(manifest) == 5 * len(LABELS) and {r["method"] for r in manifest} == set(LABELS)
    assert {"deletion", "insertion", "proportion", "dice/mean", "drop/70"} <= set(manifest[0])
    # every method explains the same class of each image
    targets = {r["id"]: set() for r in manifest}
    for r in manifest:
        targets[r["id"]].add(r["target"])
    assert all(len(t) == 1 for t in targets.values())


@pytest.mark.slow
def test_interrupted_comparison_resumes_to_identical_tables(config, tmp_path, monkeypatch):
    ref, out = tmp_path / "reference", tmp_path / "interrupted"
    assert explain_main(["--config", str(config), f"output.dir={ref}"]) == 0
    calls = {"n": 0}
    real = MaskStageModule.training_step

    def crash(self, *args):
        calls["n"] += 1
        if calls["n"] == 2 * 4 * 3 + 5:  # 2 DM runs x 4 fits x 3 steps per batch: inside the second batch
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(MaskStageModule, "training_step", crash)
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        explain_main(["--config", str(config), f"output.dir={out}"])
    monkeypatch.undo()
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores SIGINT after a Ctrl+C
    assert explain_main(["--config", str(config), f"output.dir={out}"]) == 0
    for family in ("drop_increase", "deletion_insertion", "proportion", "segmentation"):
        assert (out / "tables" / f"{family}.csv").read_text() == (ref / "tables" / f"{family}.csv").read_text()
    assert (out / "curves" / "deletion.csv").read_text() == (ref / "curves" / "deletion.csv").read_text()
    spent = ("seconds", "seconds_per_image", "forward_per_image", "backward_per_image")

    def rows(folder):
        with open(folder / "manifest.csv") as f:
            return [{k: v for k, v in r.items() if k not in spent} for r in csv.DictReader(f)]

    assert rows(out) == rows(ref)


def test_comparison_config_errors(config, tmp_path, capsys):
    base = ["--config", str(config), f"output.dir={tmp_path / 'o'}"]
    assert explain_main([*base, "methods=[{name: gradcamm}]"]) == 2
    err = capsys.readouterr().err
    assert "gradcamm" in err and "gradcam" in err  # the registered names are listed
    assert explain_main([*base, "methods=[{name: rise, params: {masks: 3}}]"]) == 2
    assert "n_masks" in capsys.readouterr().err  # the known parameters are listed
    assert explain_main([*base, "evaluation.metrics=[pointing_gam]"]) == 2
    assert "pointing_gam" in capsys.readouterr().err
    assert explain_main([*base, "methods=[{name: gradient}, {name: gradient}]"]) == 2
    assert "label" in capsys.readouterr().err


def test_tables_are_means_of_per_image_values_with_the_best_in_bold(tmp_path):
    recs = {
        "a": [
            {"status": "ok", "metrics": {"deletion": 0.1, "insertion": 0.8}, "seconds_per_image": 1.0},
            {"status": "ok", "metrics": {"deletion": 0.3, "insertion": 0.6}, "seconds_per_image": 3.0},
            {"status": "failed"},
        ],
        "b": [{"status": "ok", "metrics": {"deletion": 0.1, "insertion": 0.9}, "seconds_per_image": 0.5}],
    }
    tables = write_tables(tmp_path, recs, ["deletion_insertion"])
    rows = table(tmp_path, "deletion_insertion")
    assert rows["a"]["images"] == "2" and math.isclose(float(rows["a"]["deletion"]), 0.2)
    assert math.isclose(float(rows["a"]["insertion"]), 0.7) and math.isclose(float(rows["b"]["insertion"]), 0.9)
    md = tables["deletion_insertion"].splitlines()
    assert md[0] == "| method | images | deletion ↓ | insertion ↑ |"
    # a: two images, so a bootstrap interval (the resampled means are 0.1, 0.2 or 0.3); b: one image, one pair
    assert md[2] == "| a | 2 | 0.2000 [0.1000, 0.3000] | 0.7000 [0.6000, 0.8000] |"
    assert md[3] == "| b | 1 | **0.1000** | **0.9000** |" and "against `a`" in md[5]
    assert table(tmp_path, "cost")["a"]["seconds_per_image"] == "2"


def test_mean_curves():
    recs = {
        "m": [
            {"status": "ok", "metrics": {"deletion_curve": [1.0, 0.5, 0.0]}},
            {"status": "ok", "metrics": {"deletion_curve": [0.5, 0.5, 0.5]}},
        ]
    }
    assert mean_curves(recs) == {"deletion_curve": {"m": [0.75, 0.5, 0.25]}}
