"""Extremal perturbations: known regions, areas kept, batch = alone, the mask and area maths, params, exact costs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hdm_lightning.baselines.extremal import (
    ExtremalPerturbation,
    area_loss,
    perturb,
    perturbation_pyramid,
    smooth_max_conv,
)
from hdm_lightning.baselines.perturbation import gaussian_blur
from hdm_lightning.contract import build_method, method_params
from hdm_lightning.masks.ops import normalize
from tests.toy_models import RegionNet, box_mask, tiny_cnn

S = 32
BOX = (4, 14, 18, 28)  # rows, cols of the only pixels the class depends on (10 % of the image)
OTHER = (18, 28, 4, 14)
FAST = {"iterations": 40, "lr": 0.1}  # enough at 32 px for the masks to settle (lambda reaches lambda_end)


def top_inside(sal: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Share of the ``|gt|`` highest-ranked pixels that lie in ``gt``, per image."""
    top = sal.flatten(1).topk(int(gt.sum()), dim=1).indices
    return gt.flatten()[top].float().mean(1)


@pytest.fixture(scope="module")
def region():
    """RegionNet with one box, two images explained for their predicted class: (model, x, target, area masks)."""
    model = RegionNet([BOX], S)
    torch.manual_seed(0)
    x = torch.randn(2, 3, S, S)
    with torch.no_grad():
        target = model(x).argmax(1)
    masks = ExtremalPerturbation(model, **FAST).area_masks(x, target)
    return model, x, target, masks


def test_known_region(region):
    """The map's top pixels lie in the box the class depends on, and the map is brighter there."""
    model, x, target, masks = region
    result = build_method("extremal", model, FAST).explain(x, target)
    sal = result.maps
    assert sal.shape == (2, 1, S, S) and sal.dtype == torch.float32 and sal.min() >= 0 and sal.max() <= 1
    gt = box_mask([BOX], S)
    assert (top_inside(sal, gt) > 0.75).all(), top_inside(sal, gt)
    inside = (sal * gt).sum((1, 2, 3)) / gt.sum()
    outside = (sal * ~gt).sum((1, 2, 3)) / (~gt).sum()
    assert (inside > 4 * outside).all(), (inside, outside)
    # the map is N(mean over the areas of the masks); nothing is random, so the two calls agree
    torch.testing.assert_close(sal, normalize(masks.mean(1, keepdim=True)), rtol=0, atol=1e-6)


def test_small_area_picks_the_stronger_region():
    """With a 5 % budget, the mask keeps (part of) the box that drives the class most, not the weaker one."""
    model = RegionNet([BOX, OTHER], S, gains=[1.0, 0.3])
    torch.manual_seed(0)
    x = torch.randn(3, 3, S, S)
    with torch.no_grad():
        target = model(x).argmax(1)
    masks = ExtremalPerturbation(model, **FAST, areas=[0.05]).area_masks(x, target)[:, 0]
    strong = (masks * box_mask([BOX], S)[:, 0]).sum((1, 2))
    weak = (masks * box_mask([OTHER], S)[:, 0]).sum((1, 2))
    assert (strong > 0.8 * masks.sum((1, 2))).all() and (weak < 0.05 * strong).all(), (strong, weak)


def test_masks_respect_their_areas(region):
    """After optimisation each mask's sorted values are close to r_a: about a|Omega| pixels kept, R_a small."""
    _, _, _, masks = region
    areas = ExtremalPerturbation(region[0]).areas
    assert masks.shape == (2, len(areas), S, S) and masks.min() >= 0 and masks.max() <= 1
    for j, a in enumerate(areas):
        kept = (masks[:, j] > 0.5).float().mean((1, 2))
        assert torch.allclose(kept, torch.full_like(kept, a), atol=0.015), (a, kept)
        # a smooth mask cannot be binary: R_a is bounded below by its soft edge, but far below a mask without it
        r = area_loss(masks[:, j], a)
        assert (r < 0.03).all() and (r < 0.2 * area_loss(torch.full_like(masks[:, j], 0.5), a)).all(), (a, r)
        assert (masks[:, j].amax((1, 2)) > 0.95).all()  # the kept region is kept fully, not faded


