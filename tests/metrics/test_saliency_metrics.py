"""Saliency metrics against values computed by hand on 2x2 .. 10x10 images (SPEC "Evaluation")."""

import math

import pytest
import torch
from torch import nn
from torchmetrics import MetricCollection
from torchvision.transforms.v2 import functional as TF

from hdm_lightning.metrics import (
    METRIC_FAMILIES,
    AverageDropIncrease,
    DeletionInsertion,
    Proportion,
    SegmentationScores,
    saliency_metrics,
)
from hdm_lightning.metrics.perturbation import (
    blur_kernel_size,
    gaussian_blur_canvas,
    keep_count,
    rank_order,
    step_counts,
)
from tests.toy_models import tiny_cnn


def sig(a: float) -> float:
    return 1.0 / (1.0 + math.exp(-a))


class SumNet(nn.Module):
    """Logits ``[gain * sum(x), 0]``: ``p0 = sigmoid(gain * sum x)``, ``p1 = sigmoid(-gain * sum x)``.

    Records every input it sees, so tests can check the perturbed images themselves and the chunk sizes.
    """

    def __init__(self, gain: float = 0.5) -> None:
        super().__init__()
        self.gain = gain
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.clone())
        a = self.gain * x.sum((1, 2, 3))
        return torch.stack([a, torch.zeros_like(a)], 1)


class TopHalfNet(nn.Module):
    """``p0 = m``, the mean of the top half of a [0, 1] image, exactly: logits ``[log m, log(1 - m)]``."""

    def forward(self, x):
        h = x.shape[-2] // 2
        m = x[..., :h, :].mean((1, 2, 3)).clamp(0.0, 1.0)
        tiny = torch.finfo(x.dtype).tiny
        return torch.stack([m.clamp_min(tiny).log(), (1 - m).clamp_min(tiny).log()], 1)


# A 2x2 one-channel image with raster values [1, 2, 3, 4] and a map ranking the pixels 1, 2, 3, 0.
X = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64).view(1, 1, 2, 2)
S = torch.tensor([0.1, 0.9, 0.5, 0.3], dtype=torch.float64).view(1, 1, 2, 2)


# ----------------------------------------------------------------------------------------------- ranking


def test_ranking_ties_by_raster_index_and_half_up_counts():
    s = torch.tensor([[0.0, 2.0, 2.0, -0.0, 1.0, 2.0]]).view(1, 1, 2, 3)
    assert rank_order(s, "raster").tolist() == [[1, 2, 5, 4, 0, 3]]  # descending, ties (and -0.0 == 0.0) in raster
    assert rank_order(torch.zeros(1, 1, 2, 2), "raster").tolist() == [[0, 1, 2, 3]]
    assert keep_count(30, 224 * 224) == 15053  # 15052.8
    assert keep_count(12.5, 4) == 1 and keep_count(37.5, 4) == 2  # half up, not banker's rounding
    assert keep_count(25, 4) == 1 and keep_count(0, 4) == 0 and keep_count(100, 4) == 4
    assert step_counts(4, 4) == [0, 1, 2, 3, 4]
    assert step_counts(100, 224 * 224)[1] == 502 and step_counts(100, 224 * 224)[-1] == 224 * 224
    with pytest.raises(ValueError, match=r"percent must be in \[0, 100\], got 101"):
        keep_count(101, 4)


def test_shuffled_ties_reorder_only_equal_values_the_same_way_for_every_image():
    s = torch.tensor([[0.0, 2.0, 2.0, -0.0, 1.0, 2.0]]).view(1, 1, 2, 3)
    order = rank_order(s, "shuffled")[0].tolist()
    assert sorted(order[:3]) == [1, 2, 5] and order[3] == 4 and sorted(order[4:]) == [0, 3]  # values still rank
    flat = torch.zeros(2, 1, 16, 16)
    shuffled = rank_order(flat, "shuffled")
    assert shuffled[0].tolist() == shuffled[1].tolist() != list(range(256))  # one fixed order, not raster
    assert rank_order(flat[:1], "shuffled").tolist() == shuffled[:1].tolist()  # independent of the batch
    tie_free = torch.randperm(256).float().view(1, 1, 16, 16)
    assert rank_order(tie_free, "shuffled").tolist() == rank_order(tie_free, "raster").tolist()
    assert rank_order(flat).tolist() == shuffled.tolist()  # the default order
    with pytest.raises(ValueError, match="ties must be one of"):
        rank_order(s, "random")


