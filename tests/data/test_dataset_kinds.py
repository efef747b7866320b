"""Dataset kinds are a registry: a kind defined outside hdm_lightning loads through ``data.kind`` like a built-in.

The kind below lives in this test file, not in the package: registering it is all it takes for ``data.kind``
to reach it through the run config and :func:`~hdm_lightning.data.build_dataset`, the runner's entry point.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from hdm_lightning.config import DataConfig, load_run_config
from hdm_lightning.data import (
    DATASETS,
    Item,
    ItemDataset,
    available_dataset_kinds,
    build_dataset,
    load_items,
    make_batch,
    register_dataset_kind,
)
from hdm_lightning.models.preprocess import Preprocess

PP = Preprocess(size=16, resize=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
BUILT_IN = ["cub", "folder", "pairs", "photos", "synthetic"]


def dot_image(i: int) -> np.ndarray:
    """A black 16x16 RGB image with a white 4x4 square at ``(4i, 4i)``."""
    arr = np.zeros((16, 16, 3), dtype=np.uint8)
    arr[4 * i : 4 * i + 4, 4 * i : 4 * i + 4] = 255
    return arr


class DotsDataset(ItemDataset):
    """Three generated images, a square on the diagonal each; the square is the ground-truth mask."""

    needs_root = False

    def __init__(self, preprocess: Preprocess) -> None:
        self.preprocess = preprocess
        self.ids = [f"dot{i}" for i in range(3)]
        self.labels = [i % 2 for i in range(3)]
        self.class_names = ["even", "odd"]
        self.root = None

    @classmethod
    def from_config(cls, cfg, preprocess: Preprocess) -> "DotsDataset":
        return cls(preprocess)

    def load_item(self, i: int) -> Item:
        arr = dot_image(i)
        return Item(
            id=self.ids[i],
            image=self.preprocess(Image.fromarray(arr)),
            label=self.labels[i],
            mask=self.preprocess.mask(torch.from_numpy(arr[..., 0] > 0)),
            path=f"dots:{i}",
            mask_source="generated",
        )

    def describe(self) -> str:
        return f"dots: {len(self)} generated images"


@pytest.fixture
def dots_kind(monkeypatch):
    """Register :class:`DotsDataset` as ``test_dots`` for one test.

    Registrations are process-wide; registering into a copy of the registry's table (restored by monkeypatch)
    keeps the kind from leaking into tests that check the built-in list.
    """
    monkeypatch.setattr(DATASETS, "_items", dict(DATASETS._items))
    register_dataset_kind("test_dots")(DotsDataset)
    return "test_dots"


def test_kind_from_outside_the_package_loads_through_data_kind(dots_kind):
    assert available_dataset_kinds() == sorted([*BUILT_IN, dots_kind])
    run, _ = load_run_config(None, [f"data.kind={dots_kind}", "data.limit=2", "batch_size=2"])
    dataset = build_dataset(run.data, PP)  # what the runner does with cfg.data
    assert dataset.ids == ["dot0", "dot1"] and dataset.labels == [0, 1] and dataset.num_classes == 2
    assert dataset.describe() == "dots: 3 generated images; 2 selected (limit 2)"
    items, failed = load_items(dataset, range(len(dataset)))
    assert not failed and [it.index for it in items] == [0, 1]
    batch = make_batch(items)
    assert batch["image"].shape == (2, 3, 16, 16) and batch["label"].tolist() == [0, 1]
    for i in range(2):
        expected = torch.from_numpy(dot_image(i)).permute(2, 0, 1).float() / 255 * 2 - 1
        torch.testing.assert_close(batch["image"][i], expected)
        assert batch["mask"][i].sum() == 16 and batch["mask"][i, 4 * i, 4 * i]


def test_unknown_kind_names_the_registered_ones(dots_kind):
    with pytest.raises(KeyError) as info:
        build_dataset(DataConfig(kind="coco"), PP)
    message = info.value.args[0]
    assert message.startswith("Unknown dataset kind 'coco'. Available: ")
    for name in [*BUILT_IN, dots_kind]:
        assert repr(name) in message


def test_a_kind_cannot_replace_another(dots_kind):
    with pytest.raises(ValueError, match="dataset kind 'photos' is already registered"):
        register_dataset_kind("photos")(DotsDataset)
    with pytest.raises(ValueError, match="dataset kind 'test_dots' is already registered"):

        @register_dataset_kind("test_dots")
        class Other(DotsDataset):
            pass
