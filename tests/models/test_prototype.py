"""The prototype network (ProtoPNet): distances, similarity, loss terms, push and checkpoints, against brute force."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hdm_lightning.config import ConfigError, load_train_config
from hdm_lightning.models import load_classifier_checkpoint, save_classifier_checkpoint
from hdm_lightning.models.backbones import build_backbone
from hdm_lightning.models.preprocess import Preprocess
from hdm_lightning.models.prototype import (
    PrototypeNet,
    PrototypeUnits,
    backbone_trunk,
    build_prototype_net,
    prototype_loss,
    push_prototypes,
)

HEAD = {"kind": "prototype", "prototypes_per_class": 2, "prototype_shape": [5, 1, 1]}


def tiny_net(num_classes: int = 3) -> PrototypeNet:
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    return PrototypeNet(trunk, 6, num_classes, prototypes_per_class=2, prototype_shape=[5, 1, 1]).double()


def test_distances_similarity_and_logits_follow_the_paper():
    net = tiny_net()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    z = net.feature_map(x)  # [2, 5, 4, 4]
    brute = ((z[:, None] - net.prototypes[None, :, :, None, None]) ** 2).sum(2)  # [2, P, 4, 4]
    assert torch.allclose(net.distances(z), brute, atol=1e-12)
    d_min = brute.flatten(2).amin(2)
    act = torch.log((d_min + 1) / (d_min + 1e-4))
    assert torch.allclose(net.activations(x), act, atol=1e-12)
    assert torch.allclose(net.similarity_maps(x).flatten(2).amax(2), act, atol=1e-12)  # max-pooled similarity
    assert torch.allclose(net(x), act @ net.last_layer.weight.T, atol=1e-12)
    assert torch.allclose(PrototypeUnits(net)(x), act, atol=0)
    own = torch.arange(3).repeat_interleave(2)
    expected = torch.where(own[None, :] == torch.arange(3)[:, None], 1.0, -0.5).double()
    assert torch.equal(net.last_layer.weight, expected)  # +1 to its own class, -0.5 to the others
    assert net.prototype_class.tolist() == own.tolist()


def test_the_loss_terms_are_the_papers_cluster_separation_and_l1():
    net = tiny_net()
    x, y = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        loss, terms = prototype_loss(net, x, y, cluster=0.8, separation=0.08, l1=1e-4)
    d = net.min_distances(x)  # [4, 6]
    clst = sum(min(d[i, j] for j in range(6) if j // 2 == y[i]) for i in range(4)) / 4
    sep = sum(min(d[i, j] for j in range(6) if j // 2 != y[i]) for i in range(4)) / 4
    l1 = sum(abs(net.last_layer.weight[k, j]) for k in range(3) for j in range(6) if j // 2 != k)
    ce = torch.nn.functional.cross_entropy(net(x), y)
    assert math.isclose(terms["cluster"], clst, rel_tol=1e-12) and math.isclose(terms["separation"], sep, rel_tol=1e-12)
    assert math.isclose(terms["l1"], l1, rel_tol=1e-12) and math.isclose(terms["l1"], 6 * 2 * 0.5)
    assert math.isclose(loss, ce + 0.8 * clst - 0.08 * sep + 1e-4 * l1, rel_tol=1e-12)


def test_push_makes_each_prototype_its_nearest_training_patch_of_its_class():
    net = tiny_net()
    torch.manual_seed(1)
    batches = [(torch.randn(5, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1])) for _ in range(3)]
    before = net.prototypes.detach().clone()
    images = torch.cat([x for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    z = net.feature_map(images)  # [15, 5, 4, 4]
    result = push_prototypes(net, iter(batches))
    assert result.feature_size == (4, 4)
    for j in range(net.num_prototypes):
        c = j // 2
        b, (r, col) = int(result.index[j]), result.position[j].tolist()
        assert labels[b] == c  # a patch of an image of the prototype's class
        assert torch.equal(net.prototypes[j], z[b, :, r, col])  # the prototype is that patch
        patches = z[labels == c].permute(0, 2, 3, 1).reshape(-1, 5)
        nearest = ((patches - before[j]) ** 2).sum(1).min()
        assert math.isclose(result.distance[j], nearest, rel_tol=1e-5)  # and it was the nearest one
    with pytest.raises(ValueError, match=r"push: classes \[2\] have no training image"):
        push_prototypes(tiny_net(), iter([(torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1]))]))


def test_a_prototype_network_round_trips_through_its_checkpoint(tmp_path):
    net = build_prototype_net("small_cnn", 4, HEAD).eval()
    prep = Preprocess(size=32, resize=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    path = save_classifier_checkpoint(tmp_path / "c.pt", net, "small_cnn", 4, list("abcd"), prep, head=HEAD)
    clf = load_classifier_checkpoint(path)
    assert isinstance(clf.model, PrototypeNet) and clf.model.num_prototypes == 8
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(clf.model(x), net(x))
    bad = torch.load(path, weights_only=True)
    bad["head"] = {"kind": "capsule"}
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="unknown head"):
        load_classifier_checkpoint(tmp_path / "bad.pt")


def test_the_trunk_of_each_backbone_family():
    assert backbone_trunk(build_backbone("small_cnn", 3)) is not None
    assert build_prototype_net("resnet18", 3, HEAD).add_on[0].in_channels == 512
    with pytest.raises(ValueError, match="needs a convolutional feature map"):
        backbone_trunk(build_backbone("vit_b_16", 3))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.head=prototypes", r"model.head must be one of \['linear', 'prototype'\]"),
        ("model.prototype_shape=[8,2,2]", r"model.prototype_shape must be \[channels, 1, 1\]"),
        ("model.prototypes_per_class=0", "model.prototypes_per_class must be >= 1"),
        ("model.prototype.lr_last_layer=0", "model.prototype.lr_last_layer must be > 0"),
        ("model.prototype.separation=-1", "model.prototype.separation must be >= 0"),
    ],
)
def test_bad_prototype_settings_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_train_config(None, [override])