def test_deletion_ties_change_a_sparse_maps_score_and_nothing_else():
    """A map with a large zero tie scores differently with shuffled ties; a tie-free map scores the same."""
    torch.manual_seed(0)
    model = tiny_cnn(3).eval()
    x, target = torch.randn(2, 3, 16, 16, dtype=torch.float64), torch.tensor([0, 1])
    sparse = torch.zeros(2, 1, 16, 16, dtype=torch.float64)
    sparse[:, :, 6:10, 6:10] = torch.rand(2, 1, 4, 4, dtype=torch.float64) + 0.1
    dense = torch.rand(2, 1, 16, 16, dtype=torch.float64)
    scores = {}
    for ties in ("raster", "shuffled"):
        for name, maps in (("sparse", sparse), ("dense", dense)):
            metric = DeletionInsertion(model, steps=8, mean=[0.5] * 3, std=[0.25] * 3, ties=ties)
            metric.update(x, maps, target)
            scores[ties, name] = metric.compute()["deletion"]
    assert scores["raster", "dense"] == scores["shuffled", "dense"]
    assert scores["raster", "sparse"] != scores["shuffled", "sparse"]
    with pytest.raises(ValueError, match="deletion_insertion: ties must be one of"):
        DeletionInsertion(model, mean=[0.5] * 3, std=[0.25] * 3, ties="random")


# ------------------------------------------------------------------------------------ average drop/increase


def test_drop_increase_zero_baseline_by_hand():
    images = torch.cat([X, X])
    saliency = torch.cat([S, S])
    target = torch.tensor([0, 1])
    metric = AverageDropIncrease(SumNet(), percents=(25, 50, 75))
    metric.update(images, saliency, target)
    # Kept pixels: q=25 -> {1, 2, 3} (sum 9), q=50 -> {1, 2} (5), q=75 -> {1} (2); muted pixels are 0.
    # Image 0 explains class 0 (p = sigmoid(sum / 2)): every removal lowers it; image 1 explains class 1: raises it.
    y = sig(5.0)
    out = metric.compute()
    for q, kept_sum in ((25, 9.0), (50, 5.0), (75, 2.0)):
        o = sig(kept_sum / 2)
        assert out[f"drop/{q}"] == pytest.approx((y - o) / y * 100 / 2, abs=1e-12)  # image 1 drops 0
        assert out[f"increase/{q}"] == pytest.approx(50.0)  # image 1 increases, image 0 does not
        assert metric.last[f"probability/{q}"].tolist() == pytest.approx([o, 1 - o])
    assert metric.last["probability"].tolist() == pytest.approx([y, 1 - y])
    assert metric.last["increase/75"].tolist() == [0.0, 100.0]
    assert metric.forward_passes == 2 * (1 + 3)
    # The q=75 input of image 0: only pixel 1 kept.
    seen = torch.cat(metric.model.seen)
    assert seen[6].flatten().tolist() == [0.0, 2.0, 0.0, 0.0]


def test_drop_increase_mean_baseline_and_equal_scores_do_not_increase():
    metric = AverageDropIncrease(SumNet(), percents=(25, 50, 75), baseline="mean")
    metric.update(X, S, torch.tensor([0]))
    # Muted pixels take the image mean 2.5: sums 9 + 2.5, 5 + 2 * 2.5 = 10 (= Y's), 2 + 3 * 2.5.
    out = metric.compute()
    y = sig(5.0)
    assert out["drop/25"] == 0.0 and out["increase/25"] == 100.0  # O = sigmoid(5.75) > Y
    assert out["drop/50"] == 0.0 and out["increase/50"] == 0.0  # O == Y is no increase
    assert out["drop/75"] == pytest.approx((y - sig(4.75)) / y * 100, abs=1e-12)
    assert out["increase/75"] == 0.0
    assert torch.cat(metric.model.seen)[3].flatten().tolist() == [2.5, 2.0, 2.5, 2.5]


