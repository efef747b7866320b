"""``target: {prototype: k}``: every method explains prototype k's activation of a prototype network."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from hdm_lightning.cli import explain_main, train_classifier_main
from hdm_lightning.config import load_run_config
from hdm_lightning.contract import build_method
from hdm_lightning.data import build_dataset
from hdm_lightning.models import load_classifier, save_classifier_checkpoint
from hdm_lightning.models.prototype import PrototypeUnits, build_prototype_net
from hdm_lightning.models.small_cnn import small_cnn_preprocess
from hdm_lightning.run.batch import batch_targets
from hdm_lightning.targets import PrototypeTarget, parse_target
from tests.fixtures import make_cub_tree

REPO = Path(__file__).resolve().parents[2]
HEAD = {"kind": "prototype", "prototypes_per_class": 3, "prototype_shape": [8, 1, 1]}
NAMES = ["circle", "square", "triangle", "cross"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = build_prototype_net("small_cnn", 4, HEAD).eval()
    path = tmp_path_factory.mktemp("proto") / "classifier.pt"
    return save_classifier_checkpoint(path, net, "small_cnn", 4, NAMES, small_cnn_preprocess(), head=HEAD)


def args(checkpoint: Path, out: Path, target: str, methods: str) -> list[str]:
    return [
        "--config",
        str(Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"),
        f"classifier.checkpoint={checkpoint}",
        "classifier.name=small_cnn",
        "classifier.preprocess.size=64",
        "classifier.preprocess.resize=64",
        "data.kind=synthetic",
        "data.split=test",
        "data.limit=2",
        f"target={target}",
        f"methods={methods}",
        "evaluation.metrics=[segmentation]",
        "evaluation.segmentation_percents=[70,90]",
        f"output.dir={out}",
        "wandb.mode=disabled",
    ]


def test_the_forms_of_target():
    assert parse_target("predicted") == "predicted" and parse_target({"prototype": 5}) == PrototypeTarget(5)
    assert parse_target({"prototype": "first_of_class"}) == PrototypeTarget(None)
    for bad in ("prototype", {"prototype": 1.5}, {"prototype": True}, {"class": 1}, {"prototype": 1, "x": 2}):
        with pytest.raises(ValueError, match="target"):
            parse_target(bad)


def test_first_of_class_is_the_predicted_class_first_prototype():
    torch.manual_seed(1)
    net = build_prototype_net("small_cnn", 4, HEAD).eval()
    x = torch.randn(5, 3, 64, 64)
    got = batch_targets(PrototypeUnits(net), x, [-1] * 5, {"prototype": "first_of_class"})
    assert got.tolist() == (net(x).argmax(1) * 3).tolist()
    assert batch_targets(PrototypeUnits(net), x, [-1] * 5, {"prototype": 7}).tolist() == [7] * 5


def test_every_method_explains_the_prototype_activation(checkpoint, tmp_path):
    mdm = "{name: mdm, params: {config: {schedule: {name: mdm, params: {steps: 3}}}}}"
    methods = f"[{{name: prototype_upsample}}, {{name: gradcam}}, {{name: gradient}}, {mdm}, {{name: hdm}}]"
    out = tmp_path / "run"
    assert explain_main(args(checkpoint, out, "{prototype: 7}", methods)) == 0
    with open(out / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["method"] for r in rows} == {"prototype_upsample", "gradcam", "gradient", "mdm", "hdm"}
    assert len(rows) == 10
    assert all(
        r["status"] == "ok" and r["target"] == "7" and r["target_name"] == "prototype 7 (triangle)" for r in rows
    )
    assert all(r["dice/mean"] != "" for r in rows)
    # the explained unit is the prototype's activation: DM/HDM/MDM record it as their activation
    units = PrototypeUnits(build_prototype_net("small_cnn", 4, HEAD))
    units.net.load_state_dict(torch.load(checkpoint, weights_only=True)["state_dict"])
    record = json.loads((out / "methods" / "mdm" / "records" / "test" / "000000.json").read_text())
    assert record["target"] == 7 and record["activation"] == pytest.approx(
        float(units.eval()(_image(out))[0, 7]), rel=1e-5
    )
    status = explain_main(args(checkpoint, tmp_path / "far", "{prototype: 12}", "[{name: gradient}]"))
    assert status == 2  # 12 prototypes: 0..11


def _image(out: Path) -> torch.Tensor:
    cfg, _ = load_run_config(out / "config.yaml", ["preset=null"])
    assert load_classifier(cfg.classifier).preprocess == small_cnn_preprocess()
    return build_dataset(cfg.data, small_cnn_preprocess())[0].image[None]


def test_prototype_upsample_is_the_similarity_map_upsampled_bicubically():
    torch.manual_seed(2)
    net = build_prototype_net("small_cnn", 4, HEAD).eval()
    x, target = torch.randn(2, 3, 64, 64), torch.tensor([4, 10])
    result = build_method("prototype_upsample", PrototypeUnits(net)).explain(x, target)
    with torch.no_grad():
        sim = net.similarity_maps(x)[torch.arange(2), target][:, None]  # [2, 1, 8, 8]
    up = torch.nn.functional.interpolate(sim, size=(64, 64), mode="bicubic", align_corners=False)
    lo, hi = up.amin((1, 2, 3), keepdim=True), up.amax((1, 2, 3), keepdim=True)
    assert torch.allclose(result.maps, (up - lo) / (hi - lo), atol=1e-6)
    assert (result.forward_passes, result.backward_passes) == (2, 0)
    with pytest.raises(ValueError, match="prototype_upsample needs a prototype network"):
        build_method("prototype_upsample", torch.nn.Conv2d(3, 4, 1))


@pytest.mark.slow
def test_the_cub_prototype_configs_run_on_a_cub_format_fixture(tmp_path):
    """configs/classifier/cub_prototype.yaml then configs/prototypes_cub.yaml, cut down (random ResNet-18 at 32 px,
    a few steps) on a CUB-format tree with segmentations: training, push, checkpoint and the comparison's table."""
    cub = make_cub_tree(tmp_path / "cub", classes=3, per_class=4)
    clf = tmp_path / "clf"
    train = ["--config", str(REPO / "configs/classifier/cub_prototype.yaml"), f"data.root={cub}", f"output.dir={clf}"]
    train += ["backbone=resnet18", "init.kind=random", "preprocess.size=32", "preprocess.resize=32", "batch_size=2"]
    train += ["model.prototypes_per_class=2", "model.prototype.warm_epochs=1", "model.prototype.last_layer_epochs=1"]
    train += ["trainer.max_epochs=1", "num_workers=0", "wandb.mode=disabled"]
    assert train_classifier_main(train) == 0
    push = json.loads((clf / "push.json").read_text())
    assert [p["class"] for p in push["prototypes"]] == [0, 0, 1, 1, 2, 2]
    assert all(p["image"].startswith(f"00{p['class'] + 1}.Bird_") for p in push["prototypes"])  # its own class
    out = tmp_path / "protos"
    explain = ["--config", str(REPO / "configs/prototypes_cub.yaml"), f"data.root={cub}", "data.limit=2"]
    explain += [f"classifier.checkpoint={clf / 'classifier.pt'}", "classifier.name=resnet18", f"output.dir={out}"]
    explain += ["explainer.schedule.params.sizes=[2,3]", "explainer.schedule.params.steps=2", "wandb.mode=disabled"]
    explain += ["methods=[{name: prototype_upsample}, {name: mdm}, {name: gradcam}]", "progress=false"]
    assert explain_main(explain) == 0
    table = (out / "tables" / "segmentation.md").read_text()
    assert "| prototype_upsample | 2 |" in table and "| mdm | 2 |" in table and "| gradcam | 2 |" in table
