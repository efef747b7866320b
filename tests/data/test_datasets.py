"""Datasets on tiny on-disk trees: CUB-200-2011, image folders, pairs, photos; selection; tolerant batches."""

from __future__ import annotations

import shutil

import pytest
import torch
from omegaconf import OmegaConf

from hdm_lightning.config import DataConfig
from hdm_lightning.data import (
    DATASETS,
    CUBDataset,
    DatasetError,
    DatasetSubset,
    ExplainDataModule,
    ImageFolderDataset,
    ImageReadError,
    MaskPairDataset,
    PhotoDataset,
    box_mask,
    build_dataset,
    load_items,
    load_rgb,
    make_batch,
)
from hdm_lightning.models.preprocess import Preprocess
from tests.fixtures import cub_box, make_cub_tree, make_folder_tree, make_pairs_tree, write_corrupt_image

# 40x30 images, short side already 30: no resize, a centre crop of columns 5..34. Crop pixel (r, c) is
# original pixel (r, c + 5), so geometry can be checked exactly.
PP = Preprocess(size=30, resize=30)
DX = 5


def expected_box(box, shrink: int = 0) -> torch.Tensor:
    x, y, w, h = (int(v) for v in box)
    m = torch.zeros(30, 30, dtype=torch.bool)
    m[y + shrink : y + h - shrink, x - DX + shrink : x + w - DX - shrink] = True
    return m


@pytest.fixture
def cub(tmp_path):
    return make_cub_tree(tmp_path / "CUB_200_2011")


# ---------------------------------------------------------------------------------------------- CUB


def test_cub_splits_labels_classes_ids(cub):
    test, train, both = (CUBDataset(cub, s, PP) for s in ("test", "train", "all"))
    assert (len(test), len(train), len(both)) == (3, 3, 6)  # odd image ids are test (train_every=2)
    assert test.labels == [0, 1, 2] and train.labels == [0, 1, 2] and both.labels == [0, 0, 1, 1, 2, 2]
    assert test.class_names == ["001.Bird_1", "002.Bird_2", "003.Bird_3"] and test.num_classes == 3
    assert test.ids[0] == "001.Bird_1/Bird_1_0000_1.jpg" and train.ids[0] == "001.Bird_1/Bird_1_0001_2.jpg"
    assert test.describe().startswith("CUB-200-2011 test split: 3 images, 3 classes at ")
    assert "segmentations" in test.describe()


def test_cub_item_segmentation_mask_and_box(cub):
    item = CUBDataset(cub, "all", PP)[0]
    assert item.id == "001.Bird_1/Bird_1_0000_1.jpg" and item.label == 0 and item.index == 0
    assert item.image.shape == (3, 30, 30) and item.image.dtype == torch.float32
    assert item.box == cub_box(0) and item.path.endswith("Bird_1_0000_1.jpg")
    # Soft segmentation: 255 inside, 100 on the box's border -> > 127 keeps the box shrunk by one pixel.
    assert item.mask_source == "segmentation"
    assert item.mask.dtype == torch.bool and torch.equal(item.mask, expected_box(cub_box(0), shrink=1))


def test_cub_box_mask_without_segmentations(tmp_path):
    root = make_cub_tree(tmp_path / "cub", segmentations=False)
    ds = CUBDataset(root, "all", PP)
    assert ds.segmentations is None and "bounding boxes" in ds.describe()
    for k in (0, 1, 2):
        item = ds[k]
        assert item.mask_source == "box" and torch.equal(item.mask, expected_box(cub_box(k)))
        assert item.mask[15, 15] and not item.mask[0, 0]


def test_cub_geometry_with_a_resize(cub):
    pp = Preprocess(size=16, resize=16)  # 40x30 -> 21x16 -> crop columns 2..17 (scale 16/30)
    item = CUBDataset(cub, "all", pp, segmentations=None)[0]
    x, y, w, h = cub_box(0)
    cx, cy = (x + w / 2) * 16 / 30 - 2, (y + h / 2) * 16 / 30  # the box centre in crop pixels
    assert item.mask.shape == (16, 16) and item.mask[int(cy), int(cx)]
    assert not item.mask[0, 0] and not item.mask[15, 15]


