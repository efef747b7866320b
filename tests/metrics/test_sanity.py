"""The sanity checks (``sanity``): cascading randomisation of the classifier and the random-logit test."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from hdm_lightning.contract import SaliencyMethod, build_method
from hdm_lightning.data.synthetic import generate_shapes
from hdm_lightning.evaluation import Evaluation, MetricSuite, column_key
from hdm_lightning.metrics import EVALUATION_FAMILIES, METRIC_FAMILIES, SanityChecks
from hdm_lightning.metrics.family import in_manifest
from hdm_lightning.metrics.sanity import (
    cascade_points,
    map_similarity,
    parameter_layers,
    random_other_class,
    reinitialise,
    restored,
)
from hdm_lightning.models.small_cnn import SmallCNN
from tests.toy_models import tiny_cnn

SMALL_CNN_LAYERS = [
    "head",
    "features.3.1",
    "features.3.0",
    "features.2.1",
    "features.2.0",
    "features.1.1",
    "features.1.0",
    "features.0.1",
    "features.0.0",
]


def state(model: nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in [*model.parameters(), *model.buffers()]]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(a, b, strict=True))


class Recorder(SaliencyMethod):
    """The head's weights at each call (so the test sees what the method saw); raises at call ``fail_at``."""

    def __init__(self, model: nn.Module, fail_at: int | None = None) -> None:
        super().__init__(model)
        self.seen: list[torch.Tensor] = []
        self.fail_at = fail_at

    def attribute(self, images, target):  # noqa: D102
        self.seen.append(self.model[-1].weight.detach().clone())
        if len(self.seen) == self.fail_at:
            raise RuntimeError("boom")
        return images.sum(1, keepdim=True) + target[:, None, None, None]


def test_the_layers_run_from_the_output_down_and_the_points_spread_over_them():
    names = [n for n, _ in parameter_layers(SmallCNN(4))]
    assert names == SMALL_CNN_LAYERS  # convs and BatchNorms, no container, head first
    assert cascade_points(names, steps=4) == [("cascade1", 3), ("cascade2", 5), ("cascade3", 7), ("full", 9)]
    assert cascade_points(names, steps=1) == [("full", 9)]
    assert cascade_points(names, layers=["head", "features.2.0"]) == [("cascade1", 1), ("cascade2", 5), ("full", 9)]
    with pytest.raises(ValueError, match=r"evaluation.params.sanity.steps = 10 is more than .* 9 layers"):
        cascade_points(names, steps=10)
    with pytest.raises(ValueError, match=r"evaluation.params.sanity.layers names \['features.3'\]"):
        cascade_points(names, layers=["features.3"])
    with pytest.raises(ValueError, match="from the output down"):
        cascade_points(names, layers=["features.2.0", "head"])
    for kwargs, message in [
        ({"steps": 0}, "steps must be a positive integer"),
        ({"steps": 2, "layers": ["head"]}, "not both"),
        ({"layers": "head"}, "layers must be a non-empty list"),
        ({"top_k": [0]}, "evaluation.params.sanity.top_k must be fractions"),
        ({"logit": "yes"}, "logit must be true or false"),
    ]:
        with pytest.raises(ValueError, match=message):
            SanityChecks(**kwargs)


def test_reinitialise_is_seeded_per_layer_and_covers_modules_without_reset_parameters():
    torch.manual_seed(0)
    lin, bn = nn.Linear(6, 3), nn.BatchNorm1d(3)
    bn.running_mean.fill_(0.5)
    before = lin.weight.detach().clone()
    with torch.random.fork_rng(devices=[]):
        reinitialise(lin, "head", seed=0)
        a = lin.weight.detach().clone()
        reinitialise(lin, "head", seed=0)
        assert torch.equal(lin.weight, a) and not torch.equal(a, before)
        reinitialise(lin, "head", seed=1)
        assert not torch.equal(lin.weight, a)
        reinitialise(bn, "bn", seed=0)  # reset_parameters: running statistics too
        assert torch.equal(bn.running_mean, torch.zeros(3))
        token = nn.Module()
        token.value = nn.Parameter(torch.full((2, 50), 3.0) + torch.linspace(0, 1, 100).view(2, 50))
        old = token.value.detach().clone()
        reinitialise(token, "token", seed=0)  # no reset_parameters: normal with the parameter's mean and std
        assert not torch.equal(token.value, old)
        assert abs(float(token.value.detach().mean()) - float(old.mean())) < 0.2