def test_drop_increase_blur_baseline_is_the_gaussian_blurred_image():
    torch.manual_seed(0)
    images = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    saliency = torch.rand(2, 1, 16, 16, dtype=torch.float64)
    model = SumNet()
    metric = AverageDropIncrease(model, percents=(80,), baseline="blur")
    metric.update(images, saliency, torch.tensor([0, 1]))
    blurred = TF.gaussian_blur(images, [3, 3], [0.8, 0.8])  # 16 px -> kernel 3, sigma 0.15 * 3 + 0.35
    flat = saliency.flatten(1)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep.scatter_(1, flat.argsort(1, descending=True)[:, : round(0.2 * 256)], True)
    expect = torch.where(keep.view(2, 1, 16, 16), images, blurred)
    assert torch.allclose(torch.cat(model.seen)[2:], expect, rtol=0, atol=1e-12)


def test_blur_canvas_kernel_rule():
    assert blur_kernel_size(224, 224) == 23 and blur_kernel_size(32, 32) == 3 and blur_kernel_size(300, 100) == 11
    x = torch.rand(1, 3, 224, 224)
    assert torch.allclose(gaussian_blur_canvas(x), TF.gaussian_blur(x, [23, 23], [3.8, 3.8]), rtol=0, atol=1e-6)
    assert torch.equal(gaussian_blur_canvas(torch.ones(1, 1, 1, 1)), torch.ones(1, 1, 1, 1))  # too small to blur


def test_drop_increase_constant_map_keeps_raster_order():
    model = SumNet()
    metric = AverageDropIncrease(model, percents=(75, 50))
    metric.update(X, torch.zeros_like(S), torch.tensor([0]))
    seen = torch.cat(model.seen)
    assert seen[1].flatten().tolist() == [1.0, 0.0, 0.0, 0.0]  # q=75: the first raster pixel
    assert seen[2].flatten().tolist() == [1.0, 2.0, 0.0, 0.0]  # q=50: the first two
    y = sig(5.0)
    assert metric.compute()["drop/75"] == pytest.approx((y - sig(0.5)) / y * 100, abs=1e-12)


# ------------------------------------------------------------------------------------ deletion / insertion


def trapezoid(values, steps):
    return (values[0] / 2 + sum(values[1:-1]) + values[-1] / 2) / steps


def test_deletion_insertion_by_hand_steps_4():
    # mean 0.5, std 0.25: black raw pixels are (0 - 0.5) / 0.25 = -2 in the normalised tensor.
    metric = DeletionInsertion(SumNet(), steps=4, insertion_canvas="zero", mean=[0.5], std=[0.25])
    metric.update(X, S, torch.tensor([0]))
    # Deletion in rank order 1, 2, 3, 0: sums 10, 10-2-2=6, 6-3-2=1, 1-4-2=-5, -5-1-2=-8 (logit = sum / 2).
    deletion = [sig(a) for a in (5.0, 3.0, 0.5, -2.5, -4.0)]
    # Insertion onto the black canvas (-8): -8, -8+2+2=-4, -4+3+2=1, 1+4+2=7, 7+1+2=10.
    insertion = [sig(a) for a in (-4.0, -2.0, 0.5, 3.5, 5.0)]
    out = metric.compute()
    assert out["deletion_curve"].tolist() == pytest.approx(deletion, abs=1e-12)
    assert out["insertion_curve"].tolist() == pytest.approx(insertion, abs=1e-12)
    assert out["deletion"] == pytest.approx(trapezoid(deletion, 4), abs=1e-12)
    assert out["insertion"] == pytest.approx(trapezoid(insertion, 4), abs=1e-12)
    assert metric.last["deletion"].tolist() == pytest.approx([out["deletion"]])
    assert metric.last["insertion_curve"].shape == (1, 5)
    assert metric.forward_passes == 2 * 5


