"""Amortised dynamic masks: the predictor's loss is DM's, train -> explain end to end, resume, bad input."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hdm_lightning import build_method
from hdm_lightning.amortised import (
    AmortisedExplainer,
    AmortisedMaskModule,
    FeatureTap,
    MaskPredictor,
    load_explainer,
    predictor_loss,
)
from hdm_lightning.amortised.explainer import benchmark_vectors, predicted_vectors
from hdm_lightning.amortised.module import guide
from hdm_lightning.cli import explain_main, train_classifier_main, train_explainer_main
from hdm_lightning.config import load_explainer_config
from hdm_lightning.data.synthetic import generate_shapes
from hdm_lightning.explainers.engine import ScheduleOutcome, combine
from hdm_lightning.explainers.modules import MaskStageModule
from hdm_lightning.explainers.selectors import ActivationSelector
from hdm_lightning.masks.ops import Threshold, dm_combine_threshold
from hdm_lightning.models import build_backbone, load_classifier
from hdm_lightning.schedules.base import Stage

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "explainer" / "synthetic.yaml")
SCHEDULE = {"name": "dm", "params": {"sizes": [3, 4, 5], "factors": [2], "epochs": 3, "lr": 0.05, "eta": 1.0}}
SMALL = [  # the synthetic config at 32 px on a few hundred images
    "data.synthetic.size=32",
    "val_limit=64",
    "batch_size=32",
    "wandb.mode=disabled",
    "trainer.log_every_n_steps=1",
]


def _shapes(n: int, size: int, split: str = "test") -> tuple[torch.Tensor, list[torch.Tensor]]:
    x, masks = [], []
    for i in range(n):
        rgb, _, mask = generate_shapes(i, size, 0, split)
        x.append((torch.from_numpy(rgb).permute(2, 0, 1).float() / 255 - 0.5) / 0.5)
        masks.append(torch.from_numpy(mask).bool())
    return torch.stack(x), masks


def test_predictor_loss_is_the_dm_stage_loss():
    """The same vectors give the same per-row losses in the predictor's training and in DM's benchmark fit."""
    torch.manual_seed(0)
    model = build_backbone("small_cnn", 4).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(3, 3, 32, 32)
    specs = benchmark_vectors(SCHEDULE)
    vectors = [torch.rand(3, 1, *v.size) for v in specs]
    selector = ActivationSelector(model, x, None)
    stage = Stage("benchmark", specs, 1)
    reference = torch.stack([selector.reference] * len(specs))
    module = MaskStageModule(model, selector, x, stage, vectors, [None] * len(specs), reference)
    dm = module.chunk_losses(0, len(specs), 0, 3)
    amortised = predictor_loss(model, x, selector.targets, selector.reference, vectors, specs)
    torch.testing.assert_close(amortised, dm, rtol=0, atol=0)
    assert dm.shape == (3, 3) and bool((dm > 0).all())
    # an auxiliary level (Eq. 8): its guide is the frozen level below, upsampled to its size
    stages = predicted_vectors(SCHEDULE, (32, 32))
    assert [s.name for s in stages][:2] == ["benchmark", "level1"]
    level = stages[1]
    below = {v.name: d for v, d in zip(specs, vectors, strict=True)}
    level_vectors = [torch.rand(3, 1, *v.size) for v in level.vectors]
    guides = [guide(below[v.guide], v.size, "bilinear") for v in level.vectors]
    reference = torch.stack([selector.reference] * len(level.vectors))
    module = MaskStageModule(model, selector, x, level, level_vectors, guides, reference)
    dm = module.chunk_losses(0, len(level.vectors), 0, 3)
    both = predictor_loss(
        model, x, selector.targets, selector.reference, vectors + level_vectors, specs + level.vectors
    )
    torch.testing.assert_close(both[len(specs) :], dm, rtol=0, atol=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A synthetic-shapes classifier (val/acc1 0.99) and an amortised explainer for it, both at 32 px (~30 s)."""
    root = tmp_path_factory.mktemp("amortised")
    clf = root / "classifier"
    args = ["--config", str(REPO / "configs/classifier/synthetic.yaml"), f"output.dir={clf}", "wandb.mode=disabled"]
    args += ["data.synthetic.size=32", "data.synthetic.num_images=1000", "val_limit=128", "trainer.max_epochs=8"]
    args += ["preprocess.size=32", "preprocess.resize=32", "optim.lr=0.01"]  # val/acc1 0.99
    assert train_classifier_main(args) == 0
    out = root / "explainer"
    args = ["--config", CONFIG, f"classifier.checkpoint={clf / 'classifier.pt'}", f"output.dir={out}", *SMALL]
    args += ["data.synthetic.num_images=1000", "trainer.max_epochs=6"]
    assert train_explainer_main(args) == 0
    return clf / "classifier.pt", out