def test_the_model_is_restored_bit_exactly_after_the_cascade_and_after_an_exception():
    model = tiny_cnn(3)  # float64, BatchNorm statistics, in train mode
    before, modes = state(model), [m.training for m in model.modules()]
    x, target = torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 2])
    rng = torch.get_rng_state()
    method = Recorder(model)
    metric = SanityChecks(steps=3)
    metric.update_from_method(method, x, method(x, target), target, ["a", "b"])
    assert same(state(model), before) and [m.training for m in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)  # the run's random state as if nothing had run
    # calls: the run's, the random logit (trained model), then the cascade points: the head is re-drawn from the first
    seen = method.seen
    assert len(seen) == 2 + 3 and torch.equal(seen[1], seen[0]) and not torch.equal(seen[2], seen[0])
    assert torch.equal(seen[2], seen[3]) and torch.equal(seen[3], seen[4])  # cumulative: the head stays re-drawn
    failing = Recorder(model, fail_at=3)  # raises at the second cascade point, with half the model randomised
    with pytest.raises(RuntimeError, match="boom"):
        SanityChecks(steps=3).update_from_method(failing, x, method(x, target), target, ["a", "b"])
    assert same(state(model), before) and torch.equal(torch.get_rng_state(), rng)
    with pytest.raises(ZeroDivisionError), restored(model):
        with torch.no_grad():
            next(model.parameters()).mul_(2.0)
        raise ZeroDivisionError
    assert same(state(model), before)


def test_the_random_logit_is_never_the_target_and_is_a_function_of_the_id():
    ids = [f"img{i}" for i in range(300)]
    target = torch.arange(300) % 3
    other = random_other_class(ids, target, 3, seed=0)
    assert not bool((other == target).any()) and set(other.tolist()) == {0, 1, 2}
    assert {int(o) for o, t in zip(other, target, strict=True) if t == 0} == {1, 2}  # both others are drawn
    again = random_other_class(ids[::-1], target.flip(0), 3, seed=0)  # another order, another batch
    assert torch.equal(again.flip(0), other)
    assert not torch.equal(random_other_class(ids, target, 3, seed=1), other)
    with pytest.raises(ValueError, match="at least two classes"):
        random_other_class(ids, target, 1)
    one_class = nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 1))
    method = Recorder(one_class)
    metric = SanityChecks(steps=1)
    x = torch.randn(2, 3, 8, 8)
    metric.update_from_method(method, x, method(x, torch.tensor([0, 0])), torch.tensor([0, 0]), ["a", "b"])
    assert len(method.seen) == 2 and not any("logit" in k for k in metric.compute())  # skipped: one class


def test_keys_curve_directions_and_merge_state():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(4, 1, 16, 16, generator=g)
    noise = torch.rand(4, 1, 16, 16, generator=g)
    others = {"cascade1": a.clone(), "full": noise, "logit": 1 - a}
    whole, first, second = SanityChecks(steps=2), SanityChecks(steps=2), SanityChecks(steps=2)
    whole.update(a, others)
    first.update(a[:2], {k: v[:2] for k, v in others.items()})
    second.update(a[2:], {k: v[2:] for k, v in others.items()})
    columns = ["spearman", "ssim", "iou5", "iou20"]
    keys = [f"sanity/{p}/{c}" for p in ("cascade1", "full", "logit") for c in columns]
    assert list(whole.last) == [*keys, "sanity_curve"] and all(whole.last[k].shape == (4,) for k in keys)
    curve = whole.last["sanity_curve"]
    assert curve.shape == (4, 3) and torch.equal(curve[:, 0], torch.ones(4, dtype=torch.float64))
    assert torch.allclose(curve[:, 1], torch.ones(4, dtype=torch.float64))  # cascade1: the same map
    assert float(curve[:, 2].abs().max()) < 0.3  # full: unrelated noise
    assert all(math.isclose(float(whole.last[f"sanity/cascade1/{c}"].min()), 1.0) for c in columns)
    assert torch.allclose(whole.last["sanity/logit/spearman"], -torch.ones(4, dtype=torch.float64))
    first.merge_state(second)
    merged, total = first.compute(), whole.compute()
    assert list(merged) == list(total) == [*keys, "sanity_curve"]
    for k in keys:
        assert math.isclose(merged[k], total[k], rel_tol=1e-12, abs_tol=1e-12), k
    assert torch.allclose(merged["sanity_curve"], total["sanity_curve"])
    with pytest.raises(ValueError, match="unknown sanity point 'cascade2'"):
        whole.update(a, {"cascade2": a})
    # description: lower is better; the Markdown and the manifest show full and logit; points in cascade order
    assert SanityChecks.columns == {"sanity": False} and SanityChecks.order > EVALUATION_FAMILIES["stability"].order
    assert "sanity" in EVALUATION_FAMILIES and "sanity" not in METRIC_FAMILIES
    shown = [k for k in keys if SanityChecks.in_markdown(k)]
    assert shown == keys[4:] and [k for k in keys if in_manifest(k)] == shown
    mixed = ["sanity/logit/iou5", "sanity/full/ssim", "sanity/cascade10/spearman", "sanity/cascade2/iou20"]
    assert sorted(mixed, key=column_key) == [mixed[3], mixed[2], mixed[1], mixed[0]]
    assert map_similarity(a, a)["ssim"].dtype == torch.float64


