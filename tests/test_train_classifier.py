"""train_classifier.py end to end on tiny data: checkpoints that explain.py reads, splits, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hdm_lightning.cli import explain_main, train_classifier_main
from hdm_lightning.config import InitConfig, load_train_config
from hdm_lightning.data import build_dataset
from hdm_lightning.models import build_backbone, load_classifier_checkpoint
from hdm_lightning.models.lightning_classifier import initial_backbone, transfer_weights
from hdm_lightning.models.prototype import PrototypeNet
from hdm_lightning.models.small_cnn import small_cnn_preprocess
from tests.fixtures import make_cub_tree, make_folder_tree

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "backbone=resnet18",
    "init.kind=random",
    "preprocess.size=32",
    "preprocess.resize=32",
    "batch_size=4",
    "trainer.max_epochs=1",
    "wandb.mode=disabled",
    "num_workers=0",
]


def train(*overrides: str) -> int:
    return train_classifier_main([*TINY, *overrides])


@pytest.mark.slow
def test_cub_checkpoint_round_trips_into_explain(tmp_path, capsys):
    cub = make_cub_tree(tmp_path / "cub", classes=3, per_class=4)
    out = tmp_path / "clf"
    assert train("data.kind=cub", f"data.root={cub}", f"output.dir={out}") == 0
    assert "explain it with classifier.checkpoint=" in capsys.readouterr().out
    for path in (out / "classifier.pt", out / "checkpoints" / "best.ckpt", out / "checkpoints" / "last.ckpt"):
        clf = load_classifier_checkpoint(path)  # weights_only
        assert clf.num_classes == 3 and clf.class_names == ["001.Bird_1", "002.Bird_2", "003.Bird_3"]
        assert clf.name == "resnet18" and clf.preprocess.size == 32
    a, b = load_classifier_checkpoint(out / "classifier.pt"), load_classifier_checkpoint(out / "checkpoints/best.ckpt")
    assert all(
        torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True)
    )
    # explain.py needs nothing but the checkpoint: classes and preprocessing travel with it
    run = tmp_path / "explained"
    args = ["--config", "configs/tiny.yaml", "data.kind=cub", f"data.root={cub}", "target=label", "data.limit=2"]
    assert (
        explain_main(
            [
                *args,
                f"classifier.checkpoint={out / 'classifier.pt'}",
                "classifier.num_classes=null",
                "classifier.preprocess.size=null",
                "classifier.preprocess.resize=null",
                f"output.dir={run}",
                "wandb.mode=disabled",
            ]
        )
        == 0
    )
    manifest = (run / "manifest.csv").read_text()
    assert "001.Bird_1" in manifest  # the class names from the checkpoint


@pytest.mark.slow
def test_folder_with_train_and_val_subfolders_and_resume(tmp_path, capsys):
    root = tmp_path / "folder"
    make_folder_tree(root / "train", classes=("a", "b"), per_class=3)
    make_folder_tree(root / "val", classes=("a", "b"), per_class=1)
    out = tmp_path / "clf"
    assert train("data.kind=folder", f"data.root={root}", f"output.dir={out}") == 0
    err = capsys.readouterr().err
    assert "image folder: 6 images" in err and "image folder: 2 images" in err
    # a rerun with more epochs continues from last.ckpt
    assert train("data.kind=folder", f"data.root={root}", f"output.dir={out}", "trainer.max_epochs=2") == 0
    assert "resumed from" in capsys.readouterr().err
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2 and ckpt["hyper_parameters"]["max_epochs"] == 2  # one step per epoch, 2 epochs


def test_sigterm_during_training_exits_143_and_says_a_rerun_resumes(tmp_path, monkeypatch, capsys):
    """Lightning turns a SIGTERM inside fit into exit 0 (a scheduler reads: done); here it is 143 and one message."""
    import signal

    from hdm_lightning.models.lightning_classifier import ClassifierModule

    root = tmp_path / "folder"
    make_folder_tree(root / "train", classes=("a", "b"), per_class=2)
    make_folder_tree(root / "val", classes=("a", "b"), per_class=1)

    def preempted(self, batch, batch_idx):
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(ClassifierModule, "training_step", preempted)
    assert train("data.kind=folder", f"data.root={root}", f"output.dir={tmp_path / 'clf'}") == 143
    err = capsys.readouterr().err
    assert "error: stopped by SIGTERM before the run finished. Rerun the same command to resume" in err, err
    assert "Traceback" not in err and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_bad_input_messages(tmp_path, capsys):
    cub = make_cub_tree(tmp_path / "cub", classes=2, per_class=2)
    (cub / "train_test_split.txt").unlink()
    assert train("data.kind=cub", f"data.root={cub}", f"output.dir={tmp_path / 'o'}") == 2
    assert "train_test_split.txt" in capsys.readouterr().err
    folder = make_folder_tree(tmp_path / "flat", classes=None, per_class=4)
    assert train("data.kind=folder", f"data.root={folder}", f"output.dir={tmp_path / 'o2'}") == 2
    assert "no classes to learn" in capsys.readouterr().err
    assert train("backbone=resnet5O", f"data.root={cub}", f"output.dir={tmp_path / 'o3'}") == 2
    err = capsys.readouterr().err
    assert "resnet5O" in err and "resnet50" in err  # the close matches are listed
    assert train("nonsense=1") == 2 and "bad config key 'nonsense'" in capsys.readouterr().err
    assert train("init.kind=file") == 2 and "init.file=" in capsys.readouterr().err


def test_missing_imagenet_weights_name_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    folder = make_folder_tree(tmp_path / "data", classes=("a", "b"), per_class=3)
    args = [*TINY, "init.kind=imagenet", "init.weights=ResNet18_Weights.IMAGENET1K_V1", "data.kind=folder"]
    assert train_classifier_main([*args, f"data.root={folder}", f"output.dir={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err
    assert "resnet18-f37072fd.pth" in err and "empty_torch_home" in err


def test_class_count_disagreeing_with_the_checkpoint(tmp_path, capsys):
    """A run folder whose last.ckpt has another class count is refused, not silently resumed."""
    a = make_folder_tree(tmp_path / "two", classes=("a", "b"), per_class=3)
    b = make_folder_tree(tmp_path / "three", classes=("a", "b", "c"), per_class=3)
    out = tmp_path / "clf"
    assert train("data.kind=folder", f"data.root={a}", f"output.dir={out}", "val_fraction=0.34") == 0
    capsys.readouterr()
    assert train("data.kind=folder", f"data.root={b}", f"output.dir={out}", "val_fraction=0.34") == 2
    err = capsys.readouterr().err
    assert "different config" in err or "2 classes" in err


def test_pretrained_weights_keep_everything_but_the_head(tmp_path):
    torch.manual_seed(0)
    source = build_backbone("resnet18", 1000)
    path = tmp_path / "imagenet_like.pt"
    torch.save(source.state_dict(), path)
    model, _, note = initial_backbone("resnet18", 7, InitConfig(kind="file", file=str(path)))
    own = model.state_dict()
    assert own["fc.weight"].shape == (7, 512) and "fc.weight" in note
    assert all(torch.equal(own[k], v) for k, v in source.state_dict().items() if not k.startswith("fc."))
    with pytest.raises(ValueError, match="does not fit this backbone beyond its head"):
        transfer_weights(build_backbone("resnet34", 7), source.state_dict(), "resnet18 weights")


@pytest.fixture(scope="module")
def synthetic_classifier(tmp_path_factory) -> Path:
    """configs/classifier/synthetic.yaml trained (its classifier.pt)."""
    out = tmp_path_factory.mktemp("synthetic") / "linear"
    args = ["--config", "configs/classifier/synthetic.yaml", f"output.dir={out}", "wandb.mode=disabled"]
    assert train_classifier_main(args) == 0
    return out / "classifier.pt"


@pytest.mark.slow
def test_synthetic_classifier_reaches_90_percent(synthetic_classifier):
    """configs/classifier/synthetic.yaml: the small CNN learns the shapes on 2 CPU cores in about a minute."""
    saved = torch.load(synthetic_classifier, weights_only=True)
    assert saved["extra"]["val_acc1"] >= 0.90, saved["extra"]
    clf = load_classifier_checkpoint(synthetic_classifier)
    assert clf.class_names == ["circle", "square", "triangle", "cross"] and clf.preprocess.size == 64


@pytest.mark.slow
def test_a_prototype_network_learns_the_shapes_and_its_prototypes_are_training_patches(synthetic_classifier, tmp_path):
    """configs/classifier/synthetic_prototype.yaml: ProtoPNet's phases on the small CNN; after the push every
    prototype is a patch of a training image of its class, in the exported network too."""
    out = tmp_path / "proto"
    args = ["--config", "configs/classifier/synthetic_prototype.yaml", f"init.file={synthetic_classifier}"]
    args += [f"output.dir={out}", "wandb.mode=disabled"]
    assert train_classifier_main(args) == 0
    saved = torch.load(out / "classifier.pt", weights_only=True)
    assert saved["extra"]["val_acc1"] >= 0.90, saved["extra"]
    net = load_classifier_checkpoint(out / "classifier.pt").model
    assert isinstance(net, PrototypeNet) and net.num_prototypes == 40
    push = json.loads((out / "push.json").read_text())
    data = load_train_config(REPO / "configs/classifier/synthetic_prototype.yaml").data
    data.split = "train"
    train_set = build_dataset(data, small_cnn_preprocess())
    index = {item_id: i for i, item_id in enumerate(train_set.ids)}
    for entry in push["prototypes"]:
        item = train_set[index[entry["image"]]]
        assert item.label == entry["class"] == entry["prototype"] // 10
        row, col = entry["position"]
        with torch.no_grad():
            patch = net.feature_map(item.image[None])[0, :, row, col]
        assert torch.allclose(net.prototypes[entry["prototype"]], patch, atol=1e-5)
    phases = sorted(p.name for p in (out / "checkpoints" / "phases").iterdir())
    assert phases == ["joint.pt", "last_layer.pt", "push.pt", "warm.pt"]
    assert train_classifier_main(args) == 0  # every phase finished: nothing is trained again
    again = torch.load(out / "classifier.pt", weights_only=True)["state_dict"]
    assert again.keys() == saved["state_dict"].keys()
    assert all(torch.equal(v, saved["state_dict"][k]) for k, v in again.items())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["densenet121", "swin_t", "efficientnet_b0", "mobilenet_v3_small"])
def test_head_is_replaced_for_the_papers_backbones(name):
    """ImageNet-shaped weights (1000 classes) transfer to a 5-class model of the same family, all but the head."""
    torch.manual_seed(0)
    source = build_backbone(name, 1000).state_dict()
    model = build_backbone(name, 5)
    head = transfer_weights(model, source, f"{name} weights")
    assert head and all(source[k].shape[0] == 1000 for k in head if k in source and source[k].dim() >= 1)
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in source.items() if k not in head)


@pytest.mark.parametrize(
    "path",
    sorted((Path(__file__).resolve().parents[1] / "configs" / "classifier").glob("*.yaml")),
    ids=lambda p: p.name,
)
def test_every_shipped_classifier_config_loads(path):
    from hdm_lightning.config import load_train_config

    cfg = load_train_config(path, [])
    assert cfg.backbone and cfg.trainer.max_epochs >= 1


@pytest.mark.slow
def test_two_processes_share_the_epoch(tmp_path):
    """trainer.devices=2 on CPU: DDP over gloo, each process trains on half of every epoch; one checkpoint."""
    out = tmp_path / "ddp"
    args = [
        sys.executable,
        str(REPO / "train_classifier.py"),
        "--config",
        str(REPO / "configs" / "classifier" / "synthetic.yaml"),
        f"output.dir={out}",
        "wandb.mode=disabled",
        "trainer.devices=2",
        "trainer.max_epochs=1",
        "data.synthetic.num_images=128",
        "val_limit=64",
        "batch_size=16",
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "WORLD_SIZE", "RANK", "NODE_RANK")}
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [ln for ln in proc.stdout.splitlines() if "explain it with classifier.checkpoint=" in ln]
    assert len(summaries) == 1, proc.stdout  # one summary line, from rank 0
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 128 // 16 // 2  # half of the 8 batches per process
    clf = load_classifier_checkpoint(out / "classifier.pt")
    assert clf.num_classes == 4
