"""Metric families describe themselves: a family added from outside the package is one class and one registration.

The plugin family is defined here and registered by a fixture, which takes it out of the registry again so that the
tests reading the whole registry never see it.
"""

from __future__ import annotations

import csv
import importlib
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hdm_lightning.cli import explain_main
from hdm_lightning.evaluation import Evaluation, MetricSuite, column_key, write_tables
from hdm_lightning.io import load_tensors
from hdm_lightning.metrics import (
    EVALUATION_FAMILIES,
    METRIC_FAMILIES,
    METRICS,
    MapStability,
    SaliencyMetric,
    families,
    register_metric,
    saliency_metrics,
)
from hdm_lightning.metrics.family import family_of, higher_is_better, in_manifest
from hdm_lightning.registry import Registry
from hdm_lightning.run.writer import MANIFEST_COLUMNS, write_manifest

REPO = Path(__file__).resolve().parents[2]


class CentreShare(SaliencyMetric):
    """Share of the map's mass in the central box (side ``fraction`` of the image's), and how much of it is hot."""

    columns = {"centre": True, "hot": False}  # hot: share of pixels above half the maximum (lower: more compact)

    def __init__(self, fraction: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.fraction = float(fraction)
        for name in ("centre_sum", "hot_sum", "count"):
            self.add_sum(name)

    def update(self, images, saliency, target, mask=None):
        s = saliency[:, 0].double()
        h, w = s.shape[-2:]
        dy, dx = round(h * (1 - self.fraction) / 2), round(w * (1 - self.fraction) / 2)
        centre = s[:, dy : h - dy, dx : w - dx].sum((1, 2)) / s.sum((1, 2)).clamp_min(1e-12)
        hot = (s > s.amax((1, 2), keepdim=True) / 2).double().mean((1, 2))
        self.last = {"centre": centre, "hot": hot}
        self.accumulate("centre_sum", centre.sum())
        self.accumulate("hot_sum", hot.sum())
        self.accumulate("count", torch.tensor(float(len(s))))

    def compute(self):
        return {k: float(getattr(self, f"{k}_sum") / self.count) for k in self.columns}


@pytest.fixture
def centre():
    register_metric("centre")(CentreShare)
    yield CentreShare
    METRICS.unregister("centre")


def test_built_in_descriptions_give_the_papers_order_directions_and_choices():
    from_maps = ["drop_increase", "deletion_insertion", "road", "proportion", "pointing_game", "segmentation"]
    assert [c.family for c in families()] == [*from_maps, "stability", "sanity"]
    assert list(METRIC_FAMILIES) == from_maps  # the families that rerun the method come last and are left out
    assert EVALUATION_FAMILIES["stability"] is MapStability and METRICS.get("stability").requires_method
    directions = {h: d for c in families() for h, d in c.columns.items()}
    assert directions == {
        "drop": False,
        "increase": True,
        "deletion": False,
        "insertion": True,
        "road_morf": False,
        "road_lerf": True,
        "road_gap": True,
        "proportion": True,
        "pointing": True,
        "dice": True,
        "iou": True,
        "ppv": True,
        "sensitivity": True,
        "stability": True,
        "sanity": False,
    }
    keys = ["dice/mean", "stability/batch/iou5", "increase/70", "dice/95", "proportion", "insertion", "drop/90"]
    keys += ["drop/70", "dice/70", "deletion", "stability/noise1e-06/pearson", "probability", "probability/70"]
    assert sorted(keys, key=column_key)[:-2] == [
        "drop/70",
        "drop/90",
        "increase/70",
        "deletion",
        "insertion",
        "proportion",
        "dice/70",
        "dice/95",
        "dice/mean",
        "stability/noise1e-06/pearson",
        "stability/batch/iou5",
    ]
    manifest = [k for k in keys if in_manifest(k)]
    assert sorted(manifest) == sorted(set(keys) - {"dice/95", "dice/70", "probability", "probability/70"})
    seg = METRICS.get("segmentation")
    assert [t for t in ("70", "71", "95", "99", "mean") if seg.in_markdown(f"dice/{t}")] == ["70", "95", "mean"]
    assert family_of("deletion_curve") is None and higher_is_better("probability") is None


def test_a_family_registered_from_outside_is_in_the_suite_the_tables_and_the_manifest(centre, tmp_path):
    assert "centre" in METRIC_FAMILIES and family_of("centre/anything") is centre and centre.family == "centre"
    evaluation = SimpleNamespace(batch_size=4, params={"centre": {"fraction": 0.25}})
    suite = MetricSuite(None, Evaluation.from_config(evaluation, ["centre"]), None, None)
    assert list(suite.plain) == ["centre"] and suite.masked is None and not suite.reruns
    assert suite.plain["centre"].fraction == 0.25
    with pytest.raises(ValueError, match="already registered as metric family 'centre'"):
        register_metric("centre2")(centre)
    maps = torch.zeros(2, 1, 8, 8)
    maps[0, :, 3:5, 3:5] = 1.0  # all in the central 2x2 box
    maps[1, :, 0, :] = 1.0  # all on the top row
    values = suite.per_image(torch.zeros(2, 3, 8, 8), maps, torch.tensor([0, 1]), [None, None])
    assert values == [{"centre": 1.0, "hot": 4 / 64}, {"centre": 0.0, "hot": 8 / 64}]
    records = {
        "a": [{"id": "x", "status": "ok", "metrics": values[0]}],
        "b": [{"id": "x", "status": "ok", "metrics": values[1]}],
    }
    md = write_tables(tmp_path, records, ["centre"])["centre"].splitlines()
    assert md[0] == "| method | images | centre ↑ | hot ↓ |"
    # one image per method: no interval, no test (both need two or more)
    assert md[2:4] == ["| a | 1 | **1.0000** | **0.0625** |", "| b | 1 | 0.0000 | 0.1250 |"]
    write_manifest(tmp_path, {"x": {**records["a"][0], "metrics": {**values[0], "drop/70": 1.0, "x_curve": [1]}}})
    with open(tmp_path / "manifest.csv") as f:
        assert next(csv.reader(f)) == [*MANIFEST_COLUMNS, "drop/70", "centre", "hot"]


@pytest.mark.slow
def test_a_plugin_family_runs_in_a_comparison_with_its_params(centre, tmp_path):
    out = tmp_path / "out"
    args = [
        "--config",
        str(REPO / "configs" / "tiny.yaml"),
        "data.kind=photos",
        "data.photos=[chelsea,coffee]",
        "methods=[{name: gradient}, {name: random}]",
        "evaluation.metrics=[centre, drop_increase]",
        "evaluation.params={centre: {fraction: 0.25}}",
        f"output.dir={out}",
        "wandb.mode=disabled",
    ]
    assert explain_main(args) == 0
    for label in ("gradient", "random"):
        rec = json.loads((out / "methods" / label / "records" / "chelsea.json").read_text())
        sal = load_tensors(out / "methods" / label / "maps" / "chelsea.pt")["saliency"][0].double()
        expect = float(sal[12:20, 12:20].sum() / sal.sum())  # 32 px, the central quarter: 8x8
        assert math.isclose(rec["metrics"]["centre"], expect, abs_tol=1e-5), label
    md = (out / "tables" / "centre.md").read_text()
    assert md.startswith("| method | images | centre ↑ | hot ↓ |")
    with open(out / "manifest.csv") as f:
        head = next(csv.reader(f))
    drop = [f"{k}/{q}" for k in ("drop", "increase") for q in (70, 80, 90)]
    assert head == [*MANIFEST_COLUMNS, *drop, "centre", "hot"]


@pytest.fixture
def docs_example(tmp_path, monkeypatch):
    """docs/extending.md's example family, imported as a plugin module (what ``imports:`` does)."""
    text = (REPO / "docs" / "extending.md").read_text().split("## A new metric")[1]
    (tmp_path / "docs_metric.py").write_text(text.split("```python\n")[1].split("```")[0])
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module("docs_metric")
    METRICS.unregister("centre")
    sys.modules.pop("docs_metric", None)


def test_the_docs_example_family_works(docs_example):
    assert METRICS.get("centre") is docs_example.CentreShare
    suite = MetricSuite(
        None,
        Evaluation.from_config(SimpleNamespace(batch_size=4, params={"centre": {"fraction": 0.5}}), ["centre"]),
        None,
        None,
    )
    maps = torch.zeros(2, 1, 8, 8)
    maps[0, :, 2:6, 2:6] = 1.0
    maps[1, :, 0, :4] = 1.0
    maps[1, :, 4, 4] = 1.0
    assert suite.per_image(torch.zeros(2, 3, 8, 8), maps, torch.tensor([0, 1]), [None, None]) == [
        {"centre": 1.0},
        {"centre": 0.2},
    ]
    assert suite.plain.compute() == {"centre": 0.6}


def test_registration_checks_the_description():
    class Clash(CentreShare):
        columns = {"dice": True}

    class Unsorted(CentreShare):
        columns = {"a/b": True}

    class Rerunner(CentreShare):
        columns = {"rerun": True}
        requires_method = True

    for cls, message in [
        (Clash, r"columns \['dice'\] already belong to family 'segmentation'"),
        (Unsorted, "columns must map column heads"),
        (Rerunner, "has requires_method but no update_from_method"),
        (type("Plain", (), {}), "must be a torchmetrics Metric subclass that derives from MetricFamily"),
    ]:
        with pytest.raises(ValueError, match=message):
            register_metric("x")(cls)
    with pytest.raises(ValueError, match="'cost' is taken"):
        register_metric("cost")(CentreShare)
    with pytest.raises(ValueError, match="already registered"):
        register_metric("segmentation")(CentreShare)
    assert "x" not in METRICS and "cost" not in METRICS
    with pytest.raises(ValueError, match="reruns the saliency method"):
        saliency_metrics(None, ["stability"])


def test_a_registry_entry_can_be_taken_out():
    reg = Registry("thing")
    reg.register("a")(int)
    assert reg.unregister("a") is int and "a" not in reg and reg.names() == []
    with pytest.raises(KeyError, match="Unknown thing 'a'"):
        reg.unregister("a")
