"""``python -m benchmarks.stability_frontier`` places every point on the frontier, subsets of restarts included."""

from __future__ import annotations

import json

import pytest
import torch

import hdm_lightning as hl
from benchmarks import stability_frontier as sf
from tests.toy_models import tiny_cnn

POINTS = """
photos: [chelsea, rocket]
eps: 1.0e-6
classifier: small_cnn
size: 32
points:
  - label: dm_r4
    method: dm
    preset: configs/methods/hdm_fast.yaml
    set: {restarts: 4, schedule.params.epochs: 2, schedule.params.sizes: [2, 3]}
    subsets: [1, 2]
  - label: gradcam
    method: gradcam
"""


@pytest.mark.slow
def test_every_point_and_subset_is_measured(tmp_path, capsys):
    points, out, png = tmp_path / "points.yaml", tmp_path / "frontier.json", tmp_path / "frontier.png"
    points.write_text(POINTS)
    assert sf.main(["--points", str(points), "--json", str(out), "--plot", str(png)]) == 0
    rows = {r["label"]: r for r in json.loads(out.read_text())["rows"]}
    assert sorted(rows) == ["dm_r4", "dm_r4@1", "dm_r4@2", "gradcam"]
    assert rows["dm_r4@2"]["passes_per_image"] == rows["dm_r4"]["passes_per_image"] / 2
    assert rows["dm_r4@1"]["restarts"] == 1 and rows["dm_r4"]["restarts"] == 4
    for r in rows.values():
        assert sorted(r["per_photo"]) == ["chelsea", "rocket"]
        assert r["worst"]["pearson"] == min(p["pearson"] for p in r["per_photo"].values())
        assert {"deletion", "insertion", "road_gap"} <= set(r["quality"])
    assert rows["gradcam"]["worst"]["pearson"] > 0.999  # smooth in its input: 1e-6 noise does not move it
    assert "benchmark" in rows["dm_r4"]["per_vector"]["stage1"]
    assert png.stat().st_size > 0 and "| dm_r4@1 |" in capsys.readouterr().out
    # --merge keeps the other points' rows; --plot-only measures nothing.
    assert sf.main(["--points", str(points), "--only", "gradcam", "--json", str(out), "--merge"]) == 0
    assert len(json.loads(out.read_text())["rows"]) == 4
    assert sf.main(["--plot-only", "--json", str(out), "--plot", str(png)]) == 0


def test_bad_points_are_refused(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(POINTS.replace("subsets: [1, 2]", "subsets: [8]"))
    assert sf.main(["--points", str(bad)]) == 2
    assert "subsets need a dm/mdm point with restarts >= every subset" in capsys.readouterr().err
    assert sf.main(["--points", str(tmp_path / "missing.yaml")]) == 2
    assert sf.main(["--points", str(bad), "--only", "nope"]) == 2


def test_the_first_n_of_n_restarts_are_n_restarts():
    model = tiny_cnn().eval()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    cfg = {"schedule": {"params": {"sizes": [2, 3], "factors": [2], "epochs": 4, "lr": 0.05}}, "restart_noise": 0.05}
    four = hl.explain(model, x, "dm", config={**cfg, "restarts": 4})
    two = hl.explain(model, x, "dm", config={**cfg, "restarts": 2})
    torch.testing.assert_close(four.stages[0].runs[:, :2].mean(1), two.saliency, rtol=0, atol=1e-12)
