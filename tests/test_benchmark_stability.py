"""``python -m benchmarks.benchmark_stability`` runs end to end on a tiny setup and reports every condition."""

from __future__ import annotations

import json
import subprocess
from types import SimpleNamespace

import pytest

from benchmarks import benchmark_stability as bs
from hdm_lightning.metrics.stability import agreement_keys

TINY = ["--classifier", "small_cnn", "--size", "32", "--photos", "chelsea", "coffee"]
# One DM stage of one 3x3 vector, 2 steps: seconds, and still the whole DM path.
TINY_DM = ["dm:schedule.params.epochs=2", "dm:schedule.params.sizes=[3]", "dm:schedule.params.factors=[]"]
KEYS = agreement_keys((0.05, 0.2))


@pytest.mark.slow
def test_noise_and_batch_conditions_for_every_method(tmp_path, capsys):
    path = tmp_path / "stability.json"
    argv = [*TINY, "--methods", "gradcam", "dm", "--set", *TINY_DM, "--parts", "noise", "batch", "--json", str(path)]
    assert bs.main(argv) == 0
    rep = json.loads(path.read_text())
    photos = ["chelsea", "coffee"]
    for method in ("gradcam", "dm"):
        conditions = rep["methods"][method]["conditions"]
        assert sorted(conditions) == ["batch 3", "noise 1e-06"]
        for c in conditions.values():
            assert sorted(c["per_photo"]) == photos
            assert all(sorted(p) == sorted(KEYS) for p in c["per_photo"].values())
            assert all(-1.0 <= c["min"][k] <= c["mean"][k] <= 1.0 for k in KEYS)
        assert rep["methods"][method]["seconds"]["total"] > 0
    # Grad-CAM is a smooth function of the input: noise far below one grey level does not move it.
    assert rep["methods"]["gradcam"]["conditions"]["noise 1e-06"]["min"]["pearson"] > 0.999
    # The settings that ran: dm took hdm_fast's DM keys (no stages/mixing) with the --set overrides on top.
    dm = rep["settings"]["methods"]["dm"]
    assert dm["preset"].endswith("hdm_fast.yaml") and dm["dropped"] == ["mixing", "stages"]
    params = dm["params"]["config"]["schedule"]["params"]
    assert params["epochs"] == 2 and params["sizes"] == [3] and params["lr"] == 0.05
    assert "stages" not in dm["params"]["config"]
    assert rep["argv"] == argv and rep["command"].startswith("python -m benchmarks.benchmark_stability")
    assert set(rep["photos"]) == set(photos) and rep["photos"]["chelsea"]["noisy_prediction"]["1e-06"] >= 0
    out, err = capsys.readouterr()
    assert "| method | condition | pearson | spearman | iou5 | iou20 |" in out
    assert "| gradcam | noise 1e-06 |" in out and "| dm | batch 3 |" in out and "(min " in out
    assert "| method | alone s | noise s | batch s | total s |" in out
    # Two photos fill a batch of three with a flipped copy.
    assert "batch [chelsea, coffee, chelsea (flipped)]" in err


