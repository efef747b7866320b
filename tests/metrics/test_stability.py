"""Map stability: agreement scores on known inputs, the MapStability metric, and the method reruns."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from scipy.stats import spearmanr

from hdm_lightning.evaluation import Evaluation, MetricSuite, column_key
from hdm_lightning.metrics import EVALUATION_FAMILIES, METRIC_FAMILIES, MapStability, saliency_metrics
from hdm_lightning.metrics.stability import (
    agreement_keys,
    condition_names,
    id_noise,
    map_agreement,
    pearson,
    rank,
    rerun_conditions,
    spearman,
    top_k_iou,
)

COLUMNS = ["pearson", "spearman", "iou5", "iou20"]


def random_maps(n: int = 8, side: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, side, side, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ agreement


def test_identical_maps_agree_on_every_column():
    a = random_maps(3, 16)
    scores = map_agreement(a, a.clone())
    assert list(scores) == COLUMNS == agreement_keys()
    for key, v in scores.items():
        assert v.shape == (3,) and v.dtype == torch.float64
        assert torch.allclose(v, torch.ones(3, dtype=torch.float64)), key
    flat = torch.zeros(2, 1, 8, 8)  # two equal constant maps: 1 too (nothing ranks, nothing differs)
    assert all(bool((v == 1).all()) for v in map_agreement(flat, flat).values())


def test_independent_random_maps_score_about_zero_and_the_chance_iou():
    a, b = random_maps(8, 64, seed=1), random_maps(8, 64, seed=2)
    scores = map_agreement(a, b)
    assert float(scores["pearson"].abs().max()) < 0.05
    assert float(scores["spearman"].abs().max()) < 0.05
    for k, key in ((0.05, "iou5"), (0.2, "iou20")):
        assert math.isclose(float(scores[key].mean()), k / (2 - k), abs_tol=0.01), key


def test_a_map_against_its_negation_correlates_minus_one():
    a = random_maps(2, 16)
    assert torch.allclose(pearson(a, -a), torch.full((2,), -1.0, dtype=torch.float64))
    assert torch.allclose(spearman(a, 1 - a), torch.full((2,), -1.0, dtype=torch.float64))
    assert torch.allclose(pearson(a, 3 * a + 1), torch.ones(2, dtype=torch.float64))  # affine: still 1
    assert float(top_k_iou(a, -a, 0.2)[0]) == 0.0  # opposite ends
    assert float(pearson(torch.zeros(16, 16), a[0, 0])) == 0.0  # a flat map against a varying one


def test_ranks_average_ties_and_spearman_matches_scipy_on_flat_regions():
    assert rank(torch.tensor([3.0, 0.0, 0.0, 5.0])).tolist() == [2.0, 0.5, 0.5, 3.0]
    # Thresholded maps: most pixels exactly 0, the rest varying; ties in both maps, not at the same pixels.
    g = torch.Generator().manual_seed(3)
    a = torch.rand(2, 1, 32, 32, generator=g)
    b = a + 0.3 * torch.rand(2, 1, 32, 32, generator=g)
    a = torch.where(a > 0.7, a, 0.0)
    b = torch.where(b > 0.9, b, 0.0)
    got = spearman(a, b)
    for i in range(2):
        expect = spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic
        assert math.isclose(float(got[i]), float(expect), abs_tol=1e-9)
    assert torch.allclose(spearman(a, a * 2), torch.ones(2, dtype=torch.float64))


def test_top_k_keeps_ties_and_never_counts_a_flat_bottom_as_top():
    a = torch.zeros(1, 1, 10, 10)
    a[0, 0, 0, :3] = 1.0  # 3 % of the pixels above a flat zero floor
    b = a.clone()
    b[0, 0, 9, 9] = 0.5
    assert float(top_k_iou(a, a, 0.05)) == 1.0
    assert math.isclose(float(top_k_iou(a, b, 0.05)), 3 / 4)  # the zeros are not top-5 % pixels
    assert float(top_k_iou(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4), 0.2)) == 1.0  # two empty sets


def test_shape_mismatch_and_bad_fractions_are_clear_errors():
    a = random_maps(2, 8)
    for fn in (pearson, spearman, lambda x, y: top_k_iou(x, y, 0.2), map_agreement):
        with pytest.raises(ValueError, match=r"same shape .* got \(2, 1, 8, 8\) and \(2, 1, 8, 4\)"):
            fn(a, a[..., :4])
    with pytest.raises(ValueError, match=r"top-k fraction must be in \(0, 1\], got 1.5"):
        top_k_iou(a, a, 1.5)


# ------------------------------------------------------------------------------------------------ the metric


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric MapStability was called before")
def test_metric_update_compute_reset_and_keys():
    a, b = random_maps(3, 16, seed=4), random_maps(3, 16, seed=5)
    m = MapStability(["noise1e-06", "batch", "threads"], top_k=(0.05, 0.2))
    assert m.higher_is_better and m.requires_method and not m.requires_mask
    assert m.compute() == {}  # nothing counted yet
    m.update(a, a, "noise1e-06")
    m.update(a, b, "batch")
    out = m.compute()
    assert list(out) == [f"stability/{c}/{k}" for c in ("noise1e-06", "batch") for k in COLUMNS]  # no threads
    assert all(math.isclose(out[f"stability/noise1e-06/{k}"], 1.0) for k in COLUMNS)
    expect = map_agreement(a, b)
    for k in COLUMNS:
        assert math.isclose(out[f"stability/batch/{k}"], float(expect[k].mean()), rel_tol=1e-12)
        assert torch.equal(m.last[f"stability/batch/{k}"], expect[k])
    assert set(m.last) == set(out)
    m.update(a[:1], b[:1], "batch")  # the mean is over images, not over updates
    both = torch.cat([expect["pearson"], map_agreement(a[:1], b[:1])["pearson"]])
    assert math.isclose(m.compute()["stability/batch/pearson"], float(both.mean()), rel_tol=1e-12)
    m.reset()
    assert m.compute() == {} and m.last == {}
    with pytest.raises(ValueError, match=r"unknown condition 'noise0.1': this metric was built for"):
        m.update(a, a, "noise0.1")
    with pytest.raises(ValueError, match=r"maps must be \[B, 1, H, W\]"):
        m.update(a[:, 0], a[:, 0], "batch")
    with pytest.raises(ValueError, match="conditions must be distinct plain names"):
        MapStability(["batch", "batch"])
    with pytest.raises(ValueError, match="conditions must be distinct plain names"):
        MapStability(["noise/1"])
    with pytest.raises(ValueError, match=r"top_k must be fractions of the pixels in \(0, 1\]"):
        MapStability(top_k=(0.0,))


def test_metric_states_merge_like_one_process():
    a, b = random_maps(4, 16, seed=6), random_maps(4, 16, seed=7)
    whole, m1, m2 = (MapStability(["batch", "threads"], top_k=(0.1,)) for _ in range(3))
    whole.update(a, b, "batch")
    whole.update(a, a, "threads")
    m1.update(a[:3], b[:3], "batch")
    m2.update(a[3:], b[3:], "batch")
    m2.update(a, a, "threads")
    m1.merge_state(m2)
    expect, got = whole.compute(), m1.compute()
    columns = ["pearson", "spearman", "iou10"]
    assert list(got) == list(expect) == [f"stability/{c}/{k}" for c in ("batch", "threads") for k in columns]
    for key in expect:
        assert math.isclose(got[key], expect[key], rel_tol=1e-12, abs_tol=1e-15), key


def test_the_family_is_listed_for_evaluation_but_not_built_by_the_map_factory():
    assert EVALUATION_FAMILIES["stability"] is MapStability and "stability" not in METRIC_FAMILIES
    with pytest.raises(ValueError, match="'stability' reruns the saliency method"):
        saliency_metrics(None, ["stability"])
    keys = ["stability/threads/pearson", "stability/batch/iou20", "stability/noise0.001/pearson", "deletion"]
    keys += ["stability/noise1e-06/iou20", "stability/noise1e-06/iou5", "stability/noise1e-06/spearman"]
    assert sorted(keys, key=column_key) == [
        "deletion",
        "stability/noise1e-06/spearman",
        "stability/noise1e-06/iou5",
        "stability/noise1e-06/iou20",
        "stability/noise0.001/pearson",
        "stability/batch/iou20",
        "stability/threads/pearson",
    ]


# ------------------------------------------------------------------------------------------------ reruns


class Recorder:
    """A stand-in saliency method: map = per-pixel channel sum of the image, each call recorded.

    Reruns must come through the plain call (no run context: never the run's checkpoints, logger or callbacks);
    ``explain`` with a context is what the run itself uses, so a rerun through it fails the test.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor, int]] = []

    def __call__(self, images, target):
        self.calls.append((images.clone(), target.clone(), torch.get_num_threads()))
        torch.rand(1)  # a method may draw random numbers: the run's RNG must not see it
        return images.sum(1, keepdim=True)

    def explain(self, images, target, context=None):
        raise AssertionError("a rerun went through explain(); reruns take no run context")


