"""ROAD (Remove And Debias, arXiv 2202.00449): the imputation and the scores against pytorch-grad-cam, what a good
map scores, determinism of the noise, merging, settings and the suite."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pytorch_grad_cam.metrics.perturbation_confidence import (
    PerturbationConfidenceMetric,
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
)
from pytorch_grad_cam.metrics.road import NoisyLinearImputer, neighbors_weights
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

from hdm_lightning.evaluation import Evaluation, MetricSuite, write_curves, write_tables
from hdm_lightning.metrics import METRICS, ROAD, families
from hdm_lightning.metrics.perturbation import keep_count
from hdm_lightning.metrics.road import NEIGHBOUR_WEIGHTS, linear_imputation
from tests.toy_models import RegionNet, box_mask, tiny_cnn


@pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")  # inside grad-cam's imputer
def test_imputation_equals_grad_cams_and_is_exact_on_a_ramp():
    assert tuple(neighbors_weights) == NEIGHBOUR_WEIGHTS
    g = torch.Generator().manual_seed(0)
    image = torch.randn(3, 20, 20, generator=g)
    removed = torch.rand(20, 20, generator=g) < 0.5
    removed[:6, :7] = True  # a block touching two borders
    ours = linear_imputation(image, removed)
    theirs = NoisyLinearImputer(noise=0.0)(image, (~removed).float())  # their mask: 1 = kept
    assert torch.equal(ours[:, ~removed], image[:, ~removed].double())
    assert torch.allclose(ours, theirs.double(), atol=1e-6)
    # Hand-computed: one removed pixel with 8 kept neighbours is their weighted mean (1/6 direct, 1/12 diagonal).
    one = torch.zeros(20, 20, dtype=torch.bool)
    one[5, 7] = True
    nb = image[:, 4:7, 6:9].double()
    expect = (nb[:, 0, 1] + nb[:, 2, 1] + nb[:, 1, 0] + nb[:, 1, 2]) / 6 + (nb[:, ::2, ::2].sum((1, 2))) / 12
    assert torch.allclose(linear_imputation(image, one)[:, 5, 7], expect, atol=1e-12)
    # The stencil is symmetric, so a linear ramp is its own imputation away from the border.
    y, x = torch.meshgrid(*[torch.arange(20.0, dtype=torch.float64)] * 2, indexing="ij")
    ramp = torch.stack([0.3 * y - 0.2 * x + 1, 0.1 * x, -y])
    hole = torch.zeros(20, 20, dtype=torch.bool)
    hole[3:17, 2:12] = True
    filled = ramp.clone()
    filled[:, hole] = 0.0
    assert torch.allclose(linear_imputation(filled, hole), ramp, atol=1e-10)


def _grad_cam_road(model, images, cams, target, percent, most_relevant):
    """pytorch-grad-cam's ROAD probability after removing ``percent`` % (noise 0).

    Its ``percentile`` q keeps the pixels strictly below ``np.percentile(map, q)`` (linear interpolation), i.e. it
    removes ``n - ceil(q (n - 1) / 100)`` pixels: the *kept* share, not the removed one. Choosing
    ``q = 100 (n - r - 1/2) / (n - 1)`` removes exactly our ``r = round(percent / 100 * n)``.
    """
    n = cams[0].size
    q = 100 * (n - keep_count(percent, n) - 0.5) / (n - 1)
    removal = (RemoveMostRelevantFirst if most_relevant else RemoveLeastRelevantFirst)(q, NoisyLinearImputer(0.0))
    targets = [ClassifierOutputSoftmaxTarget(int(t)) for t in target]
    return PerturbationConfidenceMetric(removal)(images, cams, targets, model, return_diff=False)


@pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")  # grad-cam's np.float32(tensor)
def test_scores_equal_pytorch_grad_cams_road_without_noise():
    model = tiny_cnn(classes=5, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 12, 12, generator=g)
    saliency = torch.stack([torch.randperm(144, generator=g) for _ in range(2)]).float().view(2, 1, 12, 12) / 144
    target = torch.tensor([3, 1])
    percents = (10, 30, 50, 70, 90)
    metric = ROAD(model, percents=percents, noise=0.0, batch_size=7)
    metric.update(images, saliency, target)
    cams = saliency[:, 0].numpy()  # distinct values: no ties, both sides rank the same way
    for p in percents:
        for head, most in (("road_morf", True), ("road_lerf", False)):
            theirs = _grad_cam_road(model, images, cams, target, p, most)
            np.testing.assert_allclose(metric.last[f"{head}/{p}"].numpy(), theirs, atol=1e-6, err_msg=f"{head}/{p}")
    for head in ("road_morf", "road_lerf"):
        curve = torch.stack([metric.last[f"{head}/{p}"] for p in percents], 1)
        assert torch.equal(metric.last[f"{head}_curve"], curve)
        assert torch.allclose(metric.last[f"{head}/auc"], curve.mean(1))
    gap = metric.last["road_lerf/auc"] - metric.last["road_morf/auc"]
    assert torch.allclose(metric.last["road_gap/auc"], gap)
    assert metric.forward_passes == 2 * len(percents) * 2


def test_morf_of_the_informative_region_drops_the_probability_more_than_a_random_map():
    box = [(4, 9, 4, 9)]
    net = RegionNet(box, size=16)  # only the box (and the conv's 1-pixel reach) drives the logits
    g = torch.Generator().manual_seed(0)
    images = torch.zeros(2, 3, 16, 16)
    images[:, :, 4:9, 4:9] = torch.randn(2, 3, 5, 5, generator=g) * 2
    target = net(images).argmax(1)
    scores = {}
    for name, maps in (("box", box_mask(box, 16).float().expand(2, 1, 16, 16)), ("random", torch.rand(2, 1, 16, 16))):
        metric = ROAD(net, std=[0.25] * 3)
        metric.update(images, maps, target)
        scores[name] = metric.last
    assert bool((scores["box"]["road_morf/auc"] < scores["random"]["road_morf/auc"] - 0.3).all())
    assert bool((scores["box"]["road_gap/auc"] > scores["random"]["road_gap/auc"] + 0.3).all())
    assert bool((scores["box"]["road_lerf/auc"] > 0.95).all())  # the box is kept until 80 % are removed


def test_a_maps_score_does_not_depend_on_its_batch_nor_on_the_global_rng():
    model = tiny_cnn(classes=4)
    g = torch.Generator().manual_seed(2)
    images = torch.randn(3, 3, 10, 10, dtype=torch.float64, generator=g)
    saliency = torch.rand(3, 1, 10, 10, dtype=torch.float64, generator=g)
    target = torch.tensor([0, 2, 3])

    def score(i, **kw):
        metric = ROAD(model, percents=(20, 60), std=[0.5] * 3, **{"noise": 0.05, "seed": 7, "batch_size": 5, **kw})
        torch.manual_seed(len(i) * 11)  # another global RNG state per call
        torch.randn(17)
        metric.update(images[i], saliency[i], target[i])
        return torch.cat([metric.last["road_morf_curve"], metric.last["road_lerf_curve"]], 1)

    together = score([0, 1, 2])
    assert torch.allclose(score([1]), together[1:2], atol=1e-12)
    assert torch.allclose(score([2, 0], batch_size=3), together[[2, 0]], atol=1e-12)
    assert not torch.allclose(score([0, 1, 2], seed=8), together, atol=1e-6)  # the seed setting draws other noise
    assert not torch.allclose(score([0, 1, 2], noise=0.0), together, atol=1e-6)  # and the noise is really there


def test_merged_states_equal_one_metric_over_both_batches():
    model = tiny_cnn(classes=3)
    g = torch.Generator().manual_seed(3)
    images = torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=g)
    saliency = torch.rand(4, 1, 8, 8, dtype=torch.float64, generator=g)
    target = torch.tensor([0, 1, 2, 1])
    kw = {"percents": (25, 50, 75), "std": [0.3, 0.4, 0.5]}
    m1, m2, whole = ROAD(model, **kw), ROAD(model, **kw), ROAD(model, **kw)
    m1.update(images[:1], saliency[:1], target[:1])
    m2.update(images[1:], saliency[1:], target[1:])
    m1.merge_state(m2)
    whole.update(images[:1], saliency[:1], target[:1])
    whole.update(images[1:], saliency[1:], target[1:])
    got, expect = m1.compute(), whole.compute()
    assert got.keys() == expect.keys() and "road_gap/auc" in got and "road_lerf/75" in got
    for key in expect:
        assert torch.allclose(torch.as_tensor(got[key]), torch.as_tensor(expect[key]), atol=1e-12), key
    with pytest.warns(UserWarning, match="called before the ``update``"):
        assert math.isnan(ROAD(model, **kw).compute()["road_morf/auc"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"percents": (10, 100)}, r"road\.percents must be below 100"),
        ({"percents": ()}, r"road\.percents must name at least one"),
        ({"percents": (-5,)}, r"road\.percents must be numbers in \[0, 100\]"),
        ({"noise": -0.1}, r"road\.noise must be a std >= 0"),
        ({"noise": "0.01"}, r"road\.noise must be a std >= 0"),
        ({"seed": 1.5}, r"road\.seed must be an integer"),
        ({"std": None}, r"pass std .* or set evaluation\.params\.road\.noise: 0"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
    ],
)
def test_bad_settings_give_a_clear_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ROAD(tiny_cnn(classes=2), **{"std": [0.25] * 3, **kwargs})


def test_bad_inputs_give_a_clear_value_error():
    metric = ROAD(tiny_cnn(classes=2), percents=(50, 90), std=[0.25] * 3)
    with pytest.raises(ValueError, match="remove every pixel of a 4-pixel image"):  # round(3.6) = 4
        metric.update(torch.zeros(1, 3, 2, 2, dtype=torch.float64), torch.rand(1, 1, 2, 2), torch.tensor([0]))
    with pytest.raises(ValueError, match="std has 3 channels but images have 1"):
        metric.update(torch.zeros(1, 1, 4, 4, dtype=torch.float64), torch.rand(1, 1, 4, 4), torch.tensor([0]))


def test_the_suite_builds_road_from_evaluation_params_and_the_tables_show_the_auc(tmp_path):
    assert METRICS.get("road") is ROAD
    names = [c.family for c in families()]
    assert names.index("deletion_insertion") + 1 == names.index("road") == names.index("proportion") - 1
    model = tiny_cnn(classes=3)
    evaluation = SimpleNamespace(batch_size=8, params={"road": {"percents": [50, 20], "noise": 0.0, "seed": 3}})
    suite = MetricSuite(model, Evaluation.from_config(evaluation, ["road"]), [0.5] * 3, [0.25] * 3)
    road = suite.plain["road"]
    assert (road.percents, road.noise, road.seed, road.batch_size) == ((20, 50), 0.0, 3, 8)
    images = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    values = suite.per_image(images, torch.rand(2, 1, 8, 8), torch.tensor([0, 2]), [None, None])
    heads = [f"{h}/{t}" for h in ("road_morf", "road_lerf") for t in ("20", "50", "auc")]
    assert sorted(values[0]) == sorted([*heads, "road_gap/auc", "road_morf_curve", "road_lerf_curve"])
    assert len(values[1]["road_lerf_curve"]) == 2 and suite.forward_passes == 2 * 2 * 2
    records = {m: [{"id": "x", "status": "ok", "metrics": v}] for m, v in zip(("a", "b"), values, strict=True)}
    md = write_tables(tmp_path, records, ["road"])["road"].splitlines()
    assert md[0] == "| method | images | road_morf/auc ↓ | road_lerf/auc ↑ | road_gap/auc ↑ |"
    csv_head = (tmp_path / "tables" / "road.csv").read_text().splitlines()[0]
    columns = [*heads, "road_gap/auc"]
    suffixes = ("", "_ci_low", "_ci_high", "_p")
    assert csv_head == "method,images," + ",".join(f"{c}{s}" for c in columns for s in suffixes)


def test_mean_curves_are_drawn_at_the_runs_percents(tmp_path):
    records = {
        "m": [
            {"status": "ok", "metrics": {"road_morf_curve": [0.9, 0.5, 0.1], "road_lerf_curve": [1.0, 0.9, 0.8]}},
            {"status": "ok", "metrics": {"road_morf_curve": [0.7, 0.3, 0.1], "road_lerf_curve": [1.0, 0.9, 0.6]}},
        ]
    }
    evaluation = SimpleNamespace(batch_size=4, params={"road": {"percents": [50, 10, 90]}})
    write_curves(tmp_path, records, Evaluation.from_config(evaluation, []))
    rows = (tmp_path / "curves" / "road_morf.csv").read_text().splitlines()
    assert rows == ["fraction,m", "0.1000,0.800000", "0.5000,0.400000", "0.9000,0.100000"]
    assert (tmp_path / "curves" / "road_lerf.png").stat().st_size > 1000