def test_cub_accepts_parent_folder_and_sibling_segmentations(tmp_path):
    root = make_cub_tree(tmp_path / "CUB_200_2011")
    assert CUBDataset(tmp_path, "test", PP).root == root  # pointed at the folder the archive unpacked in
    shutil.move(root / "segmentations", tmp_path / "segmentations")  # the two archives unpacked side by side
    ds = CUBDataset(root, "test", PP)
    assert ds.segmentations == tmp_path / "segmentations" and ds[0].mask_source == "segmentation"


@pytest.mark.parametrize(
    "name",
    ["images", "images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt", "classes.txt"],
)
def test_cub_missing_metadata_is_named(cub, name):
    path = cub / name
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(DatasetError, match="expected the official CUB-200-2011 layout") as info:
        CUBDataset(cub, "test", PP)
    assert f"{name} is missing" in str(info.value) or f"{name}/ is missing" in str(info.value)


def test_cub_bad_split_and_missing_root(cub, tmp_path):
    with pytest.raises(DatasetError, match=r"unknown CUB split 'val'.*\['test', 'train', 'all'\]"):
        CUBDataset(cub, "val", PP)
    with pytest.raises(DatasetError, match="does not exist"):
        CUBDataset(tmp_path / "nowhere", "test", PP)


def test_cub_malformed_and_inconsistent_metadata(cub):
    (cub / "bounding_boxes.txt").write_text("1 10 8 20 14\n2 10 8 20\n")
    with pytest.raises(DatasetError, match="bounding_boxes.txt line 2 is malformed"):
        CUBDataset(cub, "test", PP)
    (cub / "bounding_boxes.txt").write_text("1 10 8 20 14\n2 10 8 twenty 14\n")
    with pytest.raises(DatasetError, match="bounding_boxes.txt line 2: 'twenty' is not a valid float"):
        CUBDataset(cub, "test", PP)
    (cub / "bounding_boxes.txt").write_text("1 10 8 20 14\n")
    with pytest.raises(DatasetError, match=r"image id 2 \(images.txt line 2\) has no line in bounding_boxes.txt"):
        CUBDataset(cub, "test", PP)


def test_cub_missing_or_corrupt_image_fails_only_its_item(cub):
    ds = CUBDataset(cub, "test", PP)
    (cub / "images" / ds.ids[1]).unlink()  # not checked at construction ...
    write_corrupt_image(cub / "images" / ds.ids[2])
    ds = CUBDataset(cub, "test", PP)
    assert len(ds) == 3 and ds[0].label == 0
    with pytest.raises(ImageReadError, match="does not exist"):  # ... but when read
        ds[1]
    with pytest.raises(ImageReadError, match="truncated"):
        ds[2]


# ------------------------------------------------------------------------------------ folder, pairs


def test_folder_with_classes(tmp_path):
    root = make_folder_tree(tmp_path / "f")
    (root / "dog" / ".hidden.jpg").write_bytes(b"junk")
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "cat" / "sub").mkdir()
    make_folder_tree(root / "cat" / "sub", classes=None, per_class=1)  # nested images belong to 'cat'
    (root / "cat" / "sub" / "img_0.jpg").rename(root / "cat" / "sub" / "UPPER.JPG")
    ds = ImageFolderDataset(root, PP)
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2
    assert ds.ids == ["cat/cat_0.jpg", "cat/cat_1.jpg", "cat/sub/UPPER.JPG", "dog/dog_0.jpg", "dog/dog_1.jpg"]
    assert ds.labels == [0, 0, 0, 1, 1]
    item = ds[3]
    assert item.label == 1 and item.mask is None and item.box is None and item.image.shape == (3, 30, 30)
    assert "5 images, 2 classes" in ds.describe()


def test_folder_flat_and_errors(tmp_path):
    root = make_folder_tree(tmp_path / "flat", classes=None, per_class=3)
    (root / "empty_dir").mkdir()  # a sub-folder without images does not make it a class folder
    ds = ImageFolderDataset(root, PP)
    assert ds.ids == ["img_0.jpg", "img_1.jpg", "img_2.jpg"] and ds.labels == [-1] * 3 and ds.class_names is None
    (tmp_path / "none").mkdir()
    with pytest.raises(DatasetError, match=r"no images in .*none.*\.jpg, \.jpeg, \.png"):
        ImageFolderDataset(tmp_path / "none", PP)
    classes = make_folder_tree(tmp_path / "classes")
    (classes / "emu").mkdir()
    with pytest.raises(DatasetError, match=r"class folder\(s\) \['emu'\]"):
        ImageFolderDataset(classes, PP)