def test_reruns_use_id_seeded_noise_other_batches_and_leave_no_trace():
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(8))
    t = torch.tensor([1, 0])
    method = Recorder()
    before = torch.get_num_threads()
    state = torch.get_rng_state()
    others = rerun_conditions(method, x, t, ["a.png", "b.png"], noise=(1e-6, 1e-3), batch=True, threads=True)
    expect = condition_names((1e-6, 1e-3), True, True)
    if before == 1:
        expect.remove("threads")
    assert list(others) == expect and expect[:3] == ["noise1e-06", "noise0.001", "batch"]
    n = torch.stack([id_noise("a.png", (3, 8, 8)), id_noise("b.png", (3, 8, 8))]).float()
    assert torch.equal(method.calls[0][0], x + 1e-6 * n) and torch.equal(method.calls[1][0], x + 1e-3 * n)
    assert torch.equal(id_noise("a.png", (3, 8, 8)), id_noise("a.png", (3, 8, 8)))  # a pure function of the id
    assert not torch.equal(id_noise("a.png", (3, 8, 8)), id_noise("b.png", (3, 8, 8)))
    assert [c[0].shape[0] for c in method.calls[2:4]] == [1, 1]  # each image alone
    assert torch.equal(method.calls[2][0], x[:1]) and torch.equal(method.calls[3][1], t[1:])
    assert torch.equal(others["batch"], x.sum(1, keepdim=True))
    if before > 1:
        assert method.calls[4][2] == 1 and torch.equal(method.calls[4][0], x)
    assert torch.get_num_threads() == before and torch.equal(torch.get_rng_state(), state)