def test_the_suite_builds_it_from_evaluation_params_and_scores_a_rerun():
    evaluation = SimpleNamespace(batch_size=4, params={"sanity": {"steps": 2, "top_k": [0.1], "seed": 3}})
    suite = MetricSuite(None, Evaluation.from_config(evaluation, ["sanity"]), None, None)
    metric = suite.reruns["sanity"]
    assert isinstance(metric, SanityChecks) and metric.steps == 2 and metric.top_k == (0.1,) and metric.seed == 3
    model = tiny_cnn(3)
    method = build_method("gradient", model)
    x, target = torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1])
    rows = suite.per_image(x, method(x, target), target, [None, None], method=method, ids=["a", "b"])
    points = ("cascade1", "full", "logit")
    assert sorted(rows[0]) == sorted(
        [f"sanity/{p}/{c}" for p in points for c in ("spearman", "ssim", "iou10")] + ["sanity_curve"]
    )
    assert len(rows[1]["sanity_curve"]) == 3 and rows[1]["sanity_curve"][0] == 1.0
    with pytest.raises(ValueError, match="evaluation.params.sanity.steps must be a positive integer"):
        MetricSuite(
            None,
            Evaluation.from_config(SimpleNamespace(batch_size=4, params={"sanity": {"steps": -1}}), ["sanity"]),
            None,
            None,
        )


# ------------------------------------------------------------------------------------------------ the done-when


def _shapes(split: str, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic shapes (``data.kind: synthetic``), normalised as ``small_cnn`` is (mean 0.5, std 0.5)."""
    pairs = [generate_shapes(i, size, 0, split)[:2] for i in range(n)]
    x = torch.stack([torch.from_numpy(rgb).permute(2, 0, 1).float() / 255 for rgb, _ in pairs])
    return (x - 0.5) / 0.5, torch.tensor([label for _, label in pairs])


@pytest.fixture(scope="module")
def synthetic_classifier():
    """``small_cnn`` (narrow: 8..64 channels) trained on 1000 synthetic shapes at 32 px: about 5 s on one thread.

    The shapes' classifier of ``configs/classifier/synthetic.yaml`` at a smaller budget (same data generator,
    backbone family, optimiser and flips omitted); validation accuracy about 0.95.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # faster than two threads on a shared two-core machine, for this tiny net
    try:
        x, y = _shapes("train", 1000, 32)
        torch.manual_seed(0)
        model = SmallCNN(4, (8, 16, 32, 64))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
        epochs, batch = 8, 64
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=epochs * math.ceil(len(x) / batch))
        gen = torch.Generator().manual_seed(0)
        for _ in range(epochs):
            for idx in torch.randperm(len(x), generator=gen).split(batch):
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        model.eval()
        xv, yv = _shapes("val", 200, 32)
        with torch.no_grad():
            accuracy = float((model(xv).argmax(1) == yv).float().mean())
        yield model, xv[:8], yv[:8], accuracy
    finally:
        torch.set_num_threads(threads)


def test_the_cascade_flags_edges_as_model_independent_and_not_gradcam(synthetic_classifier):
    model, x, y, accuracy = synthetic_classifier
    assert accuracy > 0.8
    ids = [f"val{i}" for i in range(len(x))]
    scores = {}
    for name in ("edges", "gradcam"):
        method = build_method(name, model)
        metric = SanityChecks()  # the defaults: 4 cascade points, the random logit
        metric.update_from_method(method, x, method(x, y), y, ids)
        scores[name] = metric.compute()
    assert scores["edges"]["sanity/full/spearman"] >= 0.9 and scores["edges"]["sanity/full/ssim"] >= 0.9
    assert scores["edges"]["sanity/logit/spearman"] >= 0.9
    assert scores["gradcam"]["sanity/full/spearman"] < 0.5 and scores["gradcam"]["sanity/logit/spearman"] < 0.5
    curve = scores["gradcam"]["sanity_curve"]
    assert curve.shape == (5,) and curve[0] == 1.0 and float(curve[-1]) < float(curve[1]) < 1.0