def test_end_to_end_train_then_explain(trained, tmp_path, capsys):
    """explainer.pt loads weights-only; ``amortised`` costs <= 2 forward passes, no backward, and finds the object."""
    classifier_file, out = trained
    assert (out / "checkpoints" / "last.ckpt").is_file() and (out / "config.yaml").is_file()
    raw = torch.load(out / "explainer.pt", weights_only=True)
    assert raw["format"] == "hdm_lightning.explainer" and raw["predictor"]["sizes"][:3] == [[6, 6], [8, 8], [10, 10]]
    explainer = load_explainer(out / "explainer.pt")
    assert explainer.threshold == Threshold("quantile", 0.5) and explainer.layer == "features.3"
    clf = load_classifier({"checkpoint": str(classifier_file)})
    x, masks = _shapes(12, 32)
    method = build_method("amortised", clf.model, {"checkpoint": str(out / "explainer.pt")})
    result = method.explain(x)
    assert result.maps.shape == (12, 1, 32, 32)
    assert result.forward_passes <= 2 * 12 and result.backward_passes == 0
    # the map is DM's M_b of the predicted vectors (HDM paper Eq. 9-10), built by DM's own functions
    with torch.no_grad():
        vectors, _ = explainer.predict(clf.model, x, None)
    stage = Stage("benchmark", explainer.vectors, 1)
    mc = combine(ScheduleOutcome(vectors, {}, {}, [stage], 0), 32, 32, "bilinear")
    torch.testing.assert_close(result.maps, dm_combine_threshold(mc, Threshold("quantile", 0.5))[0])
    # a known salient region: the maps are brighter on the red object than off it
    inside = torch.stack([m[0][k].mean() for m, k in zip(result.maps, masks, strict=True)])
    outside = torch.stack([m[0][~k].mean() for m, k in zip(result.maps, masks, strict=True)])
    assert float((inside - outside).mean()) > 0.2, (inside, outside)
    # the maps depend on the classifier: randomising its weights changes them (the sanity check's premise)
    torch.manual_seed(1)
    rand = build_backbone("small_cnn", 4)
    other = build_method("amortised", rand, {"checkpoint": str(out / "explainer.pt")})(x)
    assert float((other - result.maps).abs().mean()) > 0.05


def test_explain_py_runs_amortised_and_hdm_with_amortised_init(trained, tmp_path):
    """A comparison with ``amortised`` and ``hdm`` started from the predictor: records, passes, tables."""
    classifier_file, out = trained
    ex = str(out / "explainer.pt")
    config = tmp_path / "compare.yaml"
    config.write_text(
        f"""\
method: hdm
explainer:
  schedule: {{name: dm, params: {{sizes: [6, 8, 10], factors: [2], epochs: 2, lr: 0.05}}}}
  stages: 2
  mixing: {{epochs: 2}}
  init: amortised
  init_checkpoint: {ex}
batch_size: 4
device: cpu
progress: false
classifier: {{checkpoint: {classifier_file}}}
data: {{kind: synthetic, split: test, synthetic: {{num_images: 4, size: 32}}}}
methods:
  - {{name: hdm}}
  - {{name: amortised, params: {{checkpoint: {ex}}}}}
evaluation: {{metrics: [proportion], steps: 10, gallery: 0}}
wandb: {{mode: disabled}}
"""
    )
    assert explain_main(["--config", str(config), f"output.dir={tmp_path / 'run'}"]) == 0
    rows = list(csv.DictReader((tmp_path / "run" / "tables" / "proportion.csv").open()))
    assert {r["method"] for r in rows} == {"hdm", "amortised"}
    records = sorted((tmp_path / "run" / "methods" / "amortised" / "records").rglob("*.json"))
    assert len(records) == 4


