"""explain.py end to end, in-process, on tiny configs: outputs, W&B, resume, and every bad input's message."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from hdm_lightning.cli import explain_main
from hdm_lightning.config import load_run_config
from hdm_lightning.explainers.modules import MaskStageModule, MixingModule
from hdm_lightning.models import Preprocess, build_backbone, save_classifier_checkpoint
from tests.fixtures import (
    make_cub_tree,
    make_folder_tree,
    write_16bit_png,
    write_corrupt_image,
    write_grey_jpeg,
    write_rgba_png,
)

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")
OUTPUT_KINDS = ("maps", "overlays", "binary", "stages", "records")


@pytest.fixture
def folder(tmp_path):
    return make_folder_tree(tmp_path / "data", classes=("cat", "dog"), per_class=3)


def run(*overrides: str) -> int:
    return explain_main(["--config", TINY, *overrides])


def files(out: Path) -> dict[str, bytes]:
    """Every output file's bytes (the W&B folder and run-specific files aside)."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.parts[len(out.parts)] in OUTPUT_KINDS
    }


def manifest(out: Path) -> list[dict]:
    with open(out / "manifest.csv") as f:
        return list(csv.DictReader(f))


def same_results(a: Path, b: Path) -> None:
    """Maps equal exactly; pictures equal byte for byte; manifests equal except the timings."""
    fa, fb = files(a), files(b)
    assert fa.keys() == fb.keys()
    for name in fa:
        if name.startswith("maps/"):
            ta = torch.load(a / name, weights_only=True)
            tb = torch.load(b / name, weights_only=True)
            assert torch.equal(ta["saliency"], tb["saliency"]), name
            assert all(
                torch.equal(x["saliency"], y["saliency"]) for x, y in zip(ta["stages"], tb["stages"], strict=True)
            )
            assert torch.equal(ta["weights"], tb["weights"])
        elif name.endswith(".png"):
            assert fa[name] == fb[name], name
    spent = ("seconds", "forward_per_image", "backward_per_image")  # what this invocation spent, not results

    def strip(rows):
        return [{k: v for k, v in r.items() if k not in spent} for r in rows]

    assert strip(manifest(a)) == strip(manifest(b))


@pytest.fixture
def reference(folder, tmp_path):
    out = tmp_path / "reference"
    assert run(f"data.root={folder}", f"output.dir={out}", "wandb.mode=disabled") == 0
    return out


# ------------------------------------------------------------------------------------------- outputs