def test_deletion_insertion_blur_canvas():
    model = SumNet()
    metric = DeletionInsertion(model, steps=4, mean=[0.5], std=[0.25])  # insertion onto the blurred image
    metric.update(X, S, torch.tensor([0]))
    blurred = TF.gaussian_blur(X, [3, 3], [0.8, 0.8])
    seen = torch.cat(model.seen)
    assert torch.allclose(seen[5], blurred[0], rtol=0, atol=1e-12)  # insertion at 0 %: the canvas
    assert torch.allclose(
        seen[6].flatten()[[0, 2, 3]], blurred.flatten()[[0, 2, 3]], rtol=0, atol=1e-12
    )  # 1 %: pixel 1 inserted
    assert seen[6].flatten()[1] == 2.0
    assert torch.equal(seen[9], X[0])  # 100 %: the image


def test_deletion_insertion_analytic_100_steps_and_ranking():
    # 10x10 white image (raw 1, mean 0, std 1), p0 = mean of the top half: each step changes one pixel.
    images = torch.ones(1, 1, 10, 10, dtype=torch.float64)
    good = torch.zeros(1, 1, 10, 10, dtype=torch.float64)
    good[..., :5, :] = 1.0
    results = {}
    for name, saliency in {"good": good, "reversed": 1.0 - good, "constant": torch.zeros_like(good)}.items():
        metric = DeletionInsertion(
            TopHalfNet(), steps=100, insertion_canvas="zero", mean=[0.0], std=[1.0], ties="raster"
        )
        metric.update(images, saliency, torch.tensor([0]))
        results[name] = metric.compute()
    g, r = results["good"], results["reversed"]
    # Good map: p falls linearly 1 -> 0 over the first 50 steps (AUC 0.25), insertion rises then stays (0.75).
    assert g["deletion"] == pytest.approx(0.25, abs=1e-12) and g["insertion"] == pytest.approx(0.75, abs=1e-12)
    assert r["deletion"] == pytest.approx(0.75, abs=1e-12) and r["insertion"] == pytest.approx(0.25, abs=1e-12)
    assert g["deletion"] < r["deletion"] and g["insertion"] > r["insertion"]
    # Constant map: raster order = top half first, the same as the good map.
    assert results["constant"]["deletion"] == pytest.approx(0.25, abs=1e-12)
    curve = g["deletion_curve"]
    assert curve.shape == (101,) and curve[0] == pytest.approx(1.0) and curve[-1] == pytest.approx(0.0, abs=1e-12)
    assert g["insertion_curve"][0] == pytest.approx(0.0, abs=1e-12) and g["insertion_curve"][-1] == pytest.approx(1.0)


def test_deletion_insertion_perfect_map_beats_reversed():
    torch.manual_seed(3)
    images = torch.rand(2, 1, 4, 4, dtype=torch.float64) * 2  # each pixel adds (x + 2) / 2 to the logit vs black
    target = torch.tensor([0, 0])
    out = {}
    for name, saliency in {"perfect": images, "reversed": -images}.items():
        metric = DeletionInsertion(SumNet(gain=0.3), steps=16, insertion_canvas="zero", mean=[0.5], std=[0.25])
        metric.update(images, saliency, target)
        out[name] = metric.compute()
    assert out["perfect"]["deletion"] < out["reversed"]["deletion"]
    assert out["perfect"]["insertion"] > out["reversed"]["insertion"]
    full = [sig(0.3 * float(x.sum())) for x in images]
    black = sig(0.3 * 16 * -2.0)
    for o in out.values():  # deletion ends at the fully deleted image, insertion at the original image
        assert o["deletion_curve"][0] == pytest.approx(sum(full) / 2)
        assert o["deletion_curve"][-1] == pytest.approx(black)
        assert o["insertion_curve"][0] == pytest.approx(black)
        assert o["insertion_curve"][-1] == pytest.approx(sum(full) / 2)


# --------------------------------------------------------------------------------------------- proportion