def test_init_amortised_starts_the_fit_at_the_prediction(trained):
    """With ``init: amortised`` every predicted vector (benchmark, levels) starts at the prediction; one step moves
    them little."""
    classifier_file, out = trained
    clf = load_classifier({"checkpoint": str(classifier_file)})
    x, _ = _shapes(3, 32)
    explainer = load_explainer(out / "explainer.pt")
    with torch.no_grad():
        start, _ = explainer.predict(clf.model, x, None)
    config = {
        "schedule": {"name": "dm", "params": {"sizes": [6, 8, 10], "factors": [2], "epochs": 1, "lr": 1e-4}},
        "init": "amortised",
        "init_checkpoint": str(out / "explainer.pt"),
    }
    e = build_method("dm", clf.model, {"config": config}).explain(x).explanation
    assert len(start) > 3  # the shipped config predicts the auxiliary levels too: they start at the prediction as well
    for name, d in start.items():
        assert float((e.stages[0].vectors[name] - d).abs().max()) <= 1.5e-4
    tau = build_method("dm", clf.model, {"config": {**config, "init": "tau"}}).explain(x).explanation
    assert float((tau.stages[0].vectors["d1"] - 0.5).abs().max()) <= 1.5e-4


def test_resumed_training_matches_an_uninterrupted_one(tmp_path, monkeypatch, capsys):
    """An interrupted train_explainer.py run, run again, ends with the weights of a run never interrupted."""
    base = ["--config", CONFIG, "classifier.checkpoint=null", "classifier.name=small_cnn", "classifier.num_classes=4"]
    base += ["classifier.preprocess.size=32", "classifier.preprocess.resize=32", *SMALL]
    base += ["data.synthetic.num_images=96", "trainer.max_epochs=3"]
    assert train_explainer_main([*base, f"output.dir={tmp_path / 'whole'}"]) == 0

    original = AmortisedMaskModule.training_step

    def crash(self, batch, batch_idx):
        if self.current_epoch == 1 and batch_idx == 2:
            raise RuntimeError("simulated interruption")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(AmortisedMaskModule, "training_step", crash)
    with pytest.raises(RuntimeError, match="simulated interruption"):
        train_explainer_main([*base, f"output.dir={tmp_path / 'cut'}"])
    assert (tmp_path / "cut" / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "cut" / "explainer.pt").exists()
    monkeypatch.setattr(AmortisedMaskModule, "training_step", original)
    capsys.readouterr()
    assert train_explainer_main([*base, f"output.dir={tmp_path / 'cut'}"]) == 0
    assert "resuming from" in capsys.readouterr().err
    a = torch.load(tmp_path / "whole" / "explainer.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "cut" / "explainer.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_input_messages(tmp_path, capsys, trained):
    classifier_file, out = trained
    model = build_backbone("small_cnn", 4)
    with pytest.raises(ValueError, match="amortised needs params {checkpoint"):
        build_method("amortised", model, {})
    with pytest.raises(ValueError, match="does not exist: train one with"):
        build_method("amortised", model, {"checkpoint": str(tmp_path / "nope.pt")})
    with pytest.raises(ValueError, match="is not an amortised explainer file"):
        build_method("amortised", model, {"checkpoint": str(classifier_file)})
    wrong = build_method("amortised", build_backbone("small_cnn", 7), {"checkpoint": str(out / "explainer.pt")})
    with pytest.raises(
        ValueError, match=r"trained for a classifier with \[128, 32, 64\] feature channels .* and 4 classes"
    ):
        wrong(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="init: amortised needs init_checkpoint"):
        build_method("hdm", model, {"config": {"init": "amortised"}})
    with pytest.raises(ValueError, match="init must be one of"):
        build_method("dm", model, {"config": {"init": "zeros"}})
    with pytest.raises(ValueError, match=r"benchmark sizes \[\(6, 6\)\]"):
        cfg = {"init": "amortised", "init_checkpoint": str(out / "explainer.pt")}
        build_method("dm", model, {"config": {**cfg, "schedule": {"params": {"sizes": [6]}}}})
    assert train_explainer_main(["--config", CONFIG, "nonsense=1"]) == 2
    assert "bad config key 'nonsense'" in capsys.readouterr().err
    assert train_explainer_main(["--config", CONFIG, "target=labels"]) == 2
    assert "target must be one of ['predicted', 'label', 'random', 'mixed']" in capsys.readouterr().err
    assert train_explainer_main(["--config", CONFIG, "explainer.aux_reference=previous"]) == 2
    assert "predictor.levels needs aux_reference: original" in capsys.readouterr().err
    assert train_explainer_main(["--config", CONFIG, "explainer.schedule.name=mdm"]) == 2
    assert "predicts the benchmark vectors of the 'dm' schedule" in capsys.readouterr().err
    missing = ["--config", CONFIG, f"classifier.checkpoint={tmp_path / 'none.pt'}", f"output.dir={tmp_path / 'o'}"]
    assert train_explainer_main(missing) == 2
    assert "none.pt" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_share_the_epoch(tmp_path):
    """trainer.devices=2 on CPU: ordinary DDP (gradients averaged), each process trains on half of every epoch."""
    out = tmp_path / "ddp"
    args = [sys.executable, str(REPO / "train_explainer.py"), "--config", CONFIG, f"output.dir={out}", *SMALL]
    args += ["classifier.checkpoint=null", "classifier.num_classes=4", "classifier.preprocess.size=32"]
    args += ["classifier.preprocess.resize=32", "trainer.devices=2", "trainer.max_epochs=1"]
    args += ["data.synthetic.num_images=128", "batch_size=16"]
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "WORLD_SIZE", "RANK", "NODE_RANK")}
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len([ln for ln in proc.stdout.splitlines() if ln.startswith("best val/loss")]) == 1, proc.stdout
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 128 // 16 // 2  # half of the 8 batches per process
    assert load_explainer(out / "explainer.pt").predictor.sizes[:3] == [(6, 6), (8, 8), (10, 10)]


