"""``python -m benchmarks.benchmark`` runs end to end on a tiny model and reports what it promises."""

from __future__ import annotations

import json

import pytest

from benchmarks import benchmark
from hdm_lightning.schedules import DMSchedule, MDMSchedule


@pytest.mark.slow
def test_benchmark_reports_equivalence_overhead_and_throughput(tmp_path, capsys):
    path = tmp_path / "bench.json"
    argv = ["--model", "tiny", "--size", "32", "--batch", "2", "--steps", "1", "--overhead-steps", "2"]
    assert benchmark.main([*argv, "--repeats", "1", "--json", str(path)]) == 0
    rep = json.loads(path.read_text())
    # (a) batched engine == one-at-a-time reference (float64: to round-off); 2 images x 9 vectors x 3 epochs.
    a = rep["a"]
    assert a["passes_per_image"] == 27 and a["reference_s"] > 0 and a["engine_s"] > 0
    assert a["float64"]["max_abs_diff_vectors"] < 1e-10 and a["float64"]["max_abs_diff_saliency"] < 1e-10
    assert a["float64"]["binary_agreement"] == 1.0
    # (b) Lightning and the bare loop compute the same masks.
    assert [s["stage"] for s in rep["b"]["stages"]][0] == "benchmark"
    assert all(s["max_abs_diff_masks"] == 0.0 for s in rep["b"]["stages"])
    # (c) paper presets: pass counts from the schedules; S = 3 DM runs + 400 mixing steps.
    hdm, mdm = rep["c"]["hdm"], rep["c"]["mdm"]
    assert hdm["passes_per_image"] == 3 * DMSchedule().passes_per_image(32, 32) + 400
    assert mdm["passes_per_image"] == MDMSchedule().passes_per_image(32, 32) == 27 * 2000
    assert hdm["s_per_image"] > 0 and hdm["sample_passes_per_s"] > 0
    # peak memory per fit (Linux: the process's RSS high-water mark, at least the model and torch itself)
    assert all(r["peak_mib"] > 50 for r in [*hdm["dm_stages"], hdm["mixing"], *mdm["stages"]])
    text = capsys.readouterr().out
    assert "(a) batched engine vs one-at-a-time reference" in text and "EXTRAPOLATED" in text
    assert "peak MiB: process RSS high-water mark" in text


def test_benchmark_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--model", "alexnet"])
    assert "invalid choice: 'alexnet'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--batch", "0"])
    assert "must be a positive integer" in capsys.readouterr().err
