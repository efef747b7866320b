"""Re-scoring saved maps (``python -m hdm_lightning.rescore``) and comparisons that grow by more methods."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from hdm_lightning.cli import explain_main
from hdm_lightning.rescore import main as rescore_main

REPO = Path(__file__).resolve().parents[2]


def base(out: Path, methods: str = "[{name: gradient}, {name: random}]") -> list[str]:
    return [
        "--config",
        str(REPO / "configs" / "tiny.yaml"),
        "data.kind=photos",
        "data.photos=[chelsea,coffee,rocket]",
        f"methods={methods}",
        "evaluation.metrics=[drop_increase,deletion_insertion]",
        "evaluation.steps=10",
        "evaluation.ci_resamples=500",
        f"output.dir={out}",
        "wandb.mode=disabled",
    ]


def files(folder: Path, pattern: str) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob(pattern))}


def times(folder: Path, pattern: str) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob(pattern))}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rescore") / "out"
    assert explain_main(base(out)) == 0
    return out


def test_rescore_with_the_runs_own_settings_reproduces_its_tables_and_records(run, capsys):
    before = {**files(run, "tables/*"), **files(run, "records/*.json"), **files(run, "manifest.csv")}
    maps = times(run, "maps/*.pt")
    assert rescore_main([str(run), "--all"]) == 0
    assert "re-scored 6 maps with drop_increase, deletion_insertion" in capsys.readouterr().out
    after = {**files(run, "tables/*"), **files(run, "records/*.json"), **files(run, "manifest.csv")}
    assert after.keys() == before.keys() and len(after) > 10
    assert after == before  # byte for byte: the metrics computed again from the saved maps
    assert times(run, "maps/*.pt") == maps


def test_rescore_with_new_settings_writes_new_tables_and_keeps_the_maps(run, tmp_path, capsys):
    maps = {**files(run, "maps/*.pt"), **files(run, "overlays/*.png")}
    old_del = json.loads((run / "methods/gradient/records/chelsea.json").read_text())["metrics"]["deletion"]
    assert rescore_main([str(run), "evaluation.drop_percents=[50]", "evaluation.reference=random"]) == 0
    assert "with drop_increase;" in capsys.readouterr().out  # deletion_insertion's settings did not change
    rec = json.loads((run / "methods/gradient/records/chelsea.json").read_text())["metrics"]
    assert "drop/50" in rec and "drop/70" not in rec and rec["deletion"] == old_del
    md = (run / "tables" / "drop_increase.md").read_text()
    assert md.startswith("| method | images | drop/50 ↓ | increase/50 ↑ |")
    assert "against `random`" in md and "| random | 3 | " in md
    with open(run / "tables" / "drop_increase.csv") as f:
        head = next(csv.reader(f))
    assert head[:6] == ["method", "images", "drop/50", "drop/50_ci_low", "drop/50_ci_high", "drop/50_p"]
    assert {**files(run, "maps/*.pt"), **files(run, "overlays/*.png")} == maps
    saved = (run / "config.yaml").read_text()
    assert "- 50" in saved and "reference: random" in saved
    # the folder stays one consistent run: explain.py with the new settings resumes it (nothing to do)
    assert explain_main([*base(run), "evaluation.drop_percents=[50]", "evaluation.reference=random"]) == 0
    assert "0 images explained, 3 skipped" in capsys.readouterr().out


def test_a_run_scored_in_raster_order_is_rescored_in_the_shuffled_order(tmp_path, capsys):
    copy = tmp_path / "out"
    assert explain_main(base(copy)) == 0
    saved = (copy / "config.yaml").read_text()
    assert "  ties: shuffled\n" in saved
    (copy / "config.yaml").write_text(saved.replace("  ties: shuffled\n", ""))  # made before evaluation.ties
    assert explain_main(base(copy)) == 2  # not resumed under another tie order
    assert "pass evaluation.ties=raster" in capsys.readouterr().err
    assert rescore_main([str(copy)]) == 0  # both rank families scored again, in the new default order
    assert "with drop_increase, deletion_insertion;" in capsys.readouterr().out
    assert "  ties: shuffled\n" in (copy / "config.yaml").read_text()
    assert explain_main(base(copy)) == 0


def test_a_deleted_map_is_named_with_the_way_to_get_it_back(run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "methods" / "random" / "maps" / "coffee.pt").unlink()
    assert rescore_main([str(copy), "--all"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 1 finished image(s) have no saved map") and "'coffee'" in err, err
    assert "rerun explain.py" in err and "Traceback" not in err


def test_sigterm_stops_a_rescore_with_143(run, monkeypatch, capsys):
    import os
    import signal

    import hdm_lightning.rescore as rescore_module

    def preempted(*args):
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(rescore_module, "_score", preempted)
    assert rescore_main([str(run), "--all"]) == 143
    err = capsys.readouterr().err
    assert "error: stopped by SIGTERM before the rescore finished. Rerun the same command" in err, err


def test_a_mask_metric_on_a_run_without_masks_is_refused(run, capsys):
    assert rescore_main([str(run), "evaluation.metrics=[pointing_game]"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: evaluation: metrics pointing_game need a ground-truth mask per image"), err


def test_rescore_refuses_what_would_change_the_maps(run, tmp_path, capsys):
    assert rescore_main([str(run), "batch_size=1"]) == 2
    err = capsys.readouterr().err
    assert "would change the maps" in err and "rerun explain.py" in err
    assert rescore_main([str(tmp_path / "nowhere")]) == 2
    assert "is not a run folder (no config.yaml)" in capsys.readouterr().err
    assert rescore_main([str(run), "evaluation.metrics=[no_such_family]"]) == 2
    assert "no_such_family" in capsys.readouterr().err


def test_a_comparison_grows_by_more_methods_and_computes_only_the_new_ones(tmp_path, capsys):
    out = tmp_path / "out"
    assert explain_main(base(out)) == 0
    old = times(out, "methods/*/records/*.json")
    more = "[{name: gradient}, {name: gradcam}, {name: random}]"
    assert explain_main(base(out, more)) == 0
    assert "3 images explained" in capsys.readouterr().out
    assert {k: v for k, v in times(out, "methods/*/records/*.json").items() if k in old} == old
    assert len(list((out / "methods" / "gradcam" / "records").glob("*.json"))) == 3
    rows = (out / "tables" / "deletion_insertion.md").read_text().splitlines()
    assert [r.split(" | ")[0] for r in rows[2:5]] == ["| gradient", "| gradcam", "| random"]
    changed = "[{name: gradient}, {name: random, params: {seed: 1}}, {name: gradcam}, {name: eigencam}]"
    assert explain_main(base(out, changed)) == 2
    assert "different config (methods" in capsys.readouterr().err


def test_bad_table_settings_stop_the_run_before_any_image(tmp_path, capsys):
    out = tmp_path / "out"
    assert explain_main([*base(out), "evaluation.reference=hdm"]) == 2
    err = capsys.readouterr().err
    assert "evaluation.reference='hdm' is not a method of this run: use one of ['gradient', 'random']" in err
    assert explain_main([*base(out), "evaluation.ci_level=95"]) == 2
    assert "evaluation.ci_level must be in (0, 1)" in capsys.readouterr().err
    assert not (out / "methods").exists()
