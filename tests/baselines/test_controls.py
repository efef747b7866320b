"""The control maps: ``centre`` (a centred Gaussian), ``edges`` (Sobel magnitude), ``blurred`` (a blurred method)."""

from __future__ import annotations

import math

import pytest
import torch

from hdm_lightning.baselines.controls import centre_gaussian, sobel_magnitude
from hdm_lightning.baselines.perturbation import gaussian_blur
from hdm_lightning.contract import build_method
from hdm_lightning.core import PassCounter
from hdm_lightning.masks.ops import normalize
from tests.toy_models import tiny_cnn


def test_centre_is_a_centred_gaussian_of_the_shorter_side_the_same_for_every_image():
    model = tiny_cnn(3)
    x = torch.randn(3, 3, 21, 33, dtype=torch.float64)
    result = build_method("centre", model, {"sigma": 0.25}).explain(x, torch.tensor([0, 1, 2]))
    maps = result.maps
    assert maps.shape == (3, 1, 21, 33) and (result.forward_passes, result.backward_passes) == (0, 0)
    assert torch.equal(maps[0], maps[1]) and torch.equal(maps[0], maps[2])
    flat = maps[0, 0].flatten()
    assert int(flat.argmax()) == 10 * 33 + 16 and bool((flat < flat.max()).sum() == flat.numel() - 1)  # one peak
    assert torch.equal(maps[0, 0], maps[0, 0].flip(0)) and torch.equal(maps[0, 0], maps[0, 0].flip(1))
    g = centre_gaussian(21, 33, 0.25, torch.float64)
    s = 0.25 * 21
    assert math.isclose(float(g[10, 16]), 1.0) and math.isclose(float(g[10, 16 + 5]), math.exp(-25 / (2 * s * s)))
    assert torch.allclose(maps[0, 0].double(), normalize(g[None, None])[0, 0], atol=1e-6)
    with pytest.raises(ValueError, match="centre: sigma must be a fraction of the shorter side > 0"):
        build_method("centre", model, {"sigma": 0})


def test_edges_peak_on_a_drawn_square_border_and_ignore_the_model():
    x = torch.zeros(1, 3, 32, 32)
    x[:, :, 10:20, 10:20] = 1.0
    a = build_method("edges", tiny_cnn(3, seed=0, dtype=torch.float32)).explain(x, 0)
    b = build_method("edges", tiny_cnn(5, seed=1, dtype=torch.float32)).explain(x, 4)
    assert torch.equal(a.maps, b.maps) and (a.forward_passes, a.backward_passes) == (0, 0)
    m = a.maps[0, 0]
    ring = torch.zeros(32, 32, dtype=torch.bool)
    ring[9:21, 9:21] = True
    ring[11:19, 11:19] = False  # the two pixels either side of the square's border
    assert float(m[ring].min()) > 0.2 and float(m[~ring].max()) == 0.0  # flat inside and outside
    assert bool(ring.flatten()[m.flatten().argmax()]) and float(m[10, 15]) > 0.9  # peak: the square's corners
    colour = torch.zeros(1, 3, 8, 8)
    colour[:, 0, :, 4:] = 1.0  # red on black: only the first channel changes
    colour[:, 1, :, :4] = 1.0  # green on the left: equal brightness either side
    assert float(sobel_magnitude(colour)[0, 0, 4, 3]) == 8.0  # per channel, summed: 4 + 4 (a grey image: 0)


def test_blurred_is_the_blur_of_the_inner_map_with_the_inner_passes_counted_once():
    model = tiny_cnn(3, dtype=torch.float32)
    torch.manual_seed(0)
    x, target = torch.randn(2, 3, 16, 16), torch.tensor([0, 2])
    for inner, expected in (("gradient", (2, 2)), ("deeplift", (5, 4))):
        plain = build_method(inner, model).explain(x, target)
        blurred = build_method("blurred", model, {"of": inner, "sigma": 2}).explain(x, target)
        assert (plain.forward_passes, plain.backward_passes) == expected
        assert (blurred.forward_passes, blurred.backward_passes) == expected, inner
        assert torch.allclose(blurred.maps, normalize(gaussian_blur(plain.maps, 2.0)), atol=1e-6)
        assert not torch.allclose(blurred.maps, plain.maps, atol=1e-2)
    # Why the inner Attribution's counts and not a counter around the inner call: an outer counter on the model
    # counts each forward once too (its own hook), but misses the copy DeepLift runs (the inner counter watches it).
    method = build_method("deeplift", model)
    with PassCounter(model) as outer:
        inner = method.explain(x, target)
    assert (inner.forward_passes, inner.backward_passes) == (5, 4) and (outer.forward, outer.backward) != (5, 4)
    method = build_method("gradient", model)
    with PassCounter(model) as outer:
        inner = method.explain(x, target)
    assert (outer.forward, outer.backward) == (inner.forward_passes, inner.backward_passes) == (2, 2)


def test_blurred_settings_are_checked():
    model = tiny_cnn(3)
    for params, message in [
        ({"of": "nope"}, r"blurred: of='nope' is not a saliency method: set params.of to one of \[.*'gradcam'"),
        ({"of": "gradient", "sigma": -1}, "blurred: sigma must be a blur width in pixels > 0"),
        ({"of": "gradient", "sigma": float("nan")}, "blurred: sigma must be"),
        ({"of": "rise", "params": {"n_mask": 3}}, r"blurred: the inner method 'rise': unknown parameter\(s\)"),
    ]:
        with pytest.raises(ValueError, match=message):
            build_method("blurred", model, params)


@pytest.mark.parametrize(
    "name, params",
    [("centre", None), ("edges", None), ("blurred", {"of": "gradcam", "sigma": 11, "params": {"target_layer": "3"}})],
)
def test_every_control_builds_by_name_and_explains(name, params):
    model = tiny_cnn(3, dtype=torch.float32)
    method = build_method(name, model, params)
    assert method.name == name
    maps = method(torch.randn(2, 3, 16, 16), torch.tensor([0, 1]))  # sigma 11 on 16 px: the radius is capped
    assert maps.shape == (2, 1, 16, 16) and maps.dtype == torch.float32
    assert float(maps.min()) == 0.0 and float(maps.max()) == 1.0
