"""The pointing game: the map's maximum (ties in raster order) within ``tolerance`` pixels of the object."""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import pytest
import torch

from hdm_lightning.evaluation import Evaluation, MetricSuite, write_tables
from hdm_lightning.metrics import METRICS, PointingGame, families
from hdm_lightning.metrics.family import family_of, higher_is_better, in_manifest
from hdm_lightning.metrics.pointing import max_points, pointing_hits


def one_hot(points, size: int) -> torch.Tensor:
    """Maps ``[B, 1, size, size]`` that are 1 at one pixel ``(y, x)`` each, 0 elsewhere."""
    maps = torch.zeros(len(points), 1, size, size)
    for i, (y, x) in enumerate(points):
        maps[i, 0, y, x] = 1.0
    return maps


def boxes(spec, size: int) -> torch.Tensor:
    """Masks ``[B, size, size]``, image ``i`` True on box ``(y0, y1, x0, x1)`` (``None``: empty)."""
    mask = torch.zeros(len(spec), size, size, dtype=torch.bool)
    for i, box in enumerate(spec):
        if box is not None:
            y0, y1, x0, x1 = box
            mask[i, y0:y1, x0:x1] = True
    return mask


def score(metric, maps, mask):
    metric.update(torch.zeros(len(maps), 3, *maps.shape[-2:]), maps, torch.zeros(len(maps), dtype=torch.long), mask)
    return metric.last


def test_tolerance_0_1_and_15_on_a_hand_made_box():
    box = (10, 15, 10, 15)  # foreground rows and columns 10 .. 14
    # inside; 1 px right of the box; diagonal sqrt(2); offsets (9, 12) = exactly 15 px; offsets (9, 13) = 15.8 px
    points = [(12, 12), (12, 15), (15, 15), (23, 26), (23, 27)]
    maps, mask = one_hot(points, 40), boxes([box] * 5, 40)
    assert max_points(maps).tolist() == [list(p) for p in points]
    expected = {0: [1, 0, 0, 0, 0], 1: [1, 1, 0, 0, 0], 1.5: [1, 1, 1, 0, 0], 15: [1, 1, 1, 1, 0]}
    for tolerance, hits in expected.items():
        assert pointing_hits(max_points(maps), mask, tolerance).tolist() == [bool(h) for h in hits], tolerance
        assert score(PointingGame(tolerance=tolerance), maps, mask)["pointing/all"].tolist() == hits


def test_ties_go_to_the_first_pixel_in_raster_order():
    maps = torch.zeros(3, 1, 32, 32)
    maps[1, 0, 20, 2] = maps[1, 0, 5, 30] = 2.0  # (5, 30) comes first in raster order
    maps[2] = -0.0  # a constant map (negative zero included): the first pixel
    maps[2, 0, 0, 1] = 0.0
    assert max_points(maps, "raster").tolist() == [[0, 0], [5, 30], [0, 0]]
    metric = PointingGame(tolerance=0, ties="raster")
    on_first = score(metric, maps[1:2], boxes([(5, 6, 30, 31)], 32))["pointing/all"]
    on_second = score(metric, maps[1:2], boxes([(20, 21, 2, 3)], 32))["pointing/all"]
    assert on_first.tolist() == [1.0] and on_second.tolist() == [0.0]


def test_difficult_subset_skipped_images_and_nan():
    size = 8  # 64 pixels: difficult below 16
    maps = one_hot([(0, 0), (7, 7), (0, 0), (0, 0), (3, 3)], size)
    mask = boxes([(0, 2, 0, 2), (0, 2, 0, 2), (0, 4, 0, 4), (0, 8, 0, 8), None], size)  # 4, 4, 16, 64, 0 px
    metric = PointingGame(tolerance=0)
    last = score(metric, maps, mask)
    assert last["pointing/all"].tolist()[:4] == [1.0, 0.0, 1.0, 1.0] and math.isnan(last["pointing/all"][4])
    assert [v if v == v else None for v in last["pointing/difficult"].tolist()] == [1.0, 0.0, None, None, None]
    out = metric.compute()
    assert out["pointing/all"] == 0.75 and out["pointing/difficult"] == 0.5
    assert (out["pointing/images"], out["pointing/difficult_images"], out["pointing/skipped"]) == (4.0, 2.0, 1.0)
    easy = PointingGame(difficult_area=0.0)  # nothing is difficult
    last = score(easy, maps[:4], mask[:4])
    assert bool(last["pointing/difficult"].isnan().all()) and math.isnan(easy.compute()["pointing/difficult"])
    assert easy.compute()["pointing/all"] == 1.0  # tolerance 15 reaches every box on an 8 px image
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics warns of a compute() before any update()
        empty = PointingGame().compute()
    assert math.isnan(empty["pointing/all"]) and empty["pointing/images"] == 0.0