def test_predictor_outputs_and_batch_independence():
    """Outputs in [0, 1], start at tau, one image's vectors do not depend on its batch; the clamp passes gradients."""
    torch.manual_seed(0)
    feats, targets = torch.randn(5, 16, 4, 4), torch.tensor([0, 1, 2, 0, 1])
    for output in ("sigmoid", "clamp", "stretched"):
        p = MaskPredictor(16, 3, [(3, 3), (6, 6)], hidden=8, tau=0.3, output=output)
        first = p(feats, targets)
        assert [tuple(d.shape) for d in first] == [(5, 1, 3, 3), (5, 1, 6, 6)]
        torch.testing.assert_close(first[0], torch.full_like(first[0], 0.3))  # heads start at tau
        with torch.no_grad():
            for head in p.heads:
                head.weight.normal_(0.0, 5.0)
        out = p(feats, targets)
        assert all(float(d.min()) >= 0.0 and float(d.max()) <= 1.0 for d in out)
        alone = p(feats[2:3], targets[2:3])
        torch.testing.assert_close(alone[1], out[1][2:3], rtol=1e-5, atol=1e-6)
    p = MaskPredictor(16, 3, [(2, 2)], hidden=8, output="clamp")
    with torch.no_grad():
        p.heads[0].bias.fill_(-2.0)  # every element projected to 0 ...
    out = p(feats, targets)[0]
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert float(p.heads[0].bias.grad) == out.numel()  # ... yet the gradient reaches the head, as in DM's projection
    with pytest.raises(ValueError, match="output must be one of"):
        MaskPredictor(1, 1, [(1, 1)], output="relu")


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "explainer").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_explainer_config_loads(path):
    cfg = load_explainer_config(path)
    assert cfg.explainer["schedule"]["params"]["sizes"] == [6, 8, 10] and cfg.trainer.max_epochs >= 1


