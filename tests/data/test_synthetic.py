"""Synthetic shapes: a pure, split-disjoint generator whose mask is exactly the red key object; the dataset kind."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from skimage.morphology import convex_hull_image

from hdm_lightning.config import DataConfig, SyntheticConfig
from hdm_lightning.data import DATASETS, SHAPE_CLASSES, DatasetError, SyntheticShapesDataset, build_dataset, synthetic
from hdm_lightning.data.synthetic import KEY_COLOR, generate_shapes, shape_label
from hdm_lightning.models.preprocess import Preprocess

S = 32  # small images keep the tests fast; the generator's geometry scales with the side
PP = Preprocess(size=S, resize=S, interpolation="bilinear")  # identity geometry: items are the generated pixels


def redness(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(int)
    return rgb[..., 0] - np.maximum(rgb[..., 1], rgb[..., 2])


def digest(rgb: np.ndarray) -> str:
    return hashlib.sha1(rgb.tobytes()).hexdigest()


# -------------------------------------------------------------------------------------------- generator


def test_generator_is_a_pure_function_of_its_arguments():
    rgb, label, mask = generate_shapes(7, 64, 3, "val")
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    assert mask.shape == (64, 64) and mask.dtype == bool and 0 <= label < len(SHAPE_CLASSES)
    generate_shapes(8, 64, 3, "val")  # other calls in between change nothing
    again = generate_shapes(7, 64, 3, "val")
    assert np.array_equal(rgb, again[0]) and label == again[1] and np.array_equal(mask, again[2])
    for other in [(8, 64, 3, "val"), (7, 64, 4, "val"), (7, 64, 3, "test"), (7, 64, 3, "train")]:
        assert not np.array_equal(rgb, generate_shapes(*other)[0]), other


def test_splits_are_disjoint():
    train = {digest(generate_shapes(i, S, 0, "train")[0]) for i in range(150)}
    test = {digest(generate_shapes(i, S, 0, "test")[0]) for i in range(150)}
    assert len(train) == len(test) == 150 and not train & test


@pytest.mark.parametrize("size", [16, 64])
def test_mask_is_exactly_the_red_key_object(size):
    for i in range(25):
        rgb, label, mask = generate_shapes(i, size, 1, "test")
        assert 0 < mask.sum() < 0.5 * mask.size
        # Key red vs everything else has a wide margin (key > 160, the rest < 70): the mask is the red pixels.
        red = redness(rgb)
        assert red[mask].min() > 150 and red[~mask].max() < 90
        assert np.abs(rgb[mask].astype(int) - KEY_COLOR).max() <= synthetic._KEY_JITTER
        assert len(np.unique(rgb[mask], axis=0)) == 1  # one flat colour: the object is drawn whole
        assert label == shape_label(i, 1, "test")


def mask_shape(mask: np.ndarray) -> str:
    """Name a key object's shape from its pixels alone: convexity, then spread (max radius / sqrt(area))."""
    rows, cols = np.nonzero(mask)
    area = mask.sum()
    if area / convex_hull_image(mask).sum() < 0.8:
        return "cross"  # the only non-convex shape (solidity ~0.7; the others > 0.87 at 64 px)
    spread = np.sqrt(((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2).max() / area)
    return "circle" if spread < 0.61 else "square" if spread < 0.74 else "triangle"  # ~0.56, ~0.67, ~0.82


def test_key_object_shape_is_the_label():
    # Equal areas for equal sizes, so the class is in the shape and not in the number of red pixels.
    drawn = [generate_shapes(i, 64, 0, "train") for i in range(40)]
    found = [(SHAPE_CLASSES[label], mask_shape(mask)) for _, label, mask in drawn]
    assert all(label == shape for label, shape in found), found
    assert {label for label, _ in found} == set(SHAPE_CLASSES)


def test_layers_hide_the_key_object_from_the_same_draws():
    label, background, distractors, (mask, color) = synthetic._layers(3, S, 0, "val")
    rgb = generate_shapes(3, S, 0, "val")[0]
    assert np.array_equal(synthetic._compose(background, distractors, mask, color), rgb)
    hidden = synthetic._compose(background, distractors, None, color)
    assert np.array_equal(hidden[~mask], rgb[~mask]) and redness(hidden).max() < 90
    assert 2 <= len(distractors) <= 4


def test_classes_are_roughly_balanced():
    counts = np.bincount([shape_label(i, 0, "train") for i in range(800)], minlength=4)
    assert counts.min() > 150 and counts.max() < 250, counts


def test_generator_argument_errors():
    with pytest.raises(DatasetError, match="at least 16 pixels"):
        generate_shapes(0, 8, 0, "test")
    with pytest.raises(DatasetError, match=r"one of \['train', 'val', 'test'\]"):
        generate_shapes(0, 32, 0, "all")
    with pytest.raises(DatasetError, match="non-negative"):
        generate_shapes(-1, 32, 0, "test")
    with pytest.raises(DatasetError, match="seed must be a non-negative integer"):
        shape_label(0, -1, "test")


# ---------------------------------------------------------------------------------------------- dataset


def test_dataset_items_are_the_generated_images():
    ds = SyntheticShapesDataset(12, S, 5, "val", PP)
    assert ds.ids[:2] == ["val/000000", "val/000001"] and len(ds) == 12
    assert ds.class_names == list(SHAPE_CLASSES) and ds.num_classes == 4 and ds.root is None
    assert ds.describe() == "synthetic shapes val split: 12 images 32x32, 4 classes (seed 5)"
    for i in range(len(ds)):
        rgb, label, mask = generate_shapes(i, S, 5, "val")
        assert ds.labels[i] == label  # known up front, without drawing
        item = ds[i]
        assert (item.id, item.label, item.index) == (ds.ids[i], label, i)
        assert item.path == f"synthetic:val/{i:06d}" and item.mask_source == "synthetic"
        assert torch.equal(item.mask, torch.from_numpy(mask))
        expected = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255 * 2 - 1  # mean = std = 0.5
        assert torch.allclose(item.image, expected, atol=1e-5)
    assert ds[-1].index == 11


def test_mask_follows_the_preprocess_geometry():
    pp = Preprocess(size=40, resize=48, interpolation="bilinear")
    item = SyntheticShapesDataset(1, S, 0, "test", pp)[0]
    assert item.image.shape == (3, 40, 40) and item.mask.shape == (40, 40)
    assert torch.equal(item.mask, pp.mask(torch.from_numpy(generate_shapes(0, S, 0, "test")[2])))


def test_registered_and_built_from_config_with_ids_and_limit():
    assert "synthetic" in DATASETS.names() and not DATASETS.get("synthetic").needs_root
    cfg = DataConfig(kind="synthetic", split="train", synthetic=SyntheticConfig(num_images=20, size=S, seed=2))
    ds = build_dataset(cfg, PP)
    assert isinstance(ds, SyntheticShapesDataset) and len(ds) == 20 and ds.split == "train"
    cfg = OmegaConf.merge(
        OmegaConf.structured(DataConfig),
        {"kind": "synthetic", "split": "train", "synthetic": {"num_images": 20, "size": S, "seed": 2}},
    )
    cfg.ids, cfg.limit = ["train/000017", "train/000003", "train/000009"], 2
    sub = build_dataset(cfg, PP)
    assert sub.ids == ["train/000003", "train/000009"] and sub.labels == [ds.labels[3], ds.labels[9]]
    item = sub[1]
    assert item.id == "train/000009" and item.index == 1 and torch.equal(item.image, ds[9].image)


def test_config_and_argument_errors():
    with pytest.raises(DatasetError, match=r"data.split='all' is not a synthetic split.*\['train', 'val', 'test'\]"):
        build_dataset(DataConfig(kind="synthetic", split="all"), PP)
    with pytest.raises(DatasetError, match="num_images must be a positive integer"):
        SyntheticShapesDataset(0, S, 0, "test", PP)
    with pytest.raises(DatasetError, match="at least 16 pixels.*data.synthetic.size"):
        SyntheticShapesDataset(4, 15, 0, "test", PP)
    with pytest.raises(DatasetError, match="seed must be a non-negative integer"):
        SyntheticShapesDataset(4, S, -2, "test", PP)


def test_cache_writes_pngs_once_and_reads_them_back(tmp_path, monkeypatch):
    plain = [SyntheticShapesDataset(3, S, 4, "test", PP)[i] for i in range(3)]
    cached = SyntheticShapesDataset(3, S, 4, "test", PP, cache_dir=tmp_path)
    assert str(tmp_path) in cached.describe()
    first = [cached[i] for i in range(3)]
    folder = tmp_path / "4" / "test"
    files = sorted(p.name for p in folder.iterdir())
    assert files == sorted(
        f"{i:06d}_{S}px_v{synthetic.GENERATOR_VERSION}{s}.png" for i in range(3) for s in ("", "_mask")
    )
    mtimes = {p: p.stat().st_mtime_ns for p in folder.iterdir()}

    def no_drawing(*args, **kwargs):
        raise AssertionError("a cached item was drawn again")

    monkeypatch.setattr(synthetic, "generate_shapes", no_drawing)
    reread = SyntheticShapesDataset(3, S, 4, "test", PP, cache_dir=tmp_path)
    for i in range(3):
        a, b, c = plain[i], first[i], reread[i]
        for item in (b, c):
            assert torch.equal(item.image, a.image) and torch.equal(item.mask, a.mask) and item.label == a.label
    assert {p: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes  # nothing rewritten, no temp files left

    # A damaged entry is drawn and written again.
    monkeypatch.undo()
    image_path, _ = reread.cache_paths(1)
    image_path.write_bytes(b"not a png")
    assert torch.equal(reread[1].image, plain[1].image)
    assert sorted(p.name for p in folder.iterdir()) == files
