"""Restarts: the expected map as the mean of N runs from x + sigma * n_k, batched as rows of the same fits."""

from __future__ import annotations

import csv
import itertools
import math

import pytest
import torch

import hdm_lightning as hl
from hdm_lightning.cli import explain_main
from hdm_lightning.config import ConfigError, load_run_config, method_config
from hdm_lightning.contract import build_method
from hdm_lightning.explainers.restarts import restart_inputs, run_agreement
from hdm_lightning.masks.ops import hierarchical_masked_image
from hdm_lightning.metrics.agreement import pearson
from tests.fixtures import make_folder_tree
from tests.test_explain_cli import TINY
from tests.toy_models import tiny_cnn

SCHEDULE = {"params": {"sizes": [2, 3], "factors": [2], "epochs": 6, "lr": 0.05}}
DM = {"schedule": SCHEDULE}
HDM = {"schedule": SCHEDULE, "stages": 2, "mixing": {"epochs": 6}}
MDM = {
    "schedule": {"params": {"sizes": [2, 3, 4], "steps": 8, "lr": 0.05}},
    "threshold": {"kind": "quantile", "value": 0.5},
}
N, SIGMA = 3, 0.05  # a large sigma so that the runs differ visibly on a tiny model


@pytest.fixture(scope="module")
def setup():
    model = tiny_cnn().eval()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        target = model(x).argmax(1)
    return model, x, target


def _restarts(cfg: dict, n: int = N, sigma: float = SIGMA) -> dict:
    return {**cfg, "restarts": n, "restart_noise": sigma}


