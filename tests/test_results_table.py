"""benchmarks/results_table.py: docs/results.md's summary tables come from a run's tables/*.csv."""

from __future__ import annotations

import pytest

from benchmarks.amortised_curve import main
from benchmarks.results_table import summary_table
from benchmarks.segmentation_curves import main as segmentation_curves_main
from benchmarks.segmentation_curves import read_curves
from hdm_lightning.evaluation import write_tables


def test_the_summary_shows_interval_and_a_mark_where_the_paired_test_is_below_alpha(tmp_path):
    a = [0.1 * i for i in range(10)]
    records = {
        "ref": [
            {
                "id": str(i),
                "status": "ok",
                "metrics": {"deletion": v},
                "seconds_per_image": 2.0,
                "forward_per_image": 3.0,
            }
            for i, v in enumerate(a)
        ],
        "same": [
            {
                "id": str(i),
                "status": "ok",
                "metrics": {"deletion": v + (0.01 if i % 2 else -0.01)},
                "seconds_per_image": 1.0,
                "forward_per_image": 1.5,
            }
            for i, v in enumerate(a)
        ],
        "worse": [
            {
                "id": str(i),
                "status": "ok",
                "metrics": {"deletion": v + 0.5},
                "seconds_per_image": 1.0,
                "forward_per_image": 1.0,
            }
            for i, v in enumerate(a)
        ],
    }
    write_tables(tmp_path, records, ["deletion_insertion"])
    lines = summary_table(tmp_path, ["deletion", "forward_per_image"], ["del", "passes"]).splitlines()
    assert lines[0] == "| method | images | del | passes |"
    assert lines[2].startswith("| ref | 10 | 0.450 [") and not lines[2].endswith("* | 3 |")
    assert lines[3].startswith("| same | 10 | 0.450 [") and "*" not in lines[3] and lines[3].endswith("| 1.500 |")
    assert lines[4].startswith("| worse | 10 | 0.950 [") and lines[4].endswith("* | 1 |")  # p = 0.002
    with pytest.raises(SystemExit, match="in no table"):
        summary_table(tmp_path, ["nope"])


def test_the_amortised_curve_orders_refinement_steps_and_draws_the_reference(tmp_path, capsys):
    def rows(shift, back):
        return [
            {"id": str(i), "status": "ok", "metrics": {"insertion": 0.1 * i + shift}, "backward_per_image": back}
            for i in range(6)
        ]

    records = {"hdm": rows(0.2, 760), "amortised": rows(0.0, 0), "hdm_refine_10": rows(0.15, 240)}
    records["hdm_refine_2"] = rows(0.1, 64)
    write_tables(tmp_path, records, ["deletion_insertion"])
    assert main([str(tmp_path), "--metrics", "insertion", "--out", str(tmp_path / "c.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(" | ")[1] for ln in lines[2:6]] == ["amortised", "hdm_refine_2", "hdm_refine_10", "hdm"]
    assert lines[3].startswith("| 2 | hdm_refine_2 | 64 | 0.350 [") and lines[5].startswith("| ref | hdm | 760 |")
    assert (tmp_path / "c.png").stat().st_size > 1000
    # a second series; a series with its own k = 0 does not borrow the prediction's row
    records["hdm_refine_0"], records["amortised_refine_3"] = rows(0.05, 20), rows(0.02, 33)
    write_tables(tmp_path, records, ["deletion_insertion"])
    args = [str(tmp_path), "--metrics", "insertion", "--prefix", "hdm_refine_", "amortised_refine_"]
    assert main([*args, "--out", str(tmp_path / "d.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(" | ")[1] for ln in lines[2:8]] == [
        "hdm_refine_0",
        "hdm_refine_2",
        "hdm_refine_10",
        "amortised",
        "amortised_refine_3",
        "hdm",
    ]


def test_segmentation_curves_are_read_per_percentile_and_drawn(tmp_path):
    (tmp_path / "tables").mkdir()
    head = ["method", "images"]
    for score in ("dice", "iou", "ppv", "sensitivity"):
        for q in (70, 90):
            head += [f"{score}/{q}", f"{score}/{q}_ci_low", f"{score}/{q}_ci_high", f"{score}/{q}_p"]
    rows = [["a", "2", *["0.5", "0.4", "0.6", ""] * 8], ["b", "2", *["0.25", "0.1", "0.3", "0.5"] * 8]]
    (tmp_path / "tables" / "segmentation.csv").write_text("\n".join(",".join(r) for r in [head, *rows]) + "\n")
    curves = read_curves(tmp_path)
    assert curves["b"]["iou"] == [(70, 0.25, 0.1, 0.3), (90, 0.25, 0.1, 0.3)]
    assert segmentation_curves_main([str(tmp_path), "--plot", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 1000
    assert segmentation_curves_main([str(tmp_path / "nothing"), "--plot", str(tmp_path / "d.png")]) == 2