@pytest.mark.slow
def test_outputs_exist_load_and_reach_wandb(folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(f"data.root={folder}", f"output.dir={out}", f"wandb.dir={tmp_path / 'wb'}") == 0
    assert "6 images explained, 0 skipped (done before), 0 failed" in capsys.readouterr().out
    rows = manifest(out)
    assert [r["id"] for r in rows] == [f"{c}/{c}_{j}.jpg" for c in ("cat", "dog") for j in range(3)]
    assert {r["status"] for r in rows} == {"ok"} and {r["label_name"] for r in rows} == {"cat", "dog"}
    assert all(int(r["passes"]) == 2 * 9 * 3 + 3 for r in rows)  # S=2 DM runs of 9 vectors x 3 epochs + mixing
    for r in rows:
        maps = torch.load(out / r["map"], weights_only=True)
        sal = maps["saliency"]
        assert sal.shape == (1, 32, 32) and float(sal.min()) >= 0 and float(sal.max()) <= 1
        assert len(maps["stages"]) == 2 and maps["weights"].shape == (2,) and maps["target"] == int(r["target"])
        assert {"dm1/benchmark", "dm2/level1", "mix"} <= set(maps["loss"])
        for kind in ("overlay", "binary", "stages"):
            assert (out / r[kind]).is_file() and r[kind].endswith(".png")
    assert r["map"] == "maps/dog/dog_2.pt"  # sub-folders kept, image extension dropped
    saved = OmegaConf.load(out / "config.yaml")
    assert saved.explainer.stages == 2 and saved.data.root == str(folder)
    assert not list(out.rglob("*.tmp")) and not (out / ".work").exists()
    # One offline W&B run, holding the overlays and stage strips, the stage-prefixed losses and the table.
    (wb_run,) = (tmp_path / "wb" / "wandb").glob("offline-run-*")
    media = {p.name.split("_")[0] for p in (wb_run / "files" / "media").rglob("*.png")}
    assert {"overlays", "stages"} <= media
    assert list((wb_run / "files" / "media" / "table").glob("summary_*.table.json"))
    data = (next(wb_run.glob("*.wandb"))).read_bytes()
    assert b"dm1/benchmark/loss" in data and b"mix/loss" in data


@pytest.mark.slow
def test_rerun_skips_finished_images(reference, folder, capsys):
    before = {p: p.stat().st_mtime_ns for p in reference.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert run(f"data.root={folder}", f"output.dir={reference}", "wandb.mode=disabled") == 0
    assert "0 images explained, 6 skipped (done before), 0 failed" in capsys.readouterr().out
    after = {p: p.stat().st_mtime_ns for p in before}
    changed = [p.name for p in before if after[p] != before[p]]
    assert set(changed) <= {"config.yaml", "manifest.csv"}  # rewritten with the same content


# ------------------------------------------------------------------------------------------- resume


class CrashError(RuntimeError):
    pass


@pytest.mark.slow
@pytest.mark.parametrize(
    "where",
    ["inside-first-batch", "inside-second-batch", "inside-mix", "between-batches", "between-images"],
)
def test_interrupted_run_resumes_to_identical_outputs(reference, folder, tmp_path, monkeypatch, where):
    out = tmp_path / "interrupted"
    calls = {"n": 0}
    # Each batch trains 2 DM runs x (benchmark, level1, level2) = 6 fits of 3 steps, then a 3-step mix.
    fit_steps = {"inside-first-batch": 8, "inside-second-batch": 18 + 7}
    if where in fit_steps:
        real = MaskStageModule.training_step

        def training_step(self, *args):
            calls["n"] += 1
            if calls["n"] == fit_steps[where]:
                raise CrashError("killed")
            return real(self, *args)

        monkeypatch.setattr(MaskStageModule, "training_step", training_step)
    elif where == "inside-mix":
        real = MixingModule.training_step

        def training_step(self, *args):
            if self.steps_done == 2:
                raise CrashError("killed")
            return real(self, *args)

        monkeypatch.setattr(MixingModule, "training_step", training_step)
    else:
        import hdm_lightning.run.writer as writer

        real = writer.atomic_write_json
        stop_at = 2 if where == "between-batches" else 3  # after the 1st batch / halfway through the 2nd

        def write(rec, path):
            real(rec, path)
            calls["n"] += 1
            if calls["n"] == stop_at:
                raise CrashError("killed")

        monkeypatch.setattr(writer, "atomic_write_json", write)
    with pytest.raises(CrashError):
        run(f"data.root={folder}", f"output.dir={out}", "wandb.mode=disabled")
    monkeypatch.undo()
    if where.startswith("inside"):
        assert list((out / ".work").rglob("*.pt"))  # the batch in flight left its work
    assert not list(out.rglob("*.tmp"))
    assert run(f"data.root={folder}", f"output.dir={out}", "wandb.mode=disabled") == 0
    same_results(out, reference)
    assert not (out / ".work").exists()


@pytest.mark.slow
def test_killed_process_resumes_to_identical_outputs(reference, folder, tmp_path):
    """A real SIGKILL of `python explain.py` in the middle of a stage, then a rerun."""
    out = tmp_path / "killed"
    args = [sys.executable, str(REPO / "explain.py"), "--config", TINY, f"data.root={folder}", f"output.dir={out}"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.Popen([*args, "wandb.mode=disabled"], cwd=tmp_path, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if list((out / ".work").glob("batch-000001/*.pt")):  # mid-way through the second batch
                break
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert run(f"data.root={folder}", f"output.dir={out}", "wandb.mode=disabled") == 0
    same_results(out, reference)


def _stop_mid_second_batch(out: Path, args: list[str], signum: int, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if list((out / ".work").glob("batch-000001/*.pt")):  # mid-way through the second batch
            break
        time.sleep(0.02)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


@pytest.mark.slow
def test_stopped_process_exits_non_zero_and_resumes_to_identical_outputs(reference, folder, tmp_path):
    """SIGTERM (a scheduler's preemption) and SIGINT stop `python explain.py` with a non-zero status and a message."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        out = tmp_path / signum.name
        args = [sys.executable, str(REPO / "explain.py"), "--config", TINY, f"data.root={folder}", f"output.dir={out}"]
        done = _stop_mid_second_batch(out, [*args, "wandb.mode=disabled"], signum, tmp_path)
        assert done.returncode == 128 + signum, (done.returncode, done.stderr)
        assert "Traceback" not in done.stderr and done.stderr.count("error: ") == 1, done.stderr
        assert f"error: stopped by {signum.name}" in done.stderr and "2 images explained by this run" in done.stderr
        assert "Rerun the same command to resume" in done.stderr and "images explained" not in done.stdout
        assert run(f"data.root={folder}", f"output.dir={out}", "wandb.mode=disabled") == 0
        same_results(out, reference)


# ------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg, settings = load_run_config(path, [])
    assert cfg.method in ("hdm", "dm", "mdm") and settings.engine is not None


def test_config_errors_name_the_key_and_the_fix(tmp_path, capsys):
    cases = [
        (["nonsense=1"], "bad config key 'nonsense'"),
        (["batch_size=two"], "bad config key 'batch_size'"),
        (["explainer.schedule.params.sizez=[3]"], "sizez"),
        (["explainer.stagez=2"], "bad config key 'explainer.stagez'"),
        (["data.root"], "malformed override 'data.root': write key=value"),
        (["wandb.mode=cloud"], "wandb.mode must be one of"),
        (["method=gradcam"], "unknown method 'gradcam'"),
        (["imports=[no_such_plugin_module]"], "cannot import 'no_such_plugin_module'"),
    ]
    for overrides, message in cases:
        assert run(f"output.dir={tmp_path / 'o'}", *overrides) == 2, overrides
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err, (overrides, err)
    assert explain_main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file" in capsys.readouterr().err


def test_data_and_classifier_errors(tmp_path, capsys):
    cub = make_cub_tree(tmp_path / "cub", classes=2, per_class=2)
    cub_args = ["data.kind=cub", f"data.root={cub}", f"output.dir={tmp_path / 'o'}", "wandb.mode=disabled"]
    # a missing dataset folder
    assert run(f"data.root={tmp_path / 'nowhere'}", f"output.dir={tmp_path / 'o'}") == 2
    assert "nowhere" in capsys.readouterr().err
    # a CUB tree without one of its metadata files
    (cub / "bounding_boxes.txt").rename(cub / "bb.txt")
    assert run(*cub_args) == 2
    assert "bounding_boxes.txt" in capsys.readouterr().err
    (cub / "bb.txt").rename(cub / "bounding_boxes.txt")
    # a checkpoint whose class count differs from the dataset's (2 CUB classes here)
    ckpt = tmp_path / "three.pt"
    prep = Preprocess(size=32, resize=32, interpolation="bilinear")
    save_classifier_checkpoint(ckpt, build_backbone("resnet18", 3), "resnet18", 3, ["a", "b", "c"], prep)
    assert run(*cub_args, f"classifier.checkpoint={ckpt}", "classifier.num_classes=null") == 2
    err = capsys.readouterr().err
    assert "3 classes" in err and "2" in err and "train_classifier.py" in err
    # explaining the labels of photos that have none
    assert run("data.kind=photos", "data.photos=[coffee]", "target=label", f"output.dir={tmp_path / 'p'}") == 2
    assert "target=label needs a label" in capsys.readouterr().err
    # an unknown photo, an unknown backbone
    assert run("data.kind=photos", "data.photos=[unicorn]", f"output.dir={tmp_path / 'p'}") == 2
    assert "unicorn" in capsys.readouterr().err
    assert run(f"data.root={cub}", "classifier.name=resnet51", f"output.dir={tmp_path / 'p'}") == 2
    assert "resnet50" in capsys.readouterr().err  # a close match is suggested


@pytest.mark.slow
def test_bad_images_are_recorded_or_converted(tmp_path, capsys):
    root = make_folder_tree(tmp_path / "data", classes=None, per_class=3)
    write_corrupt_image(root / "broken.jpg")
    write_16bit_png(root / "deep.png", size=(40, 30))
    write_rgba_png(root / "alpha.png", size=(40, 30))
    write_grey_jpeg(root / "grey.jpg", size=(40, 30))
    out = tmp_path / "run"
    assert run(f"data.root={root}", f"output.dir={out}", "wandb.mode=disabled") == 0
    assert "6 images explained, 0 skipped (done before), 1 failed" in capsys.readouterr().out
    rows = {r["id"]: r for r in manifest(out)}
    assert rows["broken.jpg"]["status"] == "failed" and "broken.jpg" in rows["broken.jpg"]["error"]
    assert all(rows[i]["status"] == "ok" for i in ("deep.png", "alpha.png", "grey.jpg"))
    # a rerun retries the failed image only, and explains nothing else again
    assert run(f"data.root={root}", f"output.dir={out}", "wandb.mode=disabled") == 0
    assert "0 images explained, 6 skipped (done before), 1 failed" in capsys.readouterr().out


@pytest.mark.slow
def test_output_folder_of_another_config_is_refused_then_archived(reference, folder, capsys):
    capsys.readouterr()
    changed = [f"data.root={folder}", f"output.dir={reference}", "wandb.mode=disabled", "explainer.stages=1"]
    assert run(*changed) == 2
    err = capsys.readouterr().err
    assert "different config" in err and "explainer.stages: 2 -> 1" in err and "output.resume=false" in err
    assert run(*changed, "output.resume=false") == 0
    (archive,) = reference.glob("previous-*")
    assert (archive / "manifest.csv").is_file() and len(list((archive / "maps").rglob("*.pt"))) == 6  # nothing lost
    assert OmegaConf.load(reference / "config.yaml").explainer.stages == 1
    # settings that do not change the maps may change between runs
    assert (
        run(
            f"data.root={folder}",
            f"output.dir={reference}",
            "wandb.mode=disabled",
            "explainer.stages=1",
            "batch_size=3",
            "progress=true",
        )
        == 0
    )
