"""Saliency baselines: every registered method on a tiny CNN and a tiny ViT, exact costs, no side effects.

Each method runs once per model (a module-scoped cache); the tests read the recorded maps, pass counts and the
model-state comparison made right after the call.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

import hdm_lightning as hl
from hdm_lightning.amortised import AmortisedExplainer, FeatureTap, MaskPredictor
from hdm_lightning.contract import METHODS, Attribution, build_method, mask_methods, method_params
from hdm_lightning.masks.ops import normalize
from hdm_lightning.models.backbones import build_backbone
from tests.toy_models import RegionNet, box_mask

S = 32
B = 2
# Tiny DM/HDM/MDM budgets: two vector sizes, one auxiliary level (factor 5), 3 steps (enough to leave tau = 0.5).
DM = {"schedule": {"params": {"sizes": [4, 5], "factors": [5], "epochs": 3, "lr": 0.2, "eta": 1.0}}}
MDM = {
    "schedule": {"params": {"sizes": [4, 5], "steps": 3, "lr": 0.2, "consistency_weight": 1.0}},
    "threshold": {"kind": "quantile", "value": 0.5},
}
# Small budgets: every method runs in well under a second except the Lightning-based DM/HDM/MDM.
PARAMS = {
    "integrated_gradients": {"n_steps": 4},
    "rise": {"n_masks": 24, "batch_size": 10},
    "mask": {"iterations": 5},
    "extremal": {"iterations": 3},
    "scorecam": {"batch_size": 64},
    "ablationcam": {"batch_size": 64},
    "dm": {"config": DM},
    "hdm": {"config": {**DM, "stages": 2, "mixing": {"epochs": 2}}},
    "mdm": {"config": MDM},
    "blurred": {"of": "gradient", "sigma": 2},
}
EXPECTED = {
    "gradient",
    "integrated_gradients",
    "deeplift",
    "gradcam",
    "gradcam++",
    "scorecam",
    "xgradcam",
    "ablationcam",
    "eigencam",
    "layercam",
    "fullgrad",
    "rise",
    "mask",
    "extremal",
    "hdm",
    "dm",
    "mdm",
    "amortised",
    "random",
    "centre",
    "edges",
    "blurred",
    "prototype_upsample",
}
# What genuinely does not apply, and the error that says so.
NO_PROTOTYPES = "prototype_upsample needs a prototype network"
NOT_APPLICABLE = {
    ("vit", "fullgrad"): "FullGrad needs a CNN",
    ("cnn", "prototype_upsample"): NO_PROTOTYPES,  # tested on a prototype network: tests/run/test_prototype_target.py
    ("vit", "prototype_upsample"): NO_PROTOTYPES,
}
# What cannot be built from its name alone: a trained file (or a prototype network) is part of the method.
NEEDS_FILE = {"amortised": "amortised needs params {checkpoint", "prototype_upsample": NO_PROTOTYPES}


def explainer_file(model: nn.Module, path) -> str:
    """An amortised explainer for ``model`` (random predictor weights: the contract, not the quality, is tested)."""
    tap = FeatureTap(model)
    with torch.no_grad():
        feats, logits = tap(torch.zeros(1, 3, S, S))
    torch.manual_seed(1)
    predictor = MaskPredictor(feats.shape[1], logits.shape[1], [(4, 4), (5, 5)], hidden=8)
    with torch.no_grad():
        for head in predictor.heads:
            head.weight.normal_(0.0, 1.0)
    schedule = {"name": "dm", "params": {"sizes": [4, 5], "factors": [5]}}
    AmortisedExplainer(predictor.eval(), tap.layer, schedule).save(path)
    return str(path)


def cnn() -> nn.Module:
    """``small_cnn`` with a dropout before its head (BatchNorm and Dropout), given in train mode."""
    torch.manual_seed(0)
    model = build_backbone("small_cnn", 5)
    with torch.no_grad():
        model.head.weight.mul_(20.0)  # logits that react to the input (random init is nearly flat)
    model.head = nn.Sequential(nn.Dropout(0.5), model.head)
    return model.train()


def vit() -> nn.Module:
    """A tiny torchvision ViT (4 x 4 patches of 8 px) with a random head (torchvision zero-inits it), train mode."""
    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=S, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=5, dropout=0.1
    )
    nn.init.normal_(model.heads.head.weight, std=0.5)
    return model.train()


@dataclasses.dataclass
class Record:
    maps: torch.Tensor | None
    error: Exception | None
    forward: int
    backward: int
    method: object
    changes: list[str]
    explanation: object = None  # DM/HDM/MDM: the Explanation of the call
    result: object = None  # the Attribution hl.explain returned


HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "params": [id(p) for p in model.parameters()],
        "modules": [(n, id(m)) for n, m in model.named_modules()],
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad is None for p in model.parameters()],
    }


def changes(model: nn.Module, before: dict) -> list[str]:
    after = snapshot(model)
    out = [key for key in ("params", "modules", "training", "requires_grad", "grads") if after[key] != before[key]]
    out += [f"weight {k}" for k, v in before["state"].items() if not torch.equal(v, after["state"][k])]
    for name, m in model.named_modules():
        out += [f"{d} on {name!r}" for d in HOOK_DICTS if getattr(m, d)]
        out += [f"attribute {a!r} on {name!r}" for a in ("input", "output", "input_ref") if a in vars(m)]  # captum
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    models = {"cnn": cnn(), "vit": vit()}
    folder = tmp_path_factory.mktemp("explainers")
    files = {kind: explainer_file(m, folder / f"{kind}.pt") for kind, m in models.items()}
    torch.manual_seed(3)
    images = torch.randn(B, 3, S, S)
    target = torch.tensor([0, 3])
    cache: dict[tuple[str, str], Record] = {}

    def run(kind: str, name: str) -> Record:
        if (kind, name) not in cache:
            model = models[kind]
            before = snapshot(model)
            maps, error, method, result = None, None, None, None
            try:
                params = {"checkpoint": files[kind]} if name == "amortised" else PARAMS.get(name)
                method = build_method(name, model, params)
                # Every method through the one public call (mask methods take their structured config).
                config = params["config"] if name in mask_methods() else params
                result = hl.explain(model, images, name, target=target, config=config)
                maps = result.maps
            except ValueError as e:
                error = e
            fwd = result.forward_passes if result is not None else 0
            bwd = result.backward_passes if result is not None else 0
            explanation = result.explanation if result is not None else None
            cache[kind, name] = Record(maps, error, fwd, bwd, method, changes(model, before), explanation, result)
        return cache[kind, name]

    run.models, run.files, run.images, run.target = models, files, images, target
    return run


def test_registry_is_the_list_of_baselines():
    assert set(METHODS.names()) == EXPECTED


@pytest.mark.parametrize("kind", ["cnn", "vit"])
@pytest.mark.parametrize("name", METHODS.names())
def test_valid_maps(runs, name, kind):
    rec = runs(kind, name)
    if (kind, name) in NOT_APPLICABLE:
        assert rec.error is not None and NOT_APPLICABLE[kind, name] in str(rec.error)
        return
    assert rec.error is None, rec.error
    sal = rec.maps
    assert sal.shape == (B, 1, S, S) and sal.dtype == torch.float32
    assert torch.isfinite(sal).all()
    assert sal.min() >= 0 and sal.max() <= 1
    per_image = sal.flatten(1)
    assert (per_image.max(1).values > per_image.min(1).values).all(), "a constant map"


@pytest.mark.parametrize("name", METHODS.names())
def test_one_call_one_result(runs, name):
    """``hl.explain`` runs every method and returns an Attribution; mask methods attach their Explanation."""
    rec = runs("cnn", name)
    if ("cnn", name) in NOT_APPLICABLE:
        return
    result = rec.result
    assert isinstance(result, Attribution) and result.method == name
    assert result.passes_per_image == rec.backward // B
    if name in mask_methods():
        exp = result.explanation
        assert exp.method == name and result.stages is exp.stages and result.history is exp.history
        assert result.saliency is exp.saliency and result.seconds == exp.seconds
        assert torch.equal(result.maps, normalize(exp.saliency))  # maps: N(saliency) (HDM's mix is not in [0, 1])
    else:
        assert result.explanation is None and result.saliency is result.maps
        with pytest.raises(AttributeError, match="only DM, HDM and MDM attach an explanation"):
            _ = result.stages
    moved = result.cpu()
    assert torch.equal(moved.maps, result.maps) and moved.method == name


def test_every_method_compares(runs, tmp_path):
    """``hl.compare`` runs every registered method through explain.py's runner: the maps of ``hl.explain``.

    ``prototype_upsample`` needs a prototype network: the same runner runs it in tests/run/test_prototype_target.py.
    """
    model, names = runs.models["cnn"], [n for n in METHODS.names() if ("cnn", n) not in NOT_APPLICABLE]
    params = {**PARAMS, "amortised": {"checkpoint": runs.files["cnn"]}}
    methods = [{"name": n, "params": params.get(n, {})} for n in names]
    out = hl.compare(
        model,
        runs.images,
        methods,
        ["deletion_insertion"],
        labels=runs.target,
        target="label",
        batch_size=B,
        evaluation={"steps": 5},
    )
    assert out.labels == names and len(out.ids) == B
    for name in names:
        assert torch.equal(out.maps[name], runs("cnn", name).maps), name
        assert set(out.tables["deletion_insertion"][name]) >= {"deletion", "insertion", "deletion_p"}


def test_explain_config_of_a_baseline_is_its_params():
    model, x = cnn(), torch.randn(1, 3, S, S)
    a = hl.explain(model, x, "rise", target=1, config={"n_masks": 24, "batch_size": 10})
    b = build_method("rise", model, {"n_masks": 24, "batch_size": 10}).explain(x, 1)
    assert torch.equal(a.maps, b.maps) and a.forward_passes == b.forward_passes == 24
    with pytest.raises(ValueError, match=r"Known parameters: \['n_masks'"):
        hl.explain(model, x, "rise", config={"masks": 24})
    with pytest.raises(ValueError, match="a YAML or structured config sets DM, HDM or MDM only"):
        hl.explain(model, x, "rise", config="configs/methods/hdm_fast.yaml")
    with pytest.raises(KeyError, match="Unknown saliency method 'dn'. Available"):
        hl.explain(model, x, "dn")


@pytest.mark.parametrize("kind", ["cnn", "vit"])
@pytest.mark.parametrize("name", METHODS.names())
def test_model_left_as_given(runs, name, kind):
    """Flags, grads, weights, module tree restored; no hooks or captum attributes left (model given in train mode)."""
    rec = runs(kind, name)
    assert rec.changes == []


@pytest.mark.parametrize("kind", ["cnn", "vit"])
def test_pass_counts_exact(runs, kind):
    grad = runs(kind, "gradient")
    assert (grad.forward, grad.backward) == (B, B)
    rise = runs(kind, "rise")
    assert (rise.forward, rise.backward) == (PARAMS["rise"]["n_masks"] * B, 0)
    ig = runs(kind, "integrated_gradients")
    assert (ig.forward, ig.backward) == (PARAMS["integrated_gradients"]["n_steps"] * B,) * 2
    mask = runs(kind, "mask")
    assert (mask.forward, mask.backward) == (PARAMS["mask"]["iterations"] * B,) * 2
    gradcam = runs(kind, "gradcam")
    assert (gradcam.forward, gradcam.backward) == (B, B)
    deeplift = runs(kind, "deeplift")  # inputs and baselines in one batch, plus one 1-image probe (no reuse here)
    assert (deeplift.forward, deeplift.backward) == (2 * B + 1, 2 * B)
    for name in ("hdm", "dm", "mdm"):
        rec = runs(kind, name)
        ppi = rec.explanation.passes_per_image
        assert ppi > 0 and rec.backward == ppi * B, name
        assert rec.forward >= rec.backward + B, name  # plus the reference forwards without gradient
    assert (runs(kind, "random").forward, runs(kind, "random").backward) == (0, 0)


def test_build_method_errors():
    model = cnn()
    with pytest.raises(KeyError, match="Available: .*gradcam"):
        build_method("grad-cam", model)
    with pytest.raises(ValueError, match=r"Known parameters: \['n_masks', 's', 'p', 'batch_size', 'seed'\]"):
        build_method("rise", model, {"n_mask": 10})
    with pytest.raises(ValueError, match="n_masks must be a positive integer"):
        build_method("rise", model, {"n_masks": 0})
    with pytest.raises(ValueError, match="channels must be one of"):
        build_method("gradient", model, {"channels": "mean"})
    assert method_params("integrated_gradients")["n_steps"] == 50
    assert method_params("rise") == {"n_masks": 4000, "s": 7, "p": 0.5, "batch_size": 64, "seed": 0}


def test_target_forms_and_dtype():
    """An int target is broadcast; None explains the predicted class (one counted forward); float64 models work."""
    model = cnn().double()
    torch.manual_seed(0)
    x = torch.randn(B, 3, S, S)
    method = build_method("gradient", model)
    by_int = method(x, 2)
    assert by_int.dtype == torch.float32 and by_int.device == x.device
    assert torch.equal(by_int, method(x, torch.tensor([2, 2])))
    pred = model.eval()(x.double()).argmax(1)
    model.train()
    by_none = method.explain(x, None)
    assert (by_none.forward_passes, by_none.backward_passes) == (2 * B, B) and by_none.explanation is None
    assert torch.equal(by_none.maps, method(x, pred))
    with torch.no_grad():  # an evaluation loop under no_grad: gradient methods still work
        assert torch.equal(method(x, 2), by_int)
    with pytest.raises(ValueError, match="one per image"):
        method(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="integers"):
        method(x, torch.tensor([0.0, 1.0]))


def test_rise_is_seeded():
    model = cnn()
    x = torch.randn(B, 3, S, S)
    a = build_method("rise", model, {"n_masks": 12, "seed": 1})(x, 0)
    b = build_method("rise", model, {"n_masks": 12, "seed": 1, "batch_size": 5})(x, 0)
    c = build_method("rise", model, {"n_masks": 12, "seed": 2})(x, 0)
    assert torch.allclose(a, b, atol=1e-6) and not torch.allclose(a, c)


def test_random_map_is_a_function_of_seed_and_image():
    model = cnn()
    x = torch.randn(B, 3, S, S)
    first, second = build_method("random", model, {"seed": 4}), build_method("random", model, {"seed": 4})
    a1, a2 = first(x, 0), first(x, 0)
    assert torch.equal(a1, a2) and torch.equal(a1, second(x, 0))  # resumable: no hidden generator state
    assert torch.equal(first(x[1:], 0), a1[1:])  # the same map whatever the batch
    assert not torch.equal(a1[0], a1[1]) and not torch.equal(build_method("random", model, {"seed": 5})(x, 0), a1)


# ------------------------------------------------------------------------------------------------ known regions

BOX = (4, 14, 18, 28)  # rows, cols of the only pixels the class depends on (10 % of the image)


class WindowNet(nn.Module):
    """Class logits from ``relu(conv(x * window))``: the feature map is zero outside the window (+1 px conv reach).

    RegionNet pools its features over the box but computes them everywhere, so Grad-CAM (which weighs the whole
    feature map by globally averaged gradients) has no reason to localise on it; this net makes the Grad-CAM
    premise (spatial features pooled globally) hold.
    """

    def __init__(self, box, size: int, classes: int = 3) -> None:
        super().__init__()
        self.register_buffer("window", box_mask([box], size, pad=0).float())
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.5)
            self.conv.bias.zero_()
            self.fc.weight.copy_(torch.randn(self.fc.weight.shape, generator=g).abs() * 3.0)

    def forward(self, x):
        return self.fc(self.pool(self.act(self.conv(x * self.window))).flatten(1))


def energy_inside(sal: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Share of the map's energy that lies in ``gt``, per image."""
    return (sal * gt).sum((1, 2, 3)) / sal.sum((1, 2, 3))


