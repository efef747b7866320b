"""The prepared classifier of the mask fits: batch norm folded exactly, the user's model untouched, fits unchanged.

Static TF-"same" padding equals timm's dynamic padding (float64) for odd and even sizes, at the size it was made for
and, padded dynamically, at any other.

Folding is checked in float64 (outputs and input gradients to 1e-10 relative) on the architectures the project
loads: torchvision's ResNet and DenseNet (whose batch norms before a convolution stay), timm's TF EfficientNet-Lite0
(norm + activation layers, TF-"same" convolutions). A pair registered as conv -> BN but run the other way round
fails the check and the model runs as given; a model without batch norm runs as given.
"""

from __future__ import annotations

import pytest
import timm
import torch
from omegaconf import OmegaConf
from torch import nn
from torchvision.models import densenet121, resnet18

import hdm_lightning as hl
from hdm_lightning.config import ConfigError, load_run_config
from hdm_lightning.prepare import StaticSameConv2d, prepare_classifier
from hdm_lightning.run.folder import check_run_folder
from tests.baselines.test_baselines import cnn


def _with_statistics(model: nn.Module) -> nn.Module:
    """Random batch-norm statistics and affine parameters (fresh ones are the identity, which folds trivially)."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval().double().requires_grad_(False)


def _pass(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    out = model(x)
    (grad,) = torch.autograd.grad(out[:, 1].sum(), x)
    return out.detach(), grad


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize(
    ("name", "build", "folded", "kept"),
    [
        ("resnet18", lambda: resnet18(num_classes=5), {"bn1", "layer1.0.bn2", "layer2.0.downsample.1"}, set()),
        ("lite0", lambda: timm.create_model("tf_efficientnet_lite0", num_classes=5), {"bn1", "bn2"}, set()),
        ("densenet121", lambda: densenet121(num_classes=5), {"features.norm0"}, {"features.transition1.norm"}),
    ],
    ids=["resnet18", "tf_efficientnet_lite0", "densenet121"],
)
def test_folding_is_exact_in_float64(name, build, folded, kept):
    torch.manual_seed(0)
    model = _with_statistics(build())
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prepared = prepare_classifier(model, x)
    assert prepared.model is not model and folded <= set(prepared.folded), prepared.folded
    assert ("conv_stem" in prepared.static) == (prepared.out_of_place > 0) == (name == "lite0")  # ReLU stays in place
    assert not kept & set(prepared.folded)  # a batch norm before its convolution (DenseNet) stays
    (out, grad), (ref_out, ref_grad) = _pass(prepared.model, x), _pass(model, x)
    assert _relative(out, ref_out) < 1e-10 and _relative(grad, ref_grad) < 1e-10
    after = model.state_dict()  # the user's model is untouched
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize(("kernel", "stride"), [(3, 2), (5, 2), (4, 1), (1, 2)])
@pytest.mark.parametrize("size", [(14, 14), (15, 12), (7, 9)])
def test_static_same_padding_equals_timms_dynamic_padding(kernel, stride, size):
    """At the size it was made for (and at any other, padded dynamically): timm's ``Conv2dSame``, float64."""
    torch.manual_seed(0)
    same = timm.layers.Conv2dSame(6, 6, kernel, stride, groups=3).double()
    static = StaticSameConv2d(same, size)
    for shape in (size, (size[0] + 1, size[1] + 2)):
        x = torch.randn(2, 6, *shape, dtype=torch.float64, requires_grad=True)
        got, want = static(x), same(x)
        (g,) = torch.autograd.grad((got * got.detach()).sum(), x)
        (w,) = torch.autograd.grad((want * want.detach()).sum(), x)
        assert got.shape == want.shape and _relative(got.detach(), want.detach()) < 1e-12 and _relative(g, w) < 1e-12


class BackToFront(nn.Module):
    """A conv and a batch norm registered in that order but applied the other way round: not a foldable pair."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Linear(3, 4)

    def forward(self, x):
        return self.head(self.conv(self.bn(x)).mean((2, 3)))


def test_a_pair_that_is_not_conv_then_bn_is_left_as_is():
    model = _with_statistics(BackToFront())
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    prepared = prepare_classifier(model, x)
    assert prepared.model is model and prepared.folded == [] and "changed the outputs" in prepared.note
    norm_free = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.LazyLinear(3))
    norm_free(torch.randn(1, 3, 8, 8))  # materialise the lazy layer
    prepared = prepare_classifier(norm_free.eval(), torch.randn(2, 3, 8, 8))
    assert prepared.model is norm_free and "no batch norm after a convolution" in prepared.note


def test_a_fit_on_the_prepared_classifier_gives_the_same_maps_up_to_round_off():
    """DM on a small CNN with batch norm, float64: prepared and as given agree; the passes are counted either way."""
    model = _with_statistics(cnn())
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    assert prepare_classifier(model, x).folded  # the fits below do run a folded copy
    schedule = {"params": {"sizes": [4, 5], "factors": [5], "epochs": 3, "lr": 0.2, "eta": 1.0}}
    configs = {prepare: {"schedule": schedule, "engine": {"prepare": prepare}} for prepare in (True, False)}
    runs = {prepare: hl.explain(model, x, "dm", target=[0, 3], config=c) for prepare, c in configs.items()}
    assert torch.allclose(runs[True].maps, runs[False].maps, atol=1e-8)
    assert runs[True].backward_passes == runs[False].backward_passes > 0
    assert runs[True].forward_passes == runs[False].forward_passes


def test_a_run_computed_before_prepare_was_the_default_is_not_resumed_with_it(tmp_path):
    cfg, _ = load_run_config(None, [f"output.dir={tmp_path}"])
    saved = OmegaConf.to_container(cfg)
    del saved["explainer"]["engine"]["prepare"]  # a config.yaml written before the setting existed
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(saved)))
    with pytest.raises(ConfigError, match=r"prepare: False -> True.*pass explainer.engine.prepare=false"):
        check_run_folder(tmp_path, cfg)
    cfg.explainer.engine.prepare = False
    check_run_folder(tmp_path, cfg)


def test_a_compiled_pass_gives_the_same_maps():
    """``engine.compile: default`` (torch.compile of the prepared copy), float64: the maps of the eager fits."""
    torch.manual_seed(0)
    tiny = [nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten()]
    model = _with_statistics(nn.Sequential(*tiny, nn.Linear(16, 3)))
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    schedule = {"params": {"sizes": [4], "factors": [], "epochs": 2, "lr": 0.2, "eta": 1.0}}
    runs = {
        mode: hl.explain(model, x, "dm", target=[1], config={"schedule": schedule, "engine": {"compile": mode}})
        for mode in ("none", "default")
    }
    assert torch.allclose(runs["default"].maps, runs["none"].maps, atol=1e-8)
    assert runs["default"].backward_passes == runs["none"].backward_passes > 0
    with pytest.raises(ValueError, match=r"engine.compile must be one of \['none', 'default'"):
        hl.explain(model, x, "dm", config={"schedule": schedule, "engine": {"compile": "fast"}})