def test_pairs_with_a_missing_mask(tmp_path):
    root = make_pairs_tree(tmp_path / "p", n=3, mask_ext=".bmp")
    (root / "masks" / "img_1.bmp").unlink()
    ds = MaskPairDataset(root, "images", "masks", PP)
    assert ds.ids == ["img_0.jpg", "img_1.jpg", "img_2.jpg"] and ds.labels == [-1] * 3
    assert "3 images (2 with masks)" in ds.describe()
    assert ds[1].mask is None and ds[1].mask_source is None
    item = ds[2]
    assert item.mask_source == "file" and torch.equal(item.mask, expected_box(cub_box(2)))
    inverted = MaskPairDataset(root, "images", "masks", PP, invert_masks=True)[0]
    assert torch.equal(inverted.mask, ~expected_box(cub_box(0)))
    with pytest.raises(DatasetError, match="masks folder"):
        MaskPairDataset(root, "images", "labels", PP)


def test_box_mask_pixel_centres():
    m = box_mask((1.0, 2.0, 3.0, 1.6), width=6, height=5)  # row 3's centre 3.5 < 2 + 1.6: inside
    assert m.nonzero().tolist() == [[2, 1], [2, 2], [2, 3], [3, 1], [3, 2], [3, 3]]
    assert box_mask((1.0, 2.0, 3.0, 1.5), width=6, height=5).sum() == 3  # 3.5 is not < 3.5: one row
    assert box_mask((-5.0, 3.0, 100.0, 100.0), width=6, height=5).sum() == 12  # clipped to the image


def test_photos():
    pytest.importorskip("skimage")
    ds = PhotoDataset(["coffee", "chelsea"], PP)
    assert ds.ids == ["coffee", "chelsea"] and ds.labels == [-1, -1] and ds.num_classes is None
    item = ds[1]
    assert item.id == "chelsea" and item.image.shape == (3, 30, 30) and item.path == "demo:chelsea"
    with pytest.raises(DatasetError, match=r"unknown demo photo\(s\) \['dodo'\]. Available: .*chelsea"):
        PhotoDataset(["dodo"], PP)


# ------------------------------------------------------------------------------------ build, select


def test_registry_lists_the_four_kinds():
    assert DATASETS.names() == ["cub", "folder", "pairs", "photos", "synthetic"]
    with pytest.raises(KeyError, match=r"Unknown dataset kind 'coco'. Available: \['cub'"):
        build_dataset(DataConfig(kind="coco", root="/x"), PP)


def test_build_with_ids_and_limit(cub):
    cfg = DataConfig(kind="cub", root=str(cub), split="all")
    full = build_dataset(cfg, PP)
    assert isinstance(full, CUBDataset) and len(full) == 6
    wanted = [full.ids[4], full.ids[1], full.ids[3]]  # given out of order: kept in dataset order
    sub = build_dataset(DataConfig(kind="cub", root=str(cub), split="all", ids=wanted), PP)
    assert isinstance(sub, DatasetSubset) and sub.ids == [full.ids[1], full.ids[3], full.ids[4]]
    assert sub.labels == [0, 1, 2] and sub.class_names == full.class_names and sub.num_classes == 3
    assert "3 selected" in sub.describe()
    item = sub[2]
    assert item.id == full.ids[4] and item.index == 2 and item.label == 2
    dict_cfg = OmegaConf.merge(OmegaConf.structured(DataConfig), {"kind": "cub", "root": str(cub), "limit": 2})
    limited = build_dataset(dict_cfg, PP)
    assert limited.ids == full.ids[::2][:2] and len(limited) == 2  # test split (the default), first two


def test_build_errors(cub, tmp_path):
    with pytest.raises(DatasetError, match=r"unknown.*\['nope/a.jpg', 'nope/b.jpg'\]|not in"):
        build_dataset(DataConfig(kind="cub", root=str(cub), ids=["nope/a.jpg", "nope/b.jpg"]), PP)
    many = [f"x{i}" for i in range(8)]
    with pytest.raises(DatasetError, match=r"8 id\(s\).*'x4'\] and 3 more"):
        build_dataset(DataConfig(kind="cub", root=str(cub), ids=many), PP)
    with pytest.raises(DatasetError, match="data.root is required for kind 'cub': set data.root=/path/to/CUB_200_2011"):
        build_dataset(DataConfig(kind="cub"), PP)
    with pytest.raises(DatasetError, match="missing_dir.*does not exist"):
        build_dataset(DataConfig(kind="folder", root=str(tmp_path / "missing_dir")), PP)
    with pytest.raises(DatasetError, match="data.limit must be a positive"):
        build_dataset(DataConfig(kind="cub", root=str(cub), limit=0), PP)