def top_inside(sal: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Share of the ``|gt|`` highest-ranked pixels that lie in ``gt``, per image."""
    top = sal.flatten(1).topk(int(gt.sum()), dim=1).indices
    return gt.flatten()[top].float().mean(1)


@pytest.mark.parametrize(
    ("name", "params", "net"),
    [
        ("gradient", {}, "region"),
        ("gradcam", {"target_layer": "act"}, "window"),
        ("rise", {"n_masks": 3000, "batch_size": 500, "s": 4}, "region"),
    ],
)
def test_known_region(name, params, net):
    """The pixels the class depends on get most of the map (RISE: the top-ranked pixels and a higher mean).

    RISE's map is a plateau at ``E[P_c]`` wherever the class does not look, plus Monte-Carlo noise, so its energy
    is spread over the whole image by construction; what carries the explanation is the contrast.
    """
    model = RegionNet([BOX], S) if net == "region" else WindowNet(BOX, S)
    torch.manual_seed(0)
    x = torch.randn(B, 3, S, S)
    with torch.no_grad():
        target = model(x).argmax(1) if net == "region" else torch.zeros(B, dtype=torch.long)
    sal = build_method(name, model, params)(x, target)
    gt = box_mask([BOX], S)
    assert (top_inside(sal, gt) > 0.6).all(), top_inside(sal, gt)
    if name == "rise":
        inside = (sal * gt).sum((1, 2, 3)) / gt.sum()
        outside = (sal * ~gt).sum((1, 2, 3)) / (~gt).sum()
        assert (inside > 2 * outside).all(), (inside, outside)
    else:
        assert (energy_inside(sal, gt) > 0.8).all(), energy_inside(sal, gt)


@pytest.mark.parametrize("name", METHODS.names())
def test_builds_with_default_params(name):
    """Every registered method builds from its name alone on a known architecture (defaults are a valid config)."""
    if name in NEEDS_FILE:
        with pytest.raises(ValueError, match=re.escape(NEEDS_FILE[name])):
            build_method(name, cnn())
        return
    method = build_method(name, cnn())
    assert method.name == name
    assert set(method_params(name)) <= set(vars(method))  # params are kept as attributes (repr, logging)
    assert name in repr(method) or type(method).__name__ in repr(method)


def test_mask_jitter_is_seeded_and_helpers():
    from hdm_lightning.baselines.perturbation import gaussian_blur, tv_beta

    flat = torch.full((1, 3, 16, 16), 0.7)
    assert torch.allclose(gaussian_blur(flat, 2.0), flat)
    m = torch.zeros(1, 1, 3, 3)
    m[..., 1, 1] = 1.0
    assert tv_beta(m, 3.0).item() == pytest.approx(4.0)  # four unit steps around the centre
    model = cnn()
    x = torch.randn(B, 3, S, S)
    params = {"iterations": 4, "jitter": 3, "seed": 5}
    a = build_method("mask", model, params)(x)  # the predicted class: P_c of a very unlikely class has no gradient
    b = build_method("mask", model, params)(x)
    c = build_method("mask", model, {**params, "seed": 6})(x)
    assert a.flatten(1).std(1).min() > 0
    assert torch.equal(a, b) and not torch.equal(a, c)
