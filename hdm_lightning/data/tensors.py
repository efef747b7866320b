"""Images given in memory (a normalised ``[N, C, H, W]`` tensor) as a dataset, for :func:`hdm_lightning.compare`.

Not a ``data.kind`` of the run configs (a YAML file cannot hold a tensor); everything else treats it like any
dataset: ids, labels, masks, class names.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor

from hdm_lightning.data.items import DatasetError, Item, ItemDataset

__all__ = ["TensorImages"]


class TensorImages(ItemDataset):
    """``N`` images already normalised for the classifier, with optional labels, masks, ids and class names.

    Args:
        images: float ``[N, C, H, W]``, normalised as the model expects.
        labels: ``N`` class indices (``-1``: unknown), or ``None``.
        masks: ground-truth foreground, bool-like ``[N, H, W]`` or ``[N, 1, H, W]`` (for the pointing game and the
            segmentation metrics), or ``None``.
        ids: ``N`` unique names for the output files (default ``image-0000``, ``image-0001``, ...).
        class_names: one name per class, or ``None``.

    Raises:
        DatasetError: a shape, count or id that does not fit (the message names it).
    """

    needs_root = False

    def __init__(
        self,
        images: Tensor,
        labels: Sequence[int] | Tensor | None = None,
        masks: Tensor | None = None,
        ids: Sequence[str] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
            got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
            raise DatasetError(f"images must be a float tensor [N, C, H, W] normalised for the model, got {got}")
        n, h, w = images.shape[0], *images.shape[-2:]
        self.images = images.detach().cpu()
        self.labels = [-1] * n if labels is None else [int(v) for v in torch.as_tensor(labels).flatten().tolist()]
        self.ids = [f"image-{i:04d}" for i in range(n)] if ids is None else [str(i) for i in ids]
        if len(self.labels) != n or len(self.ids) != n or len(set(self.ids)) != n:
            raise DatasetError(f"give one label and one unique id per image ({n} images)")
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        if self.class_names is not None and max(self.labels) >= len(self.class_names):
            raise DatasetError(f"a label is >= the {len(self.class_names)} class names given")
        self.mask_tensor = None
        if masks is not None:
            m = torch.as_tensor(masks).detach().cpu()
            m = m[:, 0] if m.dim() == 4 else m
            if tuple(m.shape) != (n, h, w):
                raise DatasetError(f"masks must be [N, H, W] = {[n, h, w]} (one per image), got {tuple(m.shape)}")
            self.mask_tensor = m.bool()
        self.masks = self.mask_tensor is not None

    def load_item(self, i: int) -> Item:  # noqa: D102
        mask = None if self.mask_tensor is None else self.mask_tensor[i]
        source = None if mask is None else "given"
        return Item(self.ids[i], self.images[i], self.labels[i], mask, path=f"memory:{self.ids[i]}", mask_source=source)

    def describe(self) -> str:  # noqa: D102
        classes = "" if self.class_names is None else f", {len(self.class_names)} classes"
        return f"{len(self)} images given in memory ({tuple(self.images.shape[1:])}{classes})"

    def digest(self) -> str:
        """SHA-256 of the images, labels, masks and ids (a resumed run refuses other images under the same ids)."""
        h = hashlib.sha256(repr((tuple(self.images.shape), str(self.images.dtype), self.ids, self.labels)).encode())
        h.update(self.images.contiguous().view(torch.uint8).numpy().tobytes())
        if self.mask_tensor is not None:
            h.update(self.mask_tensor.contiguous().numpy().tobytes())
        return h.hexdigest()
