"""The shipped CUB amortised pipeline, end to end on a CUB-format fixture: classifier -> explainer -> comparison.

The three commands of configs/explainer/cub.yaml run as shipped, with only the fixture's root, a ResNet-18 at 32 px
and a short schedule overridden: the skip layers exist on a torchvision ResNet, the levels are predicted for the
classifier's input size, and every method of configs/compare_amortised_cub.yaml finds the explainer where
train_explainer.py wrote it (paths relative to the working folder, as a user runs them).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from hdm_lightning.cli import explain_main, train_classifier_main, train_explainer_main
from tests.fixtures import make_cub_tree

REPO = Path(__file__).resolve().parents[2]


def test_cub_classifier_explainer_and_comparison_run_as_shipped(tmp_path, monkeypatch):
    cub = make_cub_tree(tmp_path / "cub", classes=3, per_class=4)
    monkeypatch.chdir(tmp_path)  # the configs' outputs/... paths are relative to where the user runs them
    quiet = ["wandb.mode=disabled", "num_workers=0", f"data.root={cub}"]
    small = ["backbone=resnet18", "init.kind=random", "preprocess.size=32", "preprocess.resize=32"]
    args = ["--config", str(REPO / "configs/classifier/cub_resnet50.yaml"), *quiet, *small]
    assert train_classifier_main([*args, "batch_size=4", "trainer.max_epochs=1"]) == 0
    args = ["--config", str(REPO / "configs/explainer/cub.yaml"), *quiet, "batch_size=4", "val_limit=2"]
    assert train_explainer_main([*args, "trainer.max_epochs=1", "trainer.accelerator=cpu"]) == 0
    raw = torch.load(tmp_path / "outputs/explainer/cub/explainer.pt", weights_only=True)
    assert raw["skips"] == ["layer2", "layer3"] and raw["predictor"]["skip_channels"] == [128, 256]
    assert raw["image_size"] == [32, 32] and len(raw["predictor"]["sizes"]) > 3  # benchmark vectors and levels
    n_vectors = len(raw["predictor"]["sizes"])

    args = ["--config", str(REPO / "configs/compare_amortised_cub.yaml"), f"data.root={cub}", "data.limit=2"]
    args += ["classifier.name=resnet18", "wandb.mode=disabled", "progress=false", "device=cpu"]
    args += ["evaluation.metrics=[deletion_insertion]", "evaluation.steps=4", "evaluation.gallery=0"]
    assert explain_main(args) == 0
    run = tmp_path / "outputs/compare_amortised_cub"
    rows = {r["method"]: r for r in csv.DictReader((run / "tables" / "cost.csv").open())}
    want = {"hdm", "dm", "amortised", "hdm_refine_0", "hdm_refine_3", "hdm_short_3", "amortised_refine_10"}
    assert want <= set(rows) and all(rows[m]["images"] == "2" for m in want)
    backward = {m: float(rows[m]["backward_per_image"]) for m in want}
    assert backward["amortised"] == 0 and backward["hdm_refine_0"] == 20  # HDM only mixes the predicted stages
    assert backward["amortised_refine_10"] == 10 * n_vectors
    assert backward["hdm_refine_3"] == backward["hdm_short_3"] > backward["hdm_refine_0"]
    record = json.loads(next((run / "methods" / "amortised" / "records").rglob("*.json")).read_text())
    assert record["error"] == "" and record["backward_per_image"] == 0
