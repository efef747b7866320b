"""``hl.compare``: the Python form of explain.py's comparison, on the same runner, folder and tables.

The comparison of a dataset through ``hl.compare`` and through ``explain.py`` gives the same maps and the same
tables; a tensor of images gives the maps of one-at-a-time calls of ``hl.explain``; a rerun resumes and refuses
other images or another model; bad methods and metrics are refused with their message.
"""

from __future__ import annotations

import re

import pytest
import torch

import hdm_lightning as hl
from hdm_lightning.cli import explain_main
from hdm_lightning.config import ConfigError, load_run_config
from hdm_lightning.data import build_dataset
from hdm_lightning.models import Preprocess, build_backbone, load_classifier_checkpoint, save_classifier_checkpoint
from tests.toy_models import RegionNet

DM = {"schedule": {"params": {"sizes": [2, 3], "factors": [2], "epochs": 3, "lr": 0.2, "eta": 1.0}}}
METHODS = [
    {"name": "dm", "params": {"config": DM}},
    "gradient",
    {"name": "rise", "label": "rise50", "params": {"n_masks": 50}},
]
METRICS = ["deletion_insertion", "pointing_game"]
SIZE = 32


def _checkpoint(path):
    torch.manual_seed(0)
    model = build_backbone("small_cnn", 4)
    with torch.no_grad():
        model.head.weight.mul_(20.0)  # logits that react to the input (random init is nearly flat)
    prep = Preprocess(size=SIZE, resize=SIZE, interpolation="bilinear")
    return save_classifier_checkpoint(path, model, "small_cnn", 4, ["circle", "square", "triangle", "cross"], prep)


def _without_seconds(table: dict) -> dict:
    return {m: {k: v for k, v in row.items() if not k.startswith("seconds")} for m, row in table.items()}


def test_compare_is_explain_py(tmp_path):
    """A dataset compared from Python and by explain.py: the same maps, records' metrics and tables."""
    ckpt = _checkpoint(tmp_path / "classifier.pt")
    methods = "[{name: dm, params: {config: " + str(DM).replace("'", "") + "}}, {name: gradient}, "
    methods += "{name: rise, label: rise50, params: {n_masks: 50}}]"
    data = ["data.kind=synthetic", "data.synthetic.num_images=3", f"data.synthetic.size={SIZE}"]
    args = [f"classifier.checkpoint={ckpt}", "classifier.name=small_cnn", f"methods={methods}", *data]
    args += [f"evaluation.metrics=[{','.join(METRICS)}]", "evaluation.steps=10", "batch_size=2", "device=cpu"]
    cli = tmp_path / "cli"
    assert explain_main([*args, f"output.dir={cli}", "wandb.mode=disabled", "progress=false"]) == 0

    classifier = load_classifier_checkpoint(ckpt)
    cfg, _ = load_run_config(None, [*args, f"output.dir={cli}"])
    dataset = build_dataset(cfg.data, classifier.preprocess)
    out = hl.compare(classifier, dataset, METHODS, METRICS, evaluation={"steps": 10}, batch_size=2, device="cpu")
    ref = hl.Comparison.load(cli)
    assert out.labels == ref.labels == ["dm", "gradient", "rise50"] and out.ids == ref.ids and len(out.ids) == 3
    assert out.folder is None and out.summary.done == 3
    for label in out.labels:
        assert torch.equal(out.maps[label], ref.maps[label]), label
        assert [out.records[label][i]["metrics"] for i in out.ids] == [
            ref.records[label][i]["metrics"] for i in ref.ids
        ]
    assert set(out.tables) == set(ref.tables) == {*METRICS, "cost"}
    for family in out.tables:
        assert _without_seconds(out.tables[family]) == _without_seconds(ref.tables[family]), family
    assert out.markdown["pointing_game"] == ref.markdown["pointing_game"]


def test_tensor_images_match_one_at_a_time_calls_and_resume(tmp_path):
    torch.manual_seed(0)
    model = RegionNet([(8, 20, 8, 20)], SIZE)
    x = torch.randn(3, 3, SIZE, SIZE)
    masks = torch.zeros(3, SIZE, SIZE, dtype=torch.bool)
    masks[:, 8:20, 8:20] = True
    folder = tmp_path / "run"
    out = hl.compare(model, x, METHODS, METRICS, masks=masks, output_dir=folder, evaluation={"steps": 10})
    for label, name, config in (("dm", "dm", DM), ("gradient", "gradient", None)):
        singles = torch.cat([hl.explain(model, x[i : i + 1], name, config=config).maps for i in range(3)])
        assert torch.allclose(out.maps[label], singles, atol=1e-5 if name == "dm" else 0), label
    # the known salient region: the gradient's pointing game hits the box on every image
    assert out.tables["pointing_game"]["gradient"]["pointing/all"] == 1.0
    again = hl.compare(model, x, METHODS, METRICS, masks=masks, output_dir=folder, evaluation={"steps": 10})
    assert (again.summary.done, again.summary.skipped) == (0, 3) and again.folder == folder
    assert again.tables == out.tables and all(torch.equal(again.maps[k], out.maps[k]) for k in out.labels)
    with pytest.raises(ConfigError, match=r"images \(given in memory\): it has changed .*output.resume=false"):
        hl.compare(model, x.flip(0), METHODS, METRICS, masks=masks, output_dir=folder, evaluation={"steps": 10})


def test_bad_methods_and_metrics_are_refused():
    model, x = RegionNet([(8, 20, 8, 20)], SIZE), torch.randn(2, 3, SIZE, SIZE)
    cases = [
        (["gradcm"], [], "methods: entry 'gradcm': Unknown saliency method 'gradcm'"),
        ([{"name": "rise", "params": {"masks": 3}}], [], "entry 'rise': unknown parameter(s) ['masks']"),
        ([42], [], "methods: 42 is not a method"),
        (["gradient"], ["delition"], "delition"),
    ]
    for methods, metrics, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)):
            hl.compare(model, x, methods, metrics)
