"""Behaviour: the maps are right on known-answer models, and the engine is safe to call."""

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn

import hdm_lightning as hl
from tests.toy_models import RegionNet, box_mask, tiny_cnn

S = 32
BOX = [(4, 14, 18, 28)]  # the only pixels the RegionNet decision depends on (14 % of the image)
DM = {
    "schedule": {"params": {"sizes": [4, 5, 6], "factors": [2], "epochs": 60, "lr": 0.05, "eta": 1.0}},
    "threshold": {"kind": "quantile", "value": 0.8},
}
CONFIGS = {
    "dm": DM,
    "hdm": {**DM, "stages": 2, "mixing": {"epochs": 30}},
    "mdm": {
        "schedule": {
            "params": {"sizes": [4, 5, 6, 7, 8], "steps": 80, "lr": 0.05, "consistency_weight": 1.0, "reg_weight": 1.0}
        },
        "threshold": {"kind": "quantile", "value": 0.8},
    },
}


def proportion(sal, gt):
    return (sal * gt).sum((1, 2, 3)) / sal.sum((1, 2, 3)).clamp_min(1e-12)


@pytest.fixture(scope="module")
def region_images():
    torch.manual_seed(0)
    return torch.randn(2, 3, S, S, dtype=torch.float64)


@pytest.mark.parametrize("method", hl.mask_methods())
def test_known_region_gets_most_energy(method, region_images):
    model = RegionNet(BOX, S).double()
    out = hl.explain(model, region_images, method, config=CONFIGS[method])
    gt = box_mask(BOX, S)
    ours = proportion(out.saliency, gt)
    torch.manual_seed(5)
    random = proportion(torch.rand_like(out.saliency), gt)
    assert (ours > 0.5).all(), ours
    assert (ours > 3 * random).all(), (ours, random)
    assert out.saliency.min() >= 0 and out.saliency.max() <= 1
    for stage in out.stages:
        for v in stage.vectors.values():
            assert v.min() >= 0 and v.max() <= 1  # masks stay in [0, 1] (projected Adam)


def test_hdm_second_stage_finds_the_other_region(region_images):
    boxes = [(3, 13, 3, 13), (19, 29, 19, 29)]
    # Either box alone suffices for the decision (max over boxes); box 0 is a bit stronger.
    model = RegionNet(boxes, S, gains=[1.2, 1.0], redundant=True).double()
    out = hl.explain(model, region_images, "hdm", config={**DM, "stages": 3, "mixing": {"epochs": 30}})
    gts = [box_mask([b], S) for b in boxes]
    first = torch.stack([proportion(out.stages[0].saliency, g) for g in gts], 1)  # [B, 2]
    second = torch.stack([proportion(out.stages[1].saliency, g) for g in gts], 1)
    main = first.argmax(1)
    rows = torch.arange(len(main))
    assert (first[rows, main] > 0.5).all(), first
    assert (second[rows, main] < 0.2).all(), second  # stage 2 avoids stage 1's region ...
    assert (second[rows, 1 - main] > 0.6).all(), second  # ... and finds the other one
    w = out.weights
    assert (w[:, :-1] >= w[:, 1:] - 1e-12).all()  # w_j non-increasing (Eq. 3)
    assert torch.allclose(w.sum(1), torch.ones(len(w), dtype=w.dtype))
    # X_i = (1 - N(sum M_j)) X_0 (Eq. 2): stage 1's region is blanked in the image stage 2 explains
    assert (out.stages[1].input == out.stages[0].masked).all()


def _tiny_cfg(method):
    if method == "mdm":
        return {
            "schedule": {"params": {"sizes": [3, 4], "steps": 5, "lr": 0.05}},
            "threshold": {"kind": "quantile", "value": 0.5},
        }
    cfg = {"schedule": {"params": {"sizes": [3, 4], "factors": [2], "epochs": 5, "lr": 0.05, "eta": 0.02}}}
    return {**cfg, "stages": 2, "mixing": {"epochs": 5}} if method == "hdm" else cfg


@pytest.mark.parametrize("method", hl.mask_methods())
def test_same_seed_same_maps_and_model_untouched(method, images):
    model = tiny_cnn()
    model[1].eval()  # a mixed train/eval state must come back exactly
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    model[0].weight.requires_grad_(False)
    a = hl.explain(model, images, method, config=_tiny_cfg(method))
    b = hl.explain(model, images, method, config=_tiny_cfg(method))
    assert torch.equal(a.saliency, b.saliency)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == modes
    assert not model[0].weight.requires_grad and model[0].bias.requires_grad
    assert a.saliency.shape == (2, 1, 24, 24) and a.binary.dtype == torch.bool
    assert a.saliency.device == next(model.parameters()).device
    assert a.passes_per_image > 0 and a.history


