"""The run plan: fixed batches in dataset order, resume from records, this process's share, the methods."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from hdm_lightning.config import ConfigError, method_config
from hdm_lightning.distributed import Shard
from hdm_lightning.io import atomic_write_json
from hdm_lightning.run.plan import build_runs, plan_batches
from tests.run.parts import method_run, tiny_classifier

IDS = [f"img{i}.png" for i in range(7)]


def _finish(run, ids, status="ok"):
    for i in ids:
        atomic_write_json({"id": i, "status": status}, run.root / "records" / f"{i[:-4]}.json")


def test_batches_are_fixed_and_finished_ones_skipped(tmp_path):
    model = tiny_classifier().model
    a, b = method_run("a", tmp_path / "a", model), method_run("b", tmp_path / "b", model)
    _finish(a, IDS[:5])  # batch 0 (img0-2) and part of batch 1 done by a
    _finish(b, IDS[:3])  # batch 0 done by b too; b's batch 1 not
    _finish(b, IDS[3:4], status="failed")  # a failed image is not finished
    for k in range(3):
        (tmp_path / ".work" / f"batch-{k:06d}").mkdir(parents=True)
    plan = plan_batches(IDS, [a, b], 3, Shard(device=torch.device("cpu")), tmp_path)
    assert plan.batches == [[0, 1, 2], [3, 4, 5], [6]]
    assert plan.todo_all == plan.todo == [(1, [3, 4, 5]), (2, [6])]
    assert plan.skipped == 3 and plan.to_explain == plan.mine == 4
    assert a.finished == set(IDS[:5]) and b.finished == set(IDS[:3])  # records were read
    # the work folder of a finished batch goes; those of batches still to do stay (they hold checkpoints)
    assert sorted(p.name for p in (tmp_path / ".work").iterdir()) == ["batch-000001", "batch-000002"]


def test_batches_left_are_dealt_out_after_the_skip(tmp_path):
    model = tiny_classifier().model
    runs = [method_run("a", tmp_path, model)]
    _finish(runs[0], IDS[:2])
    plans = [plan_batches(IDS, runs, 2, Shard(device=torch.device("cpu"), rank=r, world=2), tmp_path) for r in (0, 1)]
    assert [k for k, _ in plans[0].todo_all] == [1, 2, 3]
    assert [k for k, _ in plans[0].todo] == [1, 3] and [k for k, _ in plans[1].todo] == [2]
    assert plans[0].mine == 3 and plans[1].mine == 2 and plans[0].to_explain == plans[1].to_explain == 5


def test_methods_are_built_once_with_the_runs_settings(tmp_path):
    model = tiny_classifier().model
    settings = method_config("dm", {"schedule": {"params": {"epochs": 2}}})
    cfg = OmegaConf.create(
        {
            "method": "dm",
            "methods": [
                {"name": "dm", "label": None, "params": {}},
                {"name": "gradient", "label": "grad", "params": {"channels": "max"}},
            ],
        }
    )
    dm, grad = build_runs(cfg, settings, model, tmp_path)
    assert (dm.label, dm.root, grad.label, grad.root) == (
        "dm",
        tmp_path / "methods/dm",
        "grad",
        tmp_path / "methods/grad",
    )
    assert dm.method.cfg.schedule.params.epochs == 2  # the run's own method settings
    (alone,) = build_runs(OmegaConf.create({"method": "dm", "methods": []}), settings, model, tmp_path)
    assert alone.root == tmp_path and alone.method.cfg.schedule.params.epochs == 2


def test_a_blurred_run_method_gets_the_runs_settings_unless_given(tmp_path):
    model = tiny_classifier().model
    settings = method_config("dm", {"schedule": {"params": {"epochs": 2}}})
    own = {"schedule": {"name": "dm", "params": {"epochs": 5}}}
    entries = [
        {"name": "blurred", "label": "b_run", "params": {"of": "dm", "sigma": 2}},
        {"name": "blurred", "label": "b_own", "params": {"of": "dm", "sigma": 2, "params": {"config": own}}},
        {"name": "blurred", "label": "b_grad", "params": {"of": "gradient", "sigma": 2}},
    ]
    cfg = OmegaConf.create({"method": "dm", "methods": entries})
    run, given, grad = (r.method for r in build_runs(cfg, settings, model, tmp_path))
    assert run.inner.cfg.schedule.params.epochs == 2  # the run's dm settings
    assert given.inner.cfg.schedule.params.epochs == 5 and grad.inner.name == "gradient"


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        ([{"name": "random", "label": "r", "params": {}}] * 2, "label 'r' is repeated"),
        ([{"name": "random", "label": "a/b", "params": {}}], "not a plain name"),
        ([{"name": "gradcamm", "label": None, "params": {}}], "entry 'gradcamm': Unknown saliency method"),
        (
            [{"name": "rise", "label": None, "params": {"n_mask": 3}}],
            r"entry 'rise': unknown parameter\(s\) \['n_mask'\]",
        ),
    ],
)
def test_bad_method_entries_are_named(tmp_path, entries, match):
    cfg = OmegaConf.create({"method": "dm", "methods": entries})
    with pytest.raises(ConfigError, match=match):
        build_runs(cfg, method_config("dm"), tiny_classifier().model, tmp_path)