def test_proportion_by_hand_and_edge_cases():
    gt = torch.zeros(3, 3, dtype=torch.bool)
    gt[1:, 1:] = True  # raster 4, 5, 7, 8
    maps = torch.stack(
        [
            torch.arange(1.0, 10.0).view(3, 3),  # N = (v - 1) / 8: (4 + 5 + 7 + 8) / 36 = 2/3
            gt.double(),  # the GT itself
            (~gt).double() * 5,  # zero inside the GT
            torch.full((3, 3), 7.0),  # constant -> uniform -> area 4/9
            torch.zeros(3, 3),  # all zero -> area 4/9
        ]
    )[:, None].double()
    images = torch.zeros(5, 3, 3, 3)
    metric = Proportion()
    metric.update(images, maps, torch.zeros(5, dtype=torch.long), mask=gt.expand(5, 3, 3))
    per_image = metric.last["proportion"].tolist()
    assert per_image == pytest.approx([200 / 3, 100.0, 0.0, 400 / 9, 400 / 9])
    out = metric.compute()
    assert out["proportion"] == pytest.approx(sum(per_image) / 5)
    assert out["proportion/images"] == 5 and out["proportion/skipped"] == 0


def test_proportion_skips_images_without_gt():
    metric = Proportion()
    mask = torch.zeros(2, 2, 2, dtype=torch.bool)
    mask[0, 0, 0] = True
    saliency = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).expand(2, 1, 2, 2)
    metric.update(torch.zeros(2, 1, 2, 2), saliency, torch.zeros(2, dtype=torch.long), mask=mask)
    assert metric.last["proportion"][0] == 50.0 and math.isnan(metric.last["proportion"][1])
    assert metric.compute() == {"proportion": 50.0, "proportion/images": 1.0, "proportion/skipped": 1.0}


# ------------------------------------------------------------------------------------------- segmentation