@pytest.mark.slow
def test_processes_part_compares_the_saved_maps(tmp_path, monkeypatch):
    """The explain.py path (command, settings, reading the maps) with explain.py run in this process.

    Two real explain.py processes take a minute to start on two cores, and the 2-process run itself is tested in
    tests/test_distributed.py; here both runs are one process (trainer.devices=2 is swapped for 1).
    """
    from hdm_lightning.cli import explain_main

    commands = []

    def run_in_process(cmd, cwd=None, env=None, capture_output=False, text=False):
        commands.append(cmd)
        args = ["trainer.devices=1" if a == "trainer.devices=2" else a for a in cmd[2:]]
        return SimpleNamespace(returncode=explain_main(args), stdout="", stderr="")

    monkeypatch.setattr(subprocess, "run", run_in_process)
    path = tmp_path / "stability.json"
    argv = [*TINY, "--methods", "gradcam", "dm", "--set", *TINY_DM, "--parts", "processes"]
    assert bs.main([*argv, "--work-dir", str(tmp_path / "work"), "--json", str(path)]) == 0
    rep = json.loads(path.read_text())
    assert len(commands) == 4 and all("batch_size=1" in c and "wandb.mode=disabled" in c for c in commands)
    assert sum("trainer.devices=2" in c and "device=cpu" in c for c in commands) == 2
    for method in ("gradcam", "dm"):
        res = rep["methods"][method]
        assert not res["errors"]
        assert sorted(res["conditions"]) == ["explain.py (1) vs API", "processes 1 vs 2"]
        assert sorted(res["processes"]) == ["1", "2"]
        # Same settings, same process: explain.py's saved maps are the API's maps.
        for c in res["conditions"].values():
            assert c["min"]["pearson"] > 0.999999 and c["min"]["iou20"] == 1.0
    assert (tmp_path / "work" / "dm" / "devices2" / "maps" / "coffee.pt").is_file()
    assert (tmp_path / "work" / "gradcam" / "devices1" / "methods" / "gradcam" / "maps" / "chelsea.pt").is_file()


def test_a_failed_explain_run_is_reported_and_the_rest_kept(tmp_path, monkeypatch, capsys):
    def failing_run(cmd, **kwargs):
        return SimpleNamespace(returncode=2, stdout="", stderr="error: no such thing")

    monkeypatch.setattr(subprocess, "run", failing_run)
    path = tmp_path / "stability.json"
    argv = [*TINY[:4], "--photos", "chelsea", "--methods", "gradcam", "--parts", "noise", "processes"]
    assert bs.main([*argv, "--json", str(path)]) == 1
    res = json.loads(path.read_text())["methods"]["gradcam"]
    assert "error: no such thing" in res["errors"]["processes"] and "trainer.devices=1" in res["errors"]["processes"]
    assert res["conditions"]["noise 1e-06"]["min"]["pearson"] > 0.999
    out = capsys.readouterr().out
    assert "| gradcam | processes | FAILED: explain.py with trainer.devices=1 failed (exit 2)" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--methods", "gradcam", "--set", "gradcam-target_layer=x"], "bad --set 'gradcam-target_layer=x'"),
        (["--methods", "gradcam", "--set", "gradcam:target_layer"], "malformed override 'target_layer'"),
        (["--methods", "gradcam", "--set", "dm:tau=0.3"], "'dm' is not in --methods"),
        (["--methods", "dm", "--set", "dm:schedule.params.epochz=2"], "epochz"),
        (["--methods", "dm", "--set", "dm:tau=high"], "tau"),
        (["--methods", "gradcam", "--set", "gradcam:no_such_param=1"], "no_such_param"),
        (["--methods", "gradcm"], "unknown method(s) ['gradcm']"),
        (["--methods", "dm", "dm"], "more than once"),
        (["--methods", "gradcam", "--preset", "gradcam=configs/methods/hdm_fast.yaml"], "presets are for"),
        (["--methods", "dm", "--preset", "dm=configs/methods/mdm_fast.yaml"], "a preset for method 'mdm'"),
        (["--methods", "dm", "--preset", "dm=no/such.yaml"], "not found"),
        (["--methods", "gradcam", "--photos", "chelsea", "no_such_photo"], "no_such_photo"),
    ],
)
def test_bad_arguments_are_refused_with_a_clear_message(argv, message, capsys):
    assert bs.main(["--classifier", "small_cnn", "--size", "32", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err


def test_batch_groups_pad_short_groups_with_their_own_photos():
    assert bs.batch_groups(3, 3) == [[0, 1, 2]]
    assert bs.batch_groups(1, 3) == [[0, 0, 0]]
    assert bs.batch_groups(5, 3) == [[0, 1, 2], [3, 4, 3]]