def test_batch_equals_each_image_alone():
    """Rows are independent: a batch of images x areas gives each image's masks as if it were explained alone."""
    model = RegionNet([BOX], S).double()
    torch.manual_seed(1)
    x = torch.randn(3, 3, S, S, dtype=torch.float64)
    target = torch.tensor([2, 0, 2])
    method = ExtremalPerturbation(model, iterations=8, lr=0.1, areas=[0.1, 0.3])
    batch = method.area_masks(x, target)
    for i in range(3):
        alone = method.area_masks(x[i : i + 1], target[i : i + 1])
        torch.testing.assert_close(batch[i : i + 1], alone, rtol=0, atol=1e-10)
    assert not torch.allclose(batch[0], batch[1])


# ------------------------------------------------------------------------------------------------ the maths


def test_area_loss_is_the_ranking_constraint():
    torch.manual_seed(0)
    n = 100
    binary = torch.zeros(3, n)
    for i, k in enumerate((10, 25, 60)):
        binary[i, torch.randperm(n)[:k]] = 1.0
    assert torch.equal(area_loss(binary, torch.tensor([0.1, 0.25, 0.6])), torch.zeros(3))  # exactly 0
    assert area_loss(binary[:1], 0.2).item() == pytest.approx(0.1)  # ten 0s where r_a has 1s, out of 100
    m = torch.rand(2, 10, 10)
    s, _ = m.flatten(1).sort(1)
    r = (torch.arange(n) >= n - 30).float()
    torch.testing.assert_close(area_loss(m, 0.3), ((s - r) ** 2).mean(1))  # the paper's ||vecsort(m) - r_a||^2 / n
    # tied values (a uniform mask) share their targets' mean in the gradient: no pixel is singled out by the sort
    uniform = torch.full((1, 8, 8), 0.3, requires_grad=True)
    loss = area_loss(uniform, 0.25)
    assert loss.item() == pytest.approx(0.75 * 0.3**2 + 0.25 * 0.7**2)
    loss.backward()
    torch.testing.assert_close(uniform.grad, torch.full_like(uniform, 2 * (0.3 - 0.25) / 64))


def test_smooth_max_conv_is_a_smooth_mask_in_unit_range():
    torch.manual_seed(0)
    sigma = 3.0
    lipschitz = 1.0 / (sigma * math.sqrt(math.e))  # the steepest slope of the unit-height kernel, per cell
    m_bar = (torch.rand(4, 1, 20, 20) < 0.1).double()
    m = smooth_max_conv(m_bar, sigma, 0.02)
    assert m.shape == m_bar.shape and m.min() >= 0 and m.max() <= 1
    steepest = max((m[..., 1:, :] - m[..., :-1, :]).abs().max(), (m[..., 1:] - m[..., :-1]).abs().max())
    assert steepest <= 1.1 * lipschitz, (steepest, lipschitz)
    # one cell on: a bump of height ~1 at the cell, never above the kernel (a weighted mean of values <= k)
    one = torch.zeros(1, 1, 21, 21, dtype=torch.float64)
    one[..., 10, 10] = 1.0
    bump = smooth_max_conv(one, sigma, 0.02)[0, 0]
    d = torch.arange(21, dtype=torch.float64) - 10
    kernel = torch.exp(-(d[:, None] ** 2 + d[None] ** 2) / (2 * sigma**2))
    assert bump[10, 10] > 0.98 and (bump <= kernel + 1e-12).all() and bump[10, 16] < 0.2
    # uniform in, uniform out (the border is neither favoured nor penalised); in [0, 1] for any values there
    flat = smooth_max_conv(torch.full((1, 1, 9, 13), 0.5, dtype=torch.float64), sigma, 0.02)
    assert flat.max() - flat.min() < 1e-12 and 0.45 < flat.min() <= 0.5
    # T -> 0: the max-convolution itself, max_v k(u - v) m_bar(v) over the window (radius 2 sigma = 6 cells)
    hard = smooth_max_conv(m_bar, sigma, 1e-4)
    d = torch.arange(-6, 7, dtype=torch.float64)
    k = torch.exp(-(d[:, None] ** 2 + d[None] ** 2) / (2 * sigma**2)).reshape(1, -1, 1)
    window = F.unfold(F.pad(m_bar, (6, 6, 6, 6), mode="replicate"), 13)
    torch.testing.assert_close(hard, (k * window).amax(1).reshape_as(m_bar), rtol=0, atol=1e-3)