def test_skip_layers_reach_the_output_and_survive_the_file(tmp_path):
    """Finer skip layers are tapped in the same pass, change the vectors, and explainer.pt keeps them."""
    torch.manual_seed(0)
    model = build_backbone("small_cnn", 3).eval()
    tap = FeatureTap(model, None, ["features.1"])
    images = torch.randn(2, 3, 32, 32)
    feats, logits = tap.features(images)
    assert [tuple(f.shape) for f in feats] == [(2, 128, 4, 4), (2, 32, 8, 8)]
    torch.testing.assert_close(logits, model(images))
    p = MaskPredictor(128, 3, [(3, 3), (6, 6)], hidden=8, skip_channels=[32])
    with torch.no_grad():
        for head in p.heads:
            head.weight.normal_(0.0, 5.0)
    targets = torch.tensor([0, 2])
    out = p(feats, targets)
    moved = p([feats[0], feats[1] + torch.randn_like(feats[1])], targets)
    assert not torch.allclose(out[1], moved[1])  # the skip features matter
    with pytest.raises(ValueError, match="reads 2 feature layers, got 1"):
        p(feats[0], targets)
    sizes = {"name": "dm", "params": {"sizes": [3, 6]}}
    explainer = AmortisedExplainer(p.eval(), None, sizes, skips=["features.1"])
    loaded = load_explainer(explainer.save(tmp_path / "explainer.pt"))
    assert loaded.skips == ["features.1"]
    vectors, _ = loaded.predict(model, images, targets)
    torch.testing.assert_close(vectors[loaded.vectors[1].name], out[1])


def test_auxiliary_levels_are_predicted_combined_and_kept_in_the_file(tmp_path):
    """With levels the predictor outputs every vector DM fits at that image size, and the map sums them all."""
    torch.manual_seed(0)
    model = build_backbone("small_cnn", 3).eval()
    stages = predicted_vectors(SCHEDULE, (32, 32))
    specs = [v for stage in stages for v in stage.vectors]
    assert len(stages) > 1 and all(v.guide is not None for v in stages[1].vectors)
    p = MaskPredictor(128, 3, [v.size for v in specs], hidden=8)
    with torch.no_grad():
        for head in p.heads:
            head.weight.normal_(0.0, 5.0)
    explainer = AmortisedExplainer(p.eval(), None, SCHEDULE, image_size=(32, 32))
    loaded = load_explainer(explainer.save(tmp_path / "explainer.pt"))
    assert loaded.image_size == (32, 32) and [v.name for v in loaded.vectors] == [v.name for v in specs]
    assert [v.size for v in loaded.benchmark] == [(3, 3), (4, 4), (5, 5)]
    images = torch.randn(2, 3, 32, 32)
    vectors, _ = loaded.predict(model, images, torch.tensor([0, 1]))
    assert set(vectors) == {v.name for v in specs}
    _, mc = loaded.saliency(vectors, 32, 32)
    outcome = ScheduleOutcome(vectors=vectors, history={}, names={}, plan=stages, passes=0)
    torch.testing.assert_close(mc, combine(outcome, 32, 32, "bilinear"))
    benchmark_only = ScheduleOutcome(vectors=vectors, history={}, names={}, plan=stages[:1], passes=0)
    assert not torch.allclose(mc, combine(benchmark_only, 32, 32, "bilinear"))  # the levels count
    with pytest.raises(ValueError, match="auxiliary levels for 32x32 images, got 64x64"):
        loaded.predict(model, torch.randn(1, 3, 64, 64), None)
