"""The built-in ``small_cnn`` backbone: shapes, registration with build_backbone / default_preprocess, DeepLift-safe."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hdm_lightning.models import (
    Preprocess,
    build_backbone,
    default_preprocess,
    load_classifier,
    load_classifier_checkpoint,
    load_torchvision_weights,
    save_classifier_checkpoint,
)
from hdm_lightning.models.small_cnn import SMALL_CNN_NAME, SmallCNN


def test_output_shape_at_any_size():
    model = SmallCNN(4).eval()
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 4)
    assert model(torch.randn(1, 3, 40, 48)).shape == (1, 4)
    assert len(model.features) == 4 and isinstance(model.features[-1][0], nn.Conv2d)


def test_build_backbone_and_default_preprocess():
    model = build_backbone("small_cnn", 7)
    assert isinstance(model, SmallCNN) and model.head.out_features == 7 and model.training
    assert default_preprocess(SMALL_CNN_NAME) == Preprocess(64, 64, (0.5,) * 3, (0.5,) * 3, "bilinear")


def test_every_relu_is_its_own_module_and_not_in_place():
    model = SmallCNN(3)
    relus = [m for _, m in model.named_modules(remove_duplicate=False) if isinstance(m, nn.ReLU)]
    assert len(relus) == 4 and len({id(m) for m in relus}) == 4 and not any(m.inplace for m in relus)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 4


def test_bad_arguments():
    with pytest.raises(ValueError, match="positive integer"):
        SmallCNN(0)
    with pytest.raises(ValueError, match="positive integer"):
        build_backbone("small_cnn", 0)
    with pytest.raises(ValueError, match="widths"):
        SmallCNN(3, widths=())


def test_unknown_names_list_the_built_in_backbones():
    with pytest.raises(ValueError, match=r"built-in backbones: \['small_cnn'\]") as e:
        build_backbone("no_such_net_at_all", 3)
    assert "torchvision.models.list_models()" in str(e.value)
    with pytest.raises(ValueError, match=r"close matches: \['small_cnn'"):
        default_preprocess("small_cn")
    with pytest.raises(ValueError, match="not a torchvision model"):
        load_torchvision_weights("small_cnn", "DEFAULT")


def test_random_init_and_checkpoint_round_trip(tmp_path):
    classifier = load_classifier({"name": "small_cnn", "num_classes": 4})
    assert isinstance(classifier.model, SmallCNN) and classifier.preprocess == default_preprocess("small_cnn")
    path = save_classifier_checkpoint(
        tmp_path / "small.pt", classifier.model, "small_cnn", 4, ["a", "b", "c", "d"], classifier.preprocess
    )
    loaded = load_classifier_checkpoint(path)
    x = torch.randn(2, 3, 64, 64)
    assert loaded.name == "small_cnn" and torch.equal(loaded.model(x), classifier.model.eval()(x))