def test_a_single_image_is_explained_again_with_two_companions():
    x = torch.randn(1, 3, 6, 6, generator=torch.Generator().manual_seed(9))
    method = Recorder()
    others = rerun_conditions(method, x, torch.tensor([2]), ["only"], noise=(), batch=True)
    ((trio, targets, _),) = method.calls
    assert torch.equal(trio, torch.cat([x, x.flip(-1), x.flip(-1).flip(-2)])) and targets.tolist() == [2, 2, 2]
    assert list(others) == ["batch"] and torch.equal(others["batch"], x.sum(1, keepdim=True))
    with pytest.raises(ValueError, match="one id per image: got 2 ids for 1 images"):
        rerun_conditions(method, x, torch.tensor([2]), ["a", "b"])


def evaluation(**overrides):
    base = {
        "batch_size": 8,
        "steps": 4,
        "insertion_canvas": "blur",
        "deletion_value": "black",
        "drop_percents": [70],
        "drop_baseline": "zero",
        "segmentation_percents": [90],
        "stability_noise": [1e-6],
        "stability_batch": True,
        "stability_threads": False,
        "stability_top_k": [0.05, 0.2],
    }
    return SimpleNamespace(**{**base, **overrides})


def test_suite_collects_per_image_stability_values_and_checks_settings():
    suite = MetricSuite(None, Evaluation.from_config(evaluation(), ["stability"]), None, None)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(10))
    t = torch.tensor([0, 1])
    method = Recorder()
    maps = method(x, t)
    values = suite.per_image(x, maps, t, [None, None], method=method, ids=["a", "b"])
    assert len(values) == 2 and values[0]["stability/batch/pearson"] == 1.0
    assert list(values[1]) == [f"stability/{c}/{k}" for c in ("noise1e-06", "batch") for k in COLUMNS]
    assert values[0]["stability/noise1e-06/pearson"] > 0.999
    with pytest.raises(ValueError, match="pass per_image"):
        suite.per_image(x, maps, t, [None, None])
    bad = {
        "stability_noise": ([0.0], r"evaluation.stability_noise must be noise levels eps > 0"),
        "stability_top_k": ([0.05, 2], r"evaluation.stability_top_k must be fractions of the pixels in \(0, 1\]"),
    }
    for key, (value, message) in bad.items():
        with pytest.raises(ValueError, match=message):
            MetricSuite(None, Evaluation.from_config(evaluation(**{key: value}), ["stability"]), None, None)
    with pytest.raises(ValueError, match="has duplicates"):
        MetricSuite(None, Evaluation.from_config(evaluation(stability_top_k=[0.2, 0.2]), ["stability"]), None, None)
    with pytest.raises(ValueError, match="'stability' has no condition"):
        MetricSuite(
            None,
            Evaluation.from_config(evaluation(stability_noise=[], stability_batch=False), ["stability"]),
            None,
            None,
        )
    MetricSuite(
        None, Evaluation.from_config(evaluation(stability_noise=[-1.0]), ["proportion"]), None, None
    )  # checked only when used