@pytest.mark.parametrize(("method", "cfg"), [("dm", DM), ("mdm", MDM)])
def test_restarts_equal_the_mean_of_the_single_runs_from_those_noise_draws(setup, method, cfg):
    model, x, target = setup
    out = hl.explain(model, x, method, target=target, config=_restarts(cfg))
    noisy = restart_inputs(x, N, SIGMA)  # row b * N + k: image b, restart k
    singles = [hl.explain(model, noisy[i : i + 1], method, target=target[i // N], config=cfg) for i in range(2 * N)]
    runs = torch.cat([s.saliency for s in singles]).view(2, N, 1, 16, 16)
    torch.testing.assert_close(out.saliency, runs.mean(1), rtol=0, atol=1e-12)
    torch.testing.assert_close(out.stages[0].runs, runs, rtol=0, atol=1e-12)
    assert not torch.allclose(runs[:, 0], runs[:, 1], atol=1e-3)  # the runs do differ: the mean is not trivial
    assert out.passes_per_image == N * singles[0].passes_per_image and out.restarts == N


def test_hdm_averages_per_stage_and_feeds_the_mean_map_to_the_next_stage(setup):
    model, x, target = setup
    out = hl.explain(model, x, "hdm", target=target, config=_restarts(HDM))
    first, second = out.stages
    mean1 = first.runs.mean(1)
    torch.testing.assert_close(first.saliency, mean1, rtol=0, atol=0)
    x1 = hierarchical_masked_image(x, [mean1])
    torch.testing.assert_close(second.input, x1, rtol=0, atol=0)
    torch.testing.assert_close(first.masked, x1, rtol=0, atol=0)
    # Restart k of stage 2 is one DM run on (1 - N(mean M_1)) (x + sigma n_k): the mean map, not its own run's.
    rows = hierarchical_masked_image(restart_inputs(x, N, SIGMA), [mean1.repeat_interleave(N, 0)])
    alone = hl.explain(model, rows, "dm", target=target.repeat_interleave(N), config=DM)
    torch.testing.assert_close(second.runs, alone.saliency.view(2, N, 1, 16, 16), rtol=0, atol=1e-12)
    # The mixing is learned once, on X_0 and the stages' mean maps.
    assert out.weights.shape == (2, 2)
    mixed = (out.weights[:, :, None, None, None] * torch.stack([first.saliency, second.saliency], 1)).sum(1)
    torch.testing.assert_close(out.saliency, mixed, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("method", "cfg"), [("dm", DM), ("hdm", HDM), ("mdm", MDM)])
def test_one_restart_without_noise_is_the_papers_method_bit_for_bit(setup, method, cfg):
    model, x, target = setup
    plain = hl.explain(model, x, method, target=target, config=cfg)  # = tests/reference.py (test_equivalence.py)
    one = hl.explain(model, x, method, target=target, config=_restarts(cfg, 1, 0.0))
    assert torch.equal(plain.saliency, one.saliency)
    assert all(torch.equal(a.saliency, b.saliency) for a, b in zip(plain.stages, one.stages, strict=True))
    assert one.agreement is None and one.spread is None and one.stages[0].runs is None
    assert method_config(method).restarts == 1  # and it is the default


def test_the_spread_of_the_runs_is_kept(setup):
    model, x, target = setup
    out = hl.explain(model, x, "dm", target=target, config=_restarts(DM))
    runs = out.stages[0].runs
    torch.testing.assert_close(out.spread, runs.std(1), rtol=0, atol=1e-12)
    pairs = [pearson(runs[:, i], runs[:, j]) for i, j in itertools.combinations(range(N), 2)]
    torch.testing.assert_close(out.agreement, torch.stack(pairs).mean(0), rtol=0, atol=1e-12)
    assert (out.agreement < 1).all() and (out.spread > 0).any()
    hdm = hl.explain(model, x, "hdm", target=target, config=_restarts(HDM))
    assert hdm.spread.shape == (2, 1, 16, 16) and hdm.agreement.shape == (2,)
    assert all(s.agreement is not None for s in hdm.stages)


def test_run_agreement_leaves_out_constant_runs():
    a = torch.rand(1, 1, 4, 4, dtype=torch.float64)
    runs = torch.stack([a, a, torch.zeros_like(a)], 1)  # two equal runs and an all-zero one
    assert run_agreement(runs).item() == pytest.approx(1.0)
    assert math.isnan(run_agreement(torch.zeros(1, 2, 1, 4, 4)).item())


def test_an_image_gets_the_same_restarts_alone_and_in_a_batch(setup):
    model, x, target = setup
    alone = hl.explain(model, x[1:], "dm", target=target[1:], config=_restarts(DM))
    batch = hl.explain(model, x, "dm", target=target, config=_restarts(DM))
    torch.testing.assert_close(alone.saliency, batch.saliency[1:], rtol=0, atol=1e-12)
    noise = restart_inputs(x, 5, 1.0)[:N] - x[:1]  # the first n of N restarts are the n restarts
    torch.testing.assert_close(noise, restart_inputs(x[:1], N, 1.0) - x[:1], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("restarts", "noise", "message"),
    [
        (0, 1e-6, "restarts must be an integer in [1, 1024]"),
        (2.5, 1e-6, "restarts must be an integer"),
        (5000, 1e-6, "restarts must be an integer in [1, 1024]"),
        (4, float("nan"), "restart_noise must be a finite number"),
        (4, float("inf"), "restart_noise must be a finite number"),
        (4, -1e-6, "restart_noise must be a finite number >= 0"),
        (4, 0.0, "would run 4 identical fits of each image: set restart_noise > 0"),
    ],
)
def test_bad_restarts_are_refused_with_a_message(setup, restarts, noise, message):
    model = setup[0]
    for method in ("dm", "hdm", "mdm"):
        with pytest.raises((ValueError, TypeError)) as e:
            build_method(method, model, {"config": {"restarts": restarts, "restart_noise": noise}})
        assert message in str(e.value) or "restarts" in str(e.value)
    with pytest.raises(ConfigError, match="restart"):
        load_run_config(TINY, [f"explainer.restarts={restarts}", f"explainer.restart_noise={noise}"])


@pytest.mark.slow
def test_the_run_folder_and_wandb_record_the_spread(tmp_path):
    data = make_folder_tree(tmp_path / "data", classes=("cat", "dog"), per_class=1)
    out = tmp_path / "run"
    args = ["--config", TINY, f"data.root={data}", f"output.dir={out}", f"wandb.dir={tmp_path / 'wb'}"]
    assert explain_main([*args, "explainer.restarts=3", "explainer.restart_noise=0.01"]) == 0
    with open(out / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and int(rows[0]["passes"]) == 3 * 2 * 9 * 3 + 3  # 3 x (S=2 DM runs) + one mixing fit
    for r in rows:
        assert -1 <= float(r["restart_agreement"]) <= 1
        maps = torch.load(out / r["map"], weights_only=True)
        assert maps["restarts"] == 3 and maps["spread"].shape == (1, 32, 32)
        assert maps["restart_agreement"] == pytest.approx(float(r["restart_agreement"]), abs=1e-6)
    (wb_run,) = (tmp_path / "wb" / "wandb").glob("offline-run-*")
    assert b"restarts/hdm/agreement" in next(wb_run.glob("*.wandb")).read_bytes()