def test_result_contents(images):
    model = tiny_cnn()
    out = hl.explain(model, images, "hdm", config=_tiny_cfg("hdm"))
    with torch.no_grad():
        model.eval()
        logits = model(images)
    assert torch.equal(out.target, logits.argmax(1))
    assert torch.allclose(out.activation, logits.max(1).values)
    assert torch.allclose(out.probability, logits.softmax(1).max(1).values.float())
    assert len(out.stages) == 2 and out.weights.shape == (2, 2)
    assert set(out.history) == {
        "dm1/benchmark",
        "dm1/level1",
        "dm1/level2",
        "dm1/level3",
        "dm2/benchmark",
        "dm2/level1",
        "dm2/level2",
        "dm2/level3",
        "mix",
    }
    assert out.history["dm1/benchmark"].shape == (5, 2, 2)  # [steps, vectors, images]
    assert out.stages[0].vector_names["benchmark"] == ["d1", "d2"]
    # passes: 2 DM runs x (2 + 2 + 2 + 1 vectors... per level) x 5 steps + 5 mixing steps
    sched = hl.build_schedule("dm", _tiny_cfg("dm")["schedule"]["params"])
    assert out.passes_per_image == 2 * sched.passes_per_image(24, 24) + 5


def test_given_class_and_callable_selector(images):
    model = tiny_cnn()
    out = hl.explain(model, images, "dm", target=[1, 3], config=_tiny_cfg("dm"))
    assert out.target.tolist() == [1, 3]
    single = hl.explain(model, images, "dm", target=2, config=_tiny_cfg("dm"))
    assert single.target.tolist() == [2, 2]

    def unit(m, x):  # e.g. a prototype unit: here the mean of the first conv channel
        return m[0](x)[:, 0].mean((1, 2))

    cal = hl.explain(model, images, "mdm", target=unit, config=_tiny_cfg("mdm"))
    assert cal.target.tolist() == [-1, -1] and torch.isnan(cal.probability).all()
    with torch.no_grad():
        assert torch.allclose(cal.activation, unit(model, images))


def test_logger_gets_stage_prefixed_keys(images, tmp_path):
    logger = CSVLogger(tmp_path, name="run")
    cfg = _tiny_cfg("hdm")
    cfg["engine"] = {"log_every_n_steps": 1}
    hl.explain(tiny_cnn(), images, "hdm", config=cfg, logger=logger)
    logger.save()
    text = (tmp_path / "run" / "version_0" / "metrics.csv").read_text()
    for key in ("dm1/benchmark/loss", "dm2/level1/loss", "mix/loss"):
        assert key in text


class NotLogits(nn.Module):
    def forward(self, x):
        return x.mean((2, 3))[:, :, None]  # [B, C, 1]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (lambda x: x[0], "rank 4"),
        (lambda x: (x * 255).to(torch.uint8), "floating-point"),
        (lambda x: x.index_put((torch.tensor([0]),), torch.tensor(float("nan"), dtype=x.dtype)), "NaN"),
        (lambda x: x.numpy(), "torch.Tensor"),
    ],
    ids=["rank", "dtype", "nan", "numpy"],
)
def test_bad_images_rejected(images, bad, message):
    with pytest.raises(ValueError, match=message):
        hl.explain(tiny_cnn(), bad(images), "dm", config=_tiny_cfg("dm"))


def test_bad_model_and_targets_rejected(images):
    with pytest.raises(ValueError, match=r"\[B, classes\]"):
        hl.explain(NotLogits().double(), images, "dm", config=_tiny_cfg("dm"))
    with pytest.raises(ValueError, match="out of range for a model with 5 classes"):
        hl.explain(tiny_cnn(), images, "dm", target=7, config=_tiny_cfg("dm"))
    with pytest.raises(ValueError, match="one per image"):
        hl.explain(tiny_cnn(), images, "dm", target=[1, 2, 3], config=_tiny_cfg("dm"))
    with pytest.raises(ValueError, match=r"shape \[2\]"):
        hl.explain(tiny_cnn(), images, "dm", target=lambda m, x: m(x), config=_tiny_cfg("dm"))
    with pytest.raises(KeyError, match="Unknown saliency method 'dn'. Available"):
        hl.explain(tiny_cnn(), images, "dn")


def test_channels_last_and_bf16_engine_options():
    model = tiny_cnn(dtype=torch.float32)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 24, 24)
    cfg = {"schedule": {"params": {"sizes": [3, 4], "factors": [2], "epochs": 10, "lr": 0.05, "eta": 0.02}}}
    base = hl.explain(model, x, "dm", config=cfg)
    assert base.stages[0].combined.std() > 0.05  # the masks moved
    cl = hl.explain(model, x, "dm", config={**cfg, "engine": {"channels_last": True}})
    assert torch.allclose(cl.saliency, base.saliency, atol=1e-5)
    assert model[0].weight.is_contiguous()  # the model's memory format is restored
    bf = hl.explain(model, x, "dm", config={**cfg, "engine": {"precision": "bf16-mixed"}})
    assert bf.saliency.dtype == torch.float32 and bf.stages[0].history["benchmark"].dtype == torch.float32
    a, b = bf.stages[0].combined.flatten(), base.stages[0].combined.flatten()
    assert (a - b).abs().mean() < 0.05 * b.abs().mean()  # bf16 moves a few trajectories, not the map
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.98


def test_an_all_zero_map_is_warned_about(images):
    """MDM's paper threshold (gamma = 5 on the sum of the masks) is out of reach of two masks in [0, 1]."""
    cfg = {**_tiny_cfg("mdm"), "threshold": {"kind": "value", "value": 5.0}}
    with pytest.warns(UserWarning, match=r"mdm: \d of \d maps are all zero: the threshold gamma \(value 5\)"):
        out = hl.explain(tiny_cnn(), images, "mdm", config=cfg)
    assert float(out.saliency.max()) == 0.0
