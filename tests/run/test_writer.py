"""The writer: an image's files, then its record (last); failed images; the manifest."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import torch

from hdm_lightning.io import load_tensors
from hdm_lightning.run.batch import explain_batch
from hdm_lightning.run.writer import MANIFEST_COLUMNS, write_failed, write_manifest_all, write_method_batch
from tests.run.parts import S, items, method_run, tiny_classifier


def _cfg(pictures: bool):
    return SimpleNamespace(output=SimpleNamespace(pictures=pictures, stage_maps=True))


def _run_one(tmp_path, pictures=True):
    clf = tiny_classifier()
    run = method_run("rec", tmp_path, clf.model)
    batch = items(2)
    images = torch.stack([it.image for it in batch])
    targets = torch.tensor([2, 0])
    ((_, out),) = explain_batch([run], images, targets, [it.id for it in batch], [None, None], lambda r: None)
    dataset = SimpleNamespace(class_names=clf.class_names)
    names = {it.id: it.id[:-4] for it in batch}
    pictures = write_method_batch(_cfg(pictures), clf, dataset, run, batch, targets, out, names)
    return run, batch, out, pictures


def test_files_then_record_for_each_image(tmp_path):
    run, batch, out, pictures = _run_one(tmp_path)
    rec = json.loads((tmp_path / "records" / "img1.json").read_text())
    assert rec == run.records["img1.png"]
    assert (rec["id"], rec["method"], rec["status"], rec["label"], rec["label_name"]) == (
        "img1.png",
        "rec",
        "ok",
        1,
        "class1",
    )
    assert (rec["target"], rec["target_name"], rec["probability"], rec["activation"]) == (0, "class0", None, None)
    assert rec["forward_per_image"] == 1.0 and rec["backward_per_image"] == 0.0 and rec["passes"] == 0.0
    assert rec["map"] == "maps/img1.pt" and rec["overlay"] == "overlays/img1.png" and rec["stages"] == ""
    saved = load_tensors(tmp_path / "maps" / "img1.pt")
    assert torch.equal(saved["saliency"], out.maps[1]) and saved["target"] == 0 and saved["label"] == 1
    assert (tmp_path / "overlays" / "img0.png").is_file() and not (tmp_path / "binary").exists()
    assert [(p[0], p[1].id, p[2], tuple(p[3].shape)) for p in pictures] == [
        ("rec", "img0.png", 2, (3, S, S)),
        ("rec", "img1.png", 0, (3, S, S)),
    ]
    # the record is written last: it is newer than every other file of its image
    newest = max((tmp_path / f).stat().st_mtime_ns for f in ("maps/img1.pt", "overlays/img1.png"))
    assert (tmp_path / "records" / "img1.json").stat().st_mtime_ns >= newest


def test_without_pictures_only_maps_and_records(tmp_path):
    run, *_ = _run_one(tmp_path, pictures=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps", "records"]
    assert run.records["img0.png"]["overlay"] == ""


def test_failed_images_and_the_manifest(tmp_path):
    run, batch, *_ = _run_one(tmp_path)
    write_failed([run], "broken.png", "cannot read broken.png: not an image", {"broken.png": "broken"})
    assert json.loads((tmp_path / "records" / "broken.json").read_text())["status"] == "failed"
    write_manifest_all(tmp_path, [run], ["broken.png", "img1.png", "img0.png"])  # dataset order
    with open(tmp_path / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(MANIFEST_COLUMNS)
    assert [(r["id"], r["status"]) for r in rows] == [("broken.png", "failed"), ("img1.png", "ok"), ("img0.png", "ok")]
    assert rows[0]["error"] == "cannot read broken.png: not an image"