def test_segmentation_scores_at_q75_by_hand():
    # 4x4: keep round(25 % of 16) = 4 pixels = raster 0..3 (descending map); GT = raster 1, 2, 3, 4, 5, 6.
    saliency = torch.arange(16.0, 0.0, -1.0).view(1, 1, 4, 4)
    gt = torch.zeros(1, 16, dtype=torch.bool)
    gt[0, 1:7] = True
    metric = SegmentationScores(percents=(75,))
    metric.update(torch.zeros(1, 3, 4, 4), saliency, torch.tensor([0]), mask=gt.view(1, 4, 4))
    out = metric.compute()  # |P| = 4, |G| = 6, |P ∩ G| = 3
    assert out["dice/75"] == pytest.approx(2 * 3 / (4 + 6))
    assert out["iou/75"] == pytest.approx(3 / 7)
    assert out["ppv/75"] == pytest.approx(3 / 4)
    assert out["sensitivity/75"] == pytest.approx(3 / 6)
    assert out["dice/mean"] == out["dice/75"]
    # 2x2: keep 1 pixel (raster 1, the most salient), GT = raster 1, 3; plus an image with an empty GT.
    metric = SegmentationScores(percents=(75, 50))
    mask = torch.tensor([[[False, True], [False, True]], [[False, False], [False, False]]])
    metric.update(torch.zeros(2, 1, 2, 2), torch.cat([S, S]).float(), torch.tensor([0, 0]), mask=mask)
    out = metric.compute()
    assert out["dice/75"] == pytest.approx(2 / 3) and out["iou/75"] == pytest.approx(1 / 2)
    assert out["ppv/75"] == 1.0 and out["sensitivity/75"] == pytest.approx(1 / 2)
    # q = 50 keeps raster 1, 2: |P ∩ G| = 1 -> Dice 1/2, IoU 1/3, PPV 1/2, Sensitivity 1/2.
    assert out["dice/50"] == pytest.approx(1 / 2) and out["iou/50"] == pytest.approx(1 / 3)
    assert out["iou/mean"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert out["segmentation/images"] == 1 and out["segmentation/skipped"] == 1
    assert math.isnan(metric.last["dice/75"][1]) and metric.last["ppv/50"][0] == 0.5


def test_segmentation_empty_prediction_has_zero_ppv():
    metric = SegmentationScores(percents=(100,))
    metric.update(torch.zeros(1, 1, 2, 2), S, torch.tensor([0]), mask=torch.ones(1, 2, 2, dtype=torch.bool))
    out = metric.compute()
    assert out["ppv/100"] == 0.0 and out["dice/100"] == 0.0 and out["sensitivity/100"] == 0.0


# ------------------------------------------------------------------------ rank invariance, chunking, DDP


def _all_metrics(model, batch_size=64):
    return [
        AverageDropIncrease(model, percents=(70, 90), baseline="blur", batch_size=batch_size),
        DeletionInsertion(model, steps=8, mean=[0.4, 0.5, 0.6], std=[0.2, 0.3, 0.25], batch_size=batch_size),
        Proportion(),
        SegmentationScores(percents=(70, 85, 99)),
    ]


@pytest.fixture
def data():
    torch.manual_seed(5)
    images = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    saliency = (torch.rand(4, 1, 8, 8, dtype=torch.float64) * 4).floor()  # many ties
    mask = torch.rand(4, 8, 8) > 0.6
    return images, saliency, torch.tensor([0, 3, 1, 4]), mask


def test_monotone_transform_gives_identical_rank_based_scores(data):
    images, saliency, target, mask = data
    model = tiny_cnn(classes=5)
    a, b = _all_metrics(model), _all_metrics(model)
    for ma, mb in zip(a, b, strict=True):
        if isinstance(ma, Proportion):
            continue  # energy-based, not rank-based
        ma.update(images, saliency, target, mask=mask)
        mb.update(images, torch.exp(3 * saliency) + 1.0, target, mask=mask)
        assert ma.last.keys() == mb.last.keys()
        for key in ma.last:
            assert torch.equal(ma.last[key].nan_to_num(), mb.last[key].nan_to_num()), key


def test_chunking_and_forward_pass_count(data):
    images, saliency, target, mask = data
    model = tiny_cnn(classes=5)
    one, many = _all_metrics(model, batch_size=1), _all_metrics(model, batch_size=64)
    for m1, m64 in zip(one[:2], many[:2], strict=True):
        m1.update(images, saliency, target)
        m64.update(images, saliency, target)
        for key, value in m1.compute().items():
            assert torch.allclose(torch.as_tensor(value), torch.as_tensor(m64.compute()[key]), rtol=0, atol=1e-12)
    assert one[0].forward_passes == many[0].forward_passes == 4 * (1 + 2)
    assert one[1].forward_passes == many[1].forward_passes == 2 * 4 * (8 + 1)
    # The counted samples are the ones the model saw, in chunks of at most batch_size.
    counter = SumNet()
    metric = DeletionInsertion(counter, steps=8, mean=[0.0] * 3, std=[1.0] * 3, batch_size=5)
    metric.update(images, saliency, target % 2)
    sizes = [len(x) for x in counter.seen]
    assert sum(sizes) == metric.forward_passes == 72 and max(sizes) == 5


def test_model_is_a_plain_attribute_left_as_found(data):
    images, saliency, target, _ = data
    model = tiny_cnn(classes=5)  # train mode, with BatchNorm and dropout
    model[1].eval()  # a mixed setting the metric must restore as it was
    metric = AverageDropIncrease(model, percents=(80,))
    assert list(metric.children()) == [] and not any("model" in k for k in metric.state_dict())
    assert metric.clone().model is model  # a clone shares the caller's classifier, never copies it
    metric.update(images, saliency, target)
    assert model.training and not model[1].training and model[5].training
    # Eval mode: each image's score does not depend on the rest of the batch.
    alone = AverageDropIncrease(model, percents=(80,))
    alone.update(images[:1], saliency[:1], target[:1])
    assert torch.allclose(alone.last["probability"], metric.last["probability"][:1], atol=1e-12)


def test_merge_state_equals_one_pass_over_all_data(data):
    images, saliency, target, mask = data
    model = tiny_cnn(classes=5)
    full, first, second = _all_metrics(model), _all_metrics(model), _all_metrics(model)
    for mf, m1, m2 in zip(full, first, second, strict=True):
        mf.update(images, saliency, target, mask=mask)
        m1.update(images[:2], saliency[:2], target[:2], mask=mask[:2])
        m2.update(images[2:], saliency[2:], target[2:], mask=mask[2:])
        m1.merge_state(m2)
        expect, got = mf.compute(), m1.compute()
        assert expect.keys() == got.keys()
        for key in expect:
            assert torch.allclose(torch.as_tensor(got[key]), torch.as_tensor(expect[key]), atol=1e-12), key


# --------------------------------------------------------------------------------- factory and bad input


def test_factory_builds_a_collection_that_forwards_the_shared_signature(data):
    images, saliency, target, mask = data
    model = tiny_cnn(classes=5)
    metrics = saliency_metrics(
        model,
        list(METRIC_FAMILIES),
        mean=[0.5] * 3,
        std=[0.25] * 3,
        batch_size=16,
        params={"deletion_insertion": {"steps": 4}, "segmentation": {"percents": (75,)}},
    )
    assert isinstance(metrics, MetricCollection)
    metrics.update(images, saliency, target, mask=mask)
    out = metrics.compute()
    for key in ("drop/70", "increase/90", "deletion", "insertion_curve", "proportion", "dice/75", "sensitivity/mean"):
        assert key in out
    assert out["deletion_curve"].shape == (5,)
    assert metrics["deletion_insertion"].forward_passes == 2 * 4 * 5
    only_model = saliency_metrics(model, "drop_increase")
    only_model.update(images, saliency, target)  # no mask needed
    assert set(only_model.compute()) == {"drop/70", "drop/80", "drop/90", "increase/70", "increase/80", "increase/90"}


def test_bad_input_messages(data):
    images, saliency, target, mask = data
    model = tiny_cnn(classes=5)
    metric = AverageDropIncrease(model)
    with pytest.raises(ValueError, match=r"saliency must be \[B, 1, H, W\] = \[4, 1, 8, 8\]"):
        metric.update(images, saliency[:, 0], target)
    with pytest.raises(ValueError, match=r"saliency must be \[B, 1, H, W\]"):
        metric.update(images, saliency[..., :4], target)
    with pytest.raises(ValueError, match=r"target classes must be in \[0, 5\)"):
        metric.update(images, saliency, torch.tensor([0, 1, 2, 5]))
    with pytest.raises(ValueError, match=r"target must be an integer tensor \[B\]"):
        metric.update(images, saliency, target.float())
    with pytest.raises(ValueError, match="needs mean and std"):
        DeletionInsertion(model)
    with pytest.raises(ValueError, match=r"Unknown saliency metric 'dice'. Available: \['drop_increase'"):
        saliency_metrics(model, ["dice"])
    with pytest.raises(ValueError, match="not requested"):
        saliency_metrics(model, ["proportion"], params={"segmentation": {}})
    for cls in (Proportion, SegmentationScores):
        with pytest.raises(ValueError, match="needs a ground-truth mask"):
            cls().update(images, saliency, target)
        with pytest.raises(ValueError, match=r"mask must be a BoolTensor \[B, H, W\]"):
            cls().update(images, saliency, target, mask=mask.float())
    with pytest.raises(ValueError, match=r"Unknown baseline 'gray'. Available: \['zero', 'mean', 'blur', 'black'\]"):
        AverageDropIncrease(model, baseline="gray")
    with pytest.raises(ValueError, match="Unknown insertion_canvas 'black'"):
        DeletionInsertion(model, insertion_canvas="black", mean=[0.5] * 3, std=[0.25] * 3)
    with pytest.raises(ValueError, match="percents must be numbers in"):
        SegmentationScores(percents=(70, 120))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        AverageDropIncrease(model, batch_size=0)
    with pytest.raises(ValueError, match="mean/std have 1 channels but images have 3"):
        DeletionInsertion(model, steps=2, mean=[0.5], std=[0.25]).update(images, saliency, target)