# ------------------------------------------------------------------------------ tolerant batches


@pytest.fixture
def folder_with_corrupt(tmp_path):
    root = make_folder_tree(tmp_path / "f", classes=None, per_class=4)
    write_corrupt_image(root / "img_1.jpg")
    return root


def test_load_items_sets_failures_aside(folder_with_corrupt):
    ds = ImageFolderDataset(folder_with_corrupt, PP)
    items, failed = load_items(ds, [0, 1, 2])
    assert [it.index for it in items] == [0, 2] and [it.id for it in items] == ["img_0.jpg", "img_2.jpg"]
    assert len(failed) == 1 and failed[0][:2] == (1, "img_1.jpg") and "truncated" in failed[0][2]
    batch = make_batch(items, failed)
    assert batch["image"].shape == (2, 3, 30, 30) and batch["mask"] is None and batch["failed"] == failed
    empty = make_batch([], failed, size=30)
    assert empty["image"].shape == (0, 3, 30, 30) and empty["index"].tolist() == []


def test_load_items_sets_an_image_that_runs_out_of_memory_aside(folder_with_corrupt, monkeypatch):
    ds = ImageFolderDataset(folder_with_corrupt, PP)
    real = type(PP).__call__

    def preprocess(self, image):
        if image.getpixel((0, 0)) == first_pixel:
            raise MemoryError("Unable to allocate 14.6 TiB")
        return real(self, image)

    first_pixel = load_rgb(folder_with_corrupt / "img_2.jpg").getpixel((0, 0))
    monkeypatch.setattr(type(PP), "__call__", preprocess)
    items, failed = load_items(ds, [0, 2, 3])
    assert [it.id for it in items] == ["img_0.jpg", "img_3.jpg"]
    assert len(failed) == 1 and failed[0][:2] == (2, "img_2.jpg")
    assert "out of memory while reading and preprocessing" in failed[0][2] and "14.6 TiB" in failed[0][2]


def test_a_training_image_that_runs_out_of_memory_is_skipped(folder_with_corrupt, monkeypatch):
    from hdm_lightning.data.training import _Labelled

    def preprocess(self, image):
        raise MemoryError("Unable to allocate 14.6 TiB")

    monkeypatch.setattr(type(PP), "__call__", preprocess)
    with pytest.warns(UserWarning, match="skipping training image 'img_0.jpg': out of memory"):
        assert _Labelled(ImageFolderDataset(folder_with_corrupt, PP), None)[0] is None


@pytest.mark.parametrize("num_workers", [0, 1])
def test_datamodule_batches_skip_the_corrupt_image(folder_with_corrupt, num_workers):
    cfg = DataConfig(kind="folder", root=str(folder_with_corrupt))
    dm = ExplainDataModule(cfg, PP, batch_size=3, num_workers=num_workers)
    dm.setup()
    assert len(dm.dataset) == 4
    first, second = list(dm.predict_dataloader())
    assert first["index"].tolist() == [0, 2] and first["id"] == ["img_0.jpg", "img_2.jpg"]
    assert first["image"].shape == (2, 3, 30, 30) and first["label"].tolist() == [-1, -1]
    assert [f[:2] for f in first["failed"]] == [(1, "img_1.jpg")] and str(folder_with_corrupt) in first["failed"][0][2]
    assert second["index"].tolist() == [3] and second["failed"] == []


def test_batch_masks_when_only_some_items_have_one(tmp_path):
    root = make_pairs_tree(tmp_path / "p", n=3, mask_ext=".png")
    (root / "masks" / "img_0.png").unlink()
    batch = next(
        iter(ExplainDataModule(DataConfig(kind="pairs", root=str(root)), PP, batch_size=3).predict_dataloader())
    )
    assert batch["has_mask"].tolist() == [False, True, True]
    assert batch["mask"].shape == (3, 30, 30) and batch["mask"].dtype == torch.bool and not batch["mask"][0].any()
    assert torch.equal(batch["mask"][2], expected_box(cub_box(2)))