def test_merge_state_equals_one_pass():
    torch.manual_seed(0)
    maps = torch.rand(6, 1, 24, 24)
    mask = boxes([(0, 5, 0, 5), (10, 20, 10, 20), (0, 24, 0, 12), (18, 24, 18, 24), None, (3, 4, 20, 21)], 24)
    whole, a, b = (PointingGame(tolerance=3) for _ in range(3))
    score(whole, maps, mask)
    score(a, maps[:2], mask[:2])
    score(b, maps[2:], mask[2:])
    a.merge_state(b)
    merged, expected = a.compute(), whole.compute()
    assert expected["pointing/images"] == 5.0 and expected["pointing/difficult_images"] == 4.0
    assert merged == pytest.approx(expected, nan_ok=True)


def test_a_map_peaked_on_the_object_hits_and_a_centre_peaked_map_misses():
    size = 64
    mask = boxes([(2, 10, 50, 62)] * 2, size)  # off-centre: its nearest pixel is 29 px from the centre
    axis = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")

    def bump(y, x):
        return torch.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 50.0)

    maps = torch.stack([bump(6, 56), bump(32, 32)])[:, None]
    assert score(PointingGame(), maps, mask)["pointing/all"].tolist() == [1.0, 0.0]


def test_the_suite_takes_its_settings_from_evaluation_params(tmp_path):
    assert METRICS.get("pointing_game") is PointingGame and family_of("pointing/difficult") is PointingGame
    assert higher_is_better("pointing/all") and in_manifest("pointing/all") and in_manifest("pointing/difficult")
    names = [c.family for c in families()]
    assert names.index("proportion") < names.index("pointing_game") < names.index("segmentation")
    evaluation = SimpleNamespace(batch_size=4, params={"pointing_game": {"tolerance": 0, "difficult_area": 0.5}})
    suite = MetricSuite(None, Evaluation.from_config(evaluation, ["pointing_game"]), None, None)
    metric = suite.masked["pointing_game"]
    assert suite.plain is None and (metric.tolerance, metric.difficult_area) == (0.0, 0.5)
    maps = one_hot([(1, 1), (1, 1), (1, 1)], 8)
    masks = [None, boxes([(0, 8, 0, 8)], 8)[0], boxes([(0, 2, 2, 4)], 8)[0]]  # no mask; whole image; 1 px away
    values = suite.per_image(torch.zeros(3, 3, 8, 8), maps, torch.zeros(3, dtype=torch.long), masks)
    assert values == [
        {},
        {"pointing/all": 1.0, "pointing/difficult": None},
        {"pointing/all": 0.0, "pointing/difficult": 0.0},
    ]
    records = {"m": [{"id": str(i), "status": "ok", "metrics": v} for i, v in enumerate(values)]}
    md = write_tables(tmp_path, records, ["pointing_game"])["pointing_game"].splitlines()
    assert md[0] == "| method | images | pointing/all ↑ | pointing/difficult ↑ |"
    assert md[2] == "| m | 3 | 0.5000 [0.0000, 1.0000] | 0.0000 |"  # two hits/misses: an interval; one: none


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"tolerance": -1}, "evaluation.params.pointing_game.tolerance"),
        ({"tolerance": "15"}, "evaluation.params.pointing_game.tolerance"),
        ({"tolerance": True}, "evaluation.params.pointing_game.tolerance"),
        ({"difficult_area": 1.5}, "evaluation.params.pointing_game.difficult_area"),
        ({"difficult_area": -0.1}, "evaluation.params.pointing_game.difficult_area"),
    ],
)
def test_bad_settings_name_the_setting(settings, message):
    with pytest.raises(ValueError, match=message):
        MetricSuite(
            None,
            Evaluation.from_config(
                SimpleNamespace(batch_size=4, params={"pointing_game": settings}), ["pointing_game"]
            ),
            None,
            None,
        )


def test_the_mask_is_required():
    with pytest.raises(ValueError, match="needs a ground-truth mask"):
        PointingGame().update(torch.zeros(1, 3, 4, 4), torch.zeros(1, 1, 4, 4), torch.zeros(1, dtype=torch.long))