def test_perturbation_pyramid_and_operator():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    pyramid = perturbation_pyramid(x, 4.0, 3)  # sigma 0, 2, 4
    assert pyramid.shape == (2, 3, 3, 16, 16)
    assert torch.equal(pyramid[:, 0], x)
    torch.testing.assert_close(pyramid[:, 2], gaussian_blur(x, 4.0))
    ones, zeros = torch.ones(2, 1, 16, 16, dtype=torch.float64), torch.zeros(2, 1, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(perturb(pyramid, ones), x)  # m = 1 keeps
    torch.testing.assert_close(perturb(pyramid, zeros), pyramid[:, 2])  # m = 0: sigma_max
    torch.testing.assert_close(perturb(pyramid, ones / 2), pyramid[:, 1])  # sigma = sigma_max / 2: the middle level
    torch.testing.assert_close(perturb(pyramid, ones * 0.75), (pyramid[:, 0] + pyramid[:, 1]) / 2)  # interpolated
    # one image's pyramid serves several mask rows; each pixel takes its own blur level
    half = ones[:1].clone()
    half[..., 8:] = 0.0
    out = perturb(pyramid[1:], torch.cat([half, ones[:1]]), torch.tensor([0, 0]))
    torch.testing.assert_close(out[0, ..., :8], x[1, ..., :8])
    torch.testing.assert_close(out[0, ..., 8:], pyramid[1, 2, ..., 8:])
    torch.testing.assert_close(out[1], x[1])


# ------------------------------------------------------------------------------------------------ contract


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"iterations": 0}, "iterations must be a positive integer"),
        ({"lr": 0}, "lr must be a number > 0"),
        ({"areas": []}, r"areas must be a non-empty list of fractions in \(0, 1\), e.g. \[0.05, 0.1, 0.2\]"),
        ({"areas": "0.1"}, "areas must be a non-empty list"),
        ({"areas": [0.1, 1.0]}, r"every area must be a fraction of the image in \(0, 1\), e.g. 0.1 for 10 %"),
        ({"stride": 0}, "stride must be a positive integer"),
        ({"mask_sigma": -1.0}, r"mask_sigma must be > 0 \(or None for 3 strides\)"),
        ({"sigma_max": 0}, r"sigma_max must be > 0 \(or None for 20 px at 224, scaled\)"),
        ({"temperature": 0.0}, "temperature must be a number > 0"),
        ({"levels": 1}, r"levels must be an integer >= 2"),
        ({"lambda_start": -1.0}, "lambda_start must be a number > 0"),
        ({"lambda_start": 100.0, "lambda_end": 10.0}, r"lambda_end must be a number >= lambda_start \(100.0\)"),
        ({"init": 1.5}, r"init \(the initial mask value\) must be in \[0, 1\]"),
        ({"area": 0.1}, r"Known parameters: \['iterations', 'lr', 'areas', 'stride'"),
    ],
)
def test_bad_params_say_what_to_fix(params, message):
    with pytest.raises(ValueError, match=message):
        build_method("extremal", RegionNet([BOX], S), params)


def test_defaults_and_sizes_scale_with_the_image():
    params = method_params("extremal")
    assert params["areas"] == (0.05, 0.1, 0.2) and params["iterations"] == 300
    method = build_method("extremal", RegionNet([BOX], S))
    assert method.sizes(224, 224) == (7, 21.0, 20.0)
    assert method.sizes(448, 600) == (14, 42.0, 40.0)
    assert method.sizes(32, 32) == (1, 3.0, pytest.approx(20 * 32 / 224))
    lambdas = method.lambdas()
    assert len(lambdas) == 300 and lambdas[0] == pytest.approx(10.0) and lambdas[-1] == pytest.approx(1e4)
    assert all(b > a for a, b in zip(lambdas, lambdas[1:], strict=False))


def test_pass_counts_and_model_left_as_given():
    """iterations x images x areas forwards and backwards; BatchNorm/Dropout model given in train mode stays so."""
    model = tiny_cnn(classes=4)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    method = build_method("extremal", model, {"iterations": 3, "areas": [0.1, 0.2]})
    result = method.explain(x, torch.tensor([1, 3]))
    assert (result.forward_passes, result.backward_passes) == (3 * 2 * 2, 3 * 2 * 2)
    assert result.explanation is None and result.maps.shape == (2, 1, 16, 16)
    assert (result.maps.flatten(1).std(1) > 0).all()
    by_prediction = method.explain(x)  # the predicted class: one more forward per image, no backward
    assert (by_prediction.forward_passes, by_prediction.backward_passes) == (3 * 2 * 2 + 2, 3 * 2 * 2)
    assert model.training and all(m.training for m in model.modules())
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(method(x, torch.tensor([1, 3])), result.maps)  # deterministic
