"""One tie order for every rank-based family: ``evaluation.ties`` (raster or the fixed shuffled order).

A sparse map's zeros are one large tie, so its scores depend on how equal values are ordered; a tie-free map's
never do. Every family that ranks pixels takes the run's ``evaluation.ties``, and a family's own
``evaluation.params.<family>.ties`` overrides it.
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from hdm_lightning.config import ConfigError, EvaluationConfig, load_run_config
from hdm_lightning.evaluation import family_params
from hdm_lightning.metrics import METRICS
from hdm_lightning.metrics.family import build_family
from hdm_lightning.metrics.perturbation import rank_order
from hdm_lightning.metrics.pointing import max_points
from tests.toy_models import tiny_cnn

RANKED = ("deletion_insertion", "drop_increase", "road", "pointing_game", "segmentation")
SIZE = 16


def _inputs() -> tuple[torch.Tensor, ...]:
    torch.manual_seed(0)
    x = torch.randn(2, 3, SIZE, SIZE, dtype=torch.float64)
    target = torch.tensor([0, 1])
    sparse = torch.zeros(2, 1, SIZE, SIZE, dtype=torch.float64)
    sparse[:, :, 6:10, 6:10] = torch.rand(2, 1, 4, 4, dtype=torch.float64) + 0.1
    dense = torch.rand(2, 1, SIZE, SIZE, dtype=torch.float64)
    mask = torch.zeros(2, SIZE, SIZE, dtype=torch.bool)
    mask[:, 4:12, 2:14] = True
    return x, target, sparse, dense, mask


def _score(family: str, ties: str, maps: torch.Tensor) -> dict:
    x, target, _, _, mask = _inputs()
    model = tiny_cnn(3).double().eval()
    kwargs = {"ties": ties, **({"steps": 8} if family == "deletion_insertion" else {})}
    if family == "pointing_game":
        kwargs["tolerance"] = 0
    metric = build_family(family, model, mean=[0.5] * 3, std=[0.25] * 3, batch_size=64, **kwargs)
    metric.update(x, maps, target, mask)
    # per image, with Drop/Increase's class probabilities (its own columns saturate on a tiny model)
    return {k: torch.as_tensor(v).tolist() for k, v in metric.last.items()}


@pytest.mark.parametrize("family", [f for f in RANKED if f != "pointing_game"])
def test_every_ranked_family_scores_a_sparse_map_by_the_tie_order_and_a_tie_free_map_alike(family):
    _, _, sparse, dense, _ = _inputs()
    assert _score(family, "raster", dense) == _score(family, "shuffled", dense)
    assert _score(family, "raster", sparse) != _score(family, "shuffled", sparse)


def test_pointing_takes_the_first_maximum_in_the_tie_order():
    flat = torch.zeros(1, 1, SIZE, SIZE)
    first = int(rank_order(flat, "shuffled")[0, 0])
    assert max_points(flat, "raster").tolist() == [[0, 0]]  # raster: the top-left pixel
    assert max_points(flat).tolist() == [[first // SIZE, first % SIZE]] != [[0, 0]]  # shuffled, the default
    peak = torch.rand(1, 1, SIZE, SIZE)
    assert max_points(peak, "raster").tolist() == max_points(peak, "shuffled").tolist()


def test_evaluation_ties_reaches_every_ranked_family_and_a_familys_own_setting_wins():
    evaluation = OmegaConf.structured(EvaluationConfig(ties="raster", params={"road": {"ties": "shuffled"}}))
    params = family_params(METRICS.names(), evaluation)
    for family in RANKED:
        assert params[family]["ties"] == ("shuffled" if family == "road" else "raster"), family
    assert all("ties" not in params[f] for f in METRICS.names() if f not in RANKED)
    defaults = family_params(METRICS.names(), OmegaConf.structured(EvaluationConfig()))
    assert EvaluationConfig().ties == "shuffled" and all(defaults[f]["ties"] == "shuffled" for f in RANKED)


def test_a_bad_tie_order_is_refused_where_the_config_is_read_and_by_every_family():
    with pytest.raises(ConfigError, match=r"evaluation.ties must be one of \['raster', 'shuffled'\], got 'random'"):
        load_run_config(None, ["evaluation.ties=random"])
    model = tiny_cnn(3)
    for family in RANKED:
        with pytest.raises(ValueError, match=f"{family}: ties must be one of"):
            build_family(family, model, mean=[0.5] * 3, std=[0.25] * 3, ties="random")
