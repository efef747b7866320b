"""Architecture handling: CAM target layers per family, ViT/Swin reshapes, distinct ReLUs for DeepLIFT, FullGrad."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision.models as tv
from torch import nn
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.models.vision_transformer import VisionTransformer

from hdm_lightning.baselines import (
    TokenReshape,
    default_target_layer,
    distinct_relus,
    fullgrad_unsupported_reason,
    nhwc_to_nchw,
    resolve_module,
)
from hdm_lightning.baselines.layers import module_path
from hdm_lightning.contract import build_method
from hdm_lightning.core import preserved
from hdm_lightning.models.backbones import build_backbone

# (constructor, expected dotted path of the target layer, reshape kind). Built on the meta device: structure only,
# no weights allocated, so even vit_b_16 / vgg11 take milliseconds.
FAMILIES = [
    (lambda: tv.resnet18(), "layer4.1", None),
    (lambda: tv.densenet121(), "features.norm5", None),
    (lambda: tv.vgg11(), "features.20", None),
    (lambda: tv.efficientnet_b0(), "features.8", None),
    (lambda: tv.mobilenet_v3_small(), "features.12", None),
    (lambda: tv.mobilenet_v2(), "features.18", None),
    (lambda: tv.convnext_tiny(), "features.7", None),
    (lambda: tv.swin_t(), "features.7.1.norm1", "nhwc"),
    (lambda: tv.vit_b_16(), "encoder.layers.encoder_layer_11.ln_1", "tokens"),
    (lambda: timm.create_model("resnet10t"), "layer4.0", None),
    (lambda: timm.create_model("densenet121"), "features.norm5", None),
    (lambda: timm.create_model("tf_efficientnet_lite0"), "bn2", None),  # the bundled classifier's architecture
    (lambda: timm.create_model("mobilenetv3_small_050"), "blocks.5", None),
    (lambda: timm.create_model("convnext_atto"), "stages.3", None),
    (lambda: timm.create_model("swin_tiny_patch4_window7_224"), "layers.3.blocks.1.norm1", "nhwc"),
    (lambda: timm.create_model("vit_tiny_patch16_224"), "blocks.11.norm1", "tokens"),
    (lambda: build_backbone("small_cnn", 3), "features.3", None),
]


@pytest.mark.parametrize(("make", "path", "reshape"), FAMILIES, ids=[f[1] + f"-{i}" for i, f in enumerate(FAMILIES)])
def test_default_target_layer(make, path, reshape):
    with torch.device("meta"):
        model = make()
    layer, fn = default_target_layer(model)
    assert module_path(model, layer) == path
    if reshape is None:
        assert fn is None
    elif reshape == "nhwc":
        assert fn is nhwc_to_nchw
    else:
        assert isinstance(fn, TokenReshape)


def test_wrapper_is_looked_through():
    with torch.device("meta"):
        model = nn.Sequential(nn.Identity(), tv.resnet18())
    layer, _ = default_target_layer(model)
    assert module_path(model, layer) == "1.layer4.1"


def test_unknown_architecture_says_pass_target_layer():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="pass params target_layer="):
        default_target_layer(model)
    with pytest.raises(ValueError, match="target_layer="):
        build_method("gradcam", model)
    method = build_method("gradcam", model, {"target_layer": "1"})
    assert method.layer is model[1]
    assert build_method("gradcam", model, {"target_layer": "-4"}).layer is model[1]


def test_resolve_module_paths_and_errors():
    model = build_backbone("small_cnn", 3)
    assert resolve_module(model, "features.-1") is model.features[3]
    assert resolve_module(model, "features.1.0") is model.features[1][0]
    with pytest.raises(ValueError, match=r"has no submodule 'layer4'; its children are \['features', 'pool', 'head'\]"):
        resolve_module(model, "layer4")
    with pytest.raises(ValueError, match="out of range"):
        resolve_module(model, "features.9")


def tiny_vit() -> VisionTransformer:
    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)
    nn.init.normal_(model.heads.head.weight, std=0.5)
    return model.eval()


def test_vit_reshape_on_real_activations():
    model = tiny_vit()
    layer, fn = default_target_layer(model)
    seen = []
    handle = layer.register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    handle.remove()
    tokens = seen[0]
    assert tokens.shape == (2, 1 + 16, 32)
    grid = fn(tokens)
    assert grid.shape == (2, 32, 4, 4)
    assert torch.equal(grid[:, :, 1, 2], tokens[:, 1 + 1 * 4 + 2])  # row-major patches, class token dropped


def test_gradcam_on_tiny_swin_nhwc():
    torch.manual_seed(0)
    model = SwinTransformer(
        patch_size=[4, 4], embed_dim=8, depths=[1, 1], num_heads=[1, 1], window_size=[2, 2], num_classes=3
    ).eval()
    method = build_method("gradcam", model)
    assert module_path(model, method.layer) == "features.3.0.norm1"
    sal = method(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    assert sal.shape == (2, 1, 32, 32) and (sal.flatten(1).std(1) > 0).all()


def resnet18(size_classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return tv.resnet18(num_classes=size_classes).eval()


def test_distinct_relus_resnet18():
    model = resnet18()
    x = torch.randn(2, 3, 32, 32)
    copy = distinct_relus(model, x[:1])
    with torch.no_grad():
        assert torch.allclose(copy(x), model(x), atol=1e-5, rtol=1e-5)
    # The copy: one ReLU module per use, none in place; the original: untouched.
    assert not any(isinstance(m, nn.ReLU) and m.inplace for m in copy.modules())
    assert all(hasattr(b, "relu1") and hasattr(b, "relu2") and not hasattr(b, "relu") for b in copy.layer1)
    assert all(isinstance(b.relu, nn.ReLU) and b.relu.inplace for b in model.layer1)
    counts: dict[str, int] = {}
    for name, m in copy.named_modules():
        if isinstance(m, nn.ReLU):
            m.register_forward_hook(lambda mod, a, o, name=name: counts.__setitem__(name, counts.get(name, 0) + 1))
    with torch.no_grad():
        copy(x)
    assert counts and set(counts.values()) == {1}


def test_distinct_relus_bottleneck_and_train_mode_kept():
    torch.manual_seed(0)
    model = tv.ResNet(tv.resnet.Bottleneck, [1, 1, 1, 1], num_classes=3).train()
    copy = distinct_relus(model, torch.randn(1, 3, 32, 32))
    assert copy.training and all(m.training for m in copy.modules())
    assert all(hasattr(copy.layer1[0], f"relu{i}") for i in (1, 2, 3))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(copy.eval()(x), model.eval()(x), atol=1e-5, rtol=1e-5)


def test_distinct_relus_names_other_reuse():
    class Reuse(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.act = nn.Linear(4, 4), nn.Linear(4, 2), nn.ReLU()

        def forward(self, x):
            return self.b(self.act(self.a(self.act(x.flatten(1)[:, :4]))))

    with pytest.raises(ValueError, match=r"module 'act' \(ReLU\) is called 2 times per forward"):
        distinct_relus(Reuse(), torch.randn(1, 3, 2, 2))


def test_deeplift_on_torchvision_resnet18():
    model = resnet18().train()
    x = torch.randn(2, 3, 32, 32)
    method = build_method("deeplift", model)
    result = method.explain(x, torch.tensor([0, 1]))
    sal = result.maps
    assert sal.shape == (2, 1, 32, 32) and torch.isfinite(sal).all() and (sal.flatten(1).std(1) > 0).all()
    # captum runs inputs and baselines as one batch; +2 one-image probes of distinct_relus (find reuse, re-check).
    assert (result.forward_passes, result.backward_passes) == (2 * 2 + 2, 2 * 2)
    assert model.training and all(isinstance(b.relu, nn.ReLU) for b in model.layer1)
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())


def test_fullgrad_on_resnet_and_refused_on_vit():
    model = resnet18()
    sal = build_method("fullgrad", model)(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    assert sal.shape == (2, 1, 32, 32) and (sal.flatten(1).std(1) > 0).all()
    assert fullgrad_unsupported_reason(model) is None
    with pytest.raises(ValueError, match="FullGrad needs a CNN.*ViT, Swin and ConvNeXt"):
        build_method("fullgrad", tiny_vit())
    with torch.device("meta"):
        assert "ConvNeXt" in fullgrad_unsupported_reason(tv.convnext_tiny())


def test_gradcam_default_layer_on_resnet18():
    """layer4 of resnet18 is 2 x 2 at 64 px (1 x 1 at 32 px, where every CAM is constant)."""
    model = resnet18()
    sal = build_method("gradcam", model)(torch.randn(2, 3, 64, 64), torch.tensor([0, 1]))
    assert sal.shape == (2, 1, 64, 64) and (sal.flatten(1).std(1) > 0).all()


def test_preserved_restores_everything_after_an_error():
    model = build_backbone("small_cnn", 3).train()
    model.head.weight.grad = torch.ones_like(model.head.weight)
    model.features[0][0].weight.requires_grad_(False)
    original = model.features[1]
    with pytest.raises(RuntimeError), preserved(model):
        assert not model.training and not any(p.requires_grad for p in model.parameters())
        model.features[2].register_forward_hook(lambda *a: None)
        model.features._modules["1"] = nn.Identity()  # what Ablation-CAM does with its target layer
        model.head.weight.grad = None
        raise RuntimeError("library failure")
    assert model.features[1] is original
    assert all(m.training for m in model.modules())
    assert not model.features[0][0].weight.requires_grad and model.head.weight.requires_grad
    assert torch.equal(model.head.weight.grad, torch.ones_like(model.head.weight))
    assert not any(m._forward_hooks for m in model.modules())
