"""Sanity checks for saliency maps: does the map change when the classifier's weights, or the class, change?

A map that explains the classifier must depend on what the classifier learned. Adebayo, Gilmer, Muelly,
Goodfellow, Hardt and Kim, "Sanity Checks for Saliency Maps" (NeurIPS 2018, arXiv 1810.03292) re-initialise the
weights layer by layer, from the logits down ("cascading model-parameter randomisation"), and compare each map of
the randomised model with the map of the trained one: a method whose map stays the same (an edge detector does)
does not explain the model. Sixt, Granz and Landgraf, "When Explanations Lie" (arXiv 1912.09818) and Quantus
(Hedström et al., arXiv 2202.06861, "random logit") compare the map of the explained class with the map of a
random other class: a map that does not change with the class does not explain the decision. Here the
similarity is lower-is-better: a method passes when its maps differ.

- :func:`parameter_layers`: the layers of a classifier, from the output down; :func:`cascade_points`: how many of
  them each cascade point re-initialises.
- :func:`reinitialise` (one layer, seeded), :func:`restored` (the model bit-exactly as it was afterwards).
- :func:`random_other_class`: a class other than the explained one, seeded by the image's id.
- :func:`map_similarity`: Spearman rank correlation, SSIM and top-k IoU of two batches of maps.
- :class:`SanityChecks`: the metric family ``sanity`` (reruns the method: ``requires_method``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torchmetrics.functional.image import structural_similarity_index_measure

from hdm_lightning.core import model_device_dtype, preserved
from hdm_lightning.metrics.agreement import agreement_keys, row_totals, spearman, top_k_iou
from hdm_lightning.metrics.base import SaliencyMetric
from hdm_lightning.metrics.family import register_metric
from hdm_lightning.metrics.randomisation import (
    SETTING,
    cascade_points,
    layer_seed,
    parameter_layers,
    reinitialise,
    restored,
)
from hdm_lightning.metrics.stability import check_top_k

__all__ = [
    "SanityChecks",
    "cascade_points",
    "map_similarity",
    "parameter_layers",
    "random_other_class",
    "reinitialise",
    "restored",
    "similarity_keys",
    "sort_key",
]

_SETTING = SETTING


# ------------------------------------------------------------------------------------------------ classes, similarity


def random_other_class(ids: Sequence[object], target: Tensor, classes: int, seed: int = 0) -> Tensor:
    """Per image a class drawn uniformly among the ``classes - 1`` others than ``target``, ``[B]`` like ``target``.

    Seeded by ``seed`` and a digest of ``str(id)``: the same for an image whatever its batch, process or device.
    """
    if classes < 2:
        raise ValueError(f"a random other class needs at least two classes, the classifier has {classes}")
    out = []
    for item_id, t in zip(ids, target.tolist(), strict=True):
        gen = torch.Generator().manual_seed(layer_seed(seed, f"logit:{item_id}"))
        r = int(torch.randint(classes - 1, (1,), generator=gen))
        out.append(r + (r >= t))
    return torch.tensor(out, dtype=torch.long, device=target.device)


def similarity_keys(top_k: Sequence[float] = (0.05, 0.2)) -> list[str]:
    """Columns of :func:`map_similarity`: ``spearman``, ``ssim``, ``iou<k %>`` per fraction."""
    return ["spearman", "ssim", *[k for k in agreement_keys(top_k) if k.startswith("iou")]]


def map_similarity(a: Tensor, b: Tensor, top_k: Sequence[float] = (0.05, 0.2)) -> dict[str, Tensor]:
    """How alike two batches of maps ``[B, 1, H, W]`` in ``[0, 1]`` are, per image: ``{column: [B]}`` float64.

    - ``spearman``: Spearman rank correlation (tie-averaged ranks, :func:`~hdm_lightning.metrics.agreement.spearman`).
    - ``ssim``: structural similarity (Wang et al., 2004) with a Gaussian window (sigma 1.5, side 11 or the largest
      odd side the image allows), data range 1 (torchmetrics' ``structural_similarity_index_measure``).
    - ``iou<k %>``: IoU of the top-``k`` pixel sets (:func:`~hdm_lightning.metrics.agreement.top_k_iou`).

    Adebayo et al. compare both the signed maps and their absolute values; the maps here are already in ``[0, 1]``.
    """
    side = min(a.shape[-2:])
    kernel = min(11, side if side % 2 else side - 1)
    ssim = structural_similarity_index_measure(
        a.detach().double(), b.detach().double(), data_range=1.0, kernel_size=kernel, reduction="none"
    )
    out = {"spearman": spearman(a, b), "ssim": ssim.reshape(-1)}
    for k, key in zip(top_k, similarity_keys(top_k)[2:], strict=True):
        out[key] = top_k_iou(a, b, k)
    return out


def sort_key(tail: str) -> tuple:
    """Sort key of a ``<point>/<column>`` tail: ``cascade<j>`` by ``j``, ``full``, ``logit``; then the columns."""
    point, _, column = tail.partition("/")
    if point.startswith("cascade") and point[7:].isdigit():
        p = (0, int(point[7:]))
    else:
        p = ({"full": 1, "logit": 2}.get(point, 3), 0)
    try:
        c = (2, float(column[3:])) if column.startswith("iou") else ({"spearman": 0, "ssim": 1}.get(column, 3), 0.0)
    except ValueError:
        c = (3, 0.0)
    return (*p, point, *c, column)


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{_SETTING}.{name} must be a positive integer, got {value!r}")
    return value


def _classes(model: nn.Module, image: Tensor) -> int:
    """How many logits ``model`` gives (one forward of one image, eval mode, no gradient; the model left as given)."""
    device, dtype = model_device_dtype(model)
    with preserved(model), torch.no_grad():
        return int(model(image.to(device, dtype)).shape[-1])


# ------------------------------------------------------------------------------------------------ the metric


@register_metric("sanity")
class SanityChecks(SaliencyMetric):
    """Similarity of the run's maps with the maps of a randomised classifier and of a random class (lower is better).

    :meth:`update_from_method` reruns the method (``method.model`` is the classifier it explains):

    1. Random logit: for a class drawn per image among the others (:func:`random_other_class`; skipped when
       ``logit`` is false or the classifier has one class), on the trained classifier.
    2. Cascade: the classifier's layers (:func:`parameter_layers`, from the output down) are re-initialised in
       place, cumulatively, point by point (:func:`cascade_points`; :func:`reinitialise`, seeded by ``seed`` and the
       layer's name), and the method is rerun on the same images and targets at each point. The model is
       randomised in place because methods hold hooks or modules of that very model (Grad-CAM's target layer);
       :func:`restored` puts every parameter and buffer back bit-exactly afterwards, also when the method raises.

    The reruns run under ``torch.random.fork_rng``: the run's random state is as if they had not happened. Cost per
    batch: one forward of one image (the number of classes) and ``points + 1`` calls of the method.

    Each rerun's maps are compared with the run's maps by :func:`map_similarity`. Keys (``compute()`` means,
    ``last`` per image): ``sanity/<point>/<column>`` for ``point`` in ``cascade1 ..``, ``full`` (every layer
    re-initialised), ``logit`` and ``column`` in ``spearman``, ``ssim``, ``iou<k %>``; ``sanity_curve``, the
    Spearman correlation at 0 (nothing randomised: 1) and at each cascade point (``[B, points + 1]``; ``compute()``:
    the mean over the images whose curve is finite). States are float64 sums and counts with
    ``dist_reduce_fx="sum"`` (DDP sync and ``merge_state`` give the single-process value).

    Args:
        steps: cascade points evenly spread over the layers (default 4): point ``j`` re-initialises the top
            ``ceil(L * j / steps)`` of the ``L`` layers; the last one (``full``) all of them.
        layers: instead of ``steps``, the names (``named_modules()``) of the layers at which to stop, from the output
            down; ``full`` (every layer) comes after them.
        top_k: fractions of the pixels for the top-k IoU columns (``iou5``, ``iou20``).
        logit: whether to run the random-logit test.
        seed: seeds the re-initialisation and the random classes.
        **kwargs: passed to ``torchmetrics.Metric``.
    """

    is_differentiable: ClassVar[bool] = False
    higher_is_better: ClassVar[bool] = False
    full_state_update: ClassVar[bool] = False
    columns: ClassVar[dict[str, bool]] = {"sanity": False}  # sanity/<point>/<column>: similarity, lower is better
    order: ClassVar[int] = 60
    curves: ClassVar[dict[str, str]] = {"sanity_curve": "share of the layers randomised, from the top"}
    requires_method: ClassVar[bool] = True

    @classmethod
    def tail_key(cls, tail: str) -> tuple:
        """Cascade points in order, ``full``, ``logit``; then ``spearman``, ``ssim``, ``iou`` by fraction."""
        return sort_key(tail)

    @classmethod
    def curve_axis(cls, key: str, points: int, params: Mapping[str, Any]) -> tuple[list[float], str, str]:
        """x: ``j / steps`` at cascade point ``j`` (0: the trained model); y: Spearman correlation with its map.

        With ``layers`` the points are the named layers, drawn evenly spaced (their true shares depend on the model).
        """
        xs = [j / (points - 1) for j in range(points)] if points > 1 else [0.0]
        label = cls.curves[key] if params.get("layers") is None else "cascade point (named layers), from the top"
        return xs, label, "Spearman correlation with the map of the trained model"

    @classmethod
    def in_markdown(cls, key: str) -> bool:
        """The Markdown table shows the ``full`` and ``logit`` columns (the CSV has every cascade point)."""
        return key.split("/")[1:2] in (["full"], ["logit"])

    @classmethod
    def in_manifest(cls, key: str) -> bool:
        """``manifest.csv`` has the ``full`` and ``logit`` columns too (the records keep every point)."""
        return cls.in_markdown(key)

    def __init__(
        self,
        steps: int | None = None,
        layers: Sequence[str] | None = None,
        top_k: Sequence[float] = (0.05, 0.2),
        logit: bool = True,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if steps is not None and layers is not None:
            raise ValueError(f"give {_SETTING}.steps or {_SETTING}.layers, not both")
        if layers is not None and (
            isinstance(layers, str) or not layers or not all(isinstance(n, str) for n in layers)
        ):
            raise ValueError(f"{_SETTING}.layers must be a non-empty list of module names, got {layers!r}")
        self.layers = None if layers is None else tuple(layers)
        self.steps = None if layers is not None else _positive_int(4 if steps is None else steps, "steps")
        self.top_k = check_top_k(top_k, f"{_SETTING}.top_k")
        if not isinstance(logit, bool):
            raise ValueError(f"{_SETTING}.logit must be true or false, got {logit!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"{_SETTING}.seed must be an integer, got {seed!r}")
        self.logit, self.seed = logit, seed
        n = self.steps if self.layers is None else len(self.layers) + 1
        #: the cascade points in order (the last, ``full``, re-initialises every layer)
        self.points = [*[f"cascade{j}" for j in range(1, n)], "full"]
        self.rows = [*self.points, "logit"]
        self.similarity_columns = similarity_keys(self.top_k)
        shape = (len(self.rows), len(self.similarity_columns))
        self.add_sum("similarity_sum", shape)
        self.add_sum("count", shape)
        self.add_sum("curve_sum", (n + 1,))
        self.add_sum("curve_count")

    def update_from_method(self, method: Any, images: Tensor, saliency: Tensor, target: Tensor, ids: Sequence) -> None:
        """Rerun ``method`` on a random class and on the randomised classifier; add the similarities with ``saliency``.

        ``ids`` (one per image) seed the random classes.
        """
        model = getattr(method, "model", None)
        if not isinstance(model, nn.Module):
            raise ValueError(f"the sanity checks randomise method.model, the classifier: got {type(model).__name__}")
        if len(ids) != images.shape[0]:
            raise ValueError(f"the sanity checks need one id per image: got {len(ids)} ids for {images.shape[0]}")
        layers = parameter_layers(model)
        points = cascade_points([n for n, _ in layers], self.steps, self.layers)
        devices = sorted({t.device.index or 0 for t in (images, *model.parameters()) if t.device.type == "cuda"})
        others: dict[str, Tensor] = {}
        with torch.random.fork_rng(devices=devices):
            classes = _classes(model, images[:1]) if self.logit else 1
            if classes > 1:
                others["logit"] = method(images, random_other_class(list(ids), target, classes, self.seed))
            with restored(model):
                done, maps = 0, None
                for point, count in points:
                    for name, module in layers[done:count]:
                        reinitialise(module, name, self.seed)
                    if maps is None or count > done:  # a named bottom layer makes its point the same as ``full``
                        maps = method(images, target)
                    others[point], done = maps, count
        self.update(saliency, others)

    def update(self, reference_maps: Tensor, others: dict[str, Tensor]) -> None:
        """Add the similarity of the run's maps with each rerun's, ``others = {point or "logit": [B, 1, H, W]}``."""
        if reference_maps.dim() != 4 or reference_maps.shape[1] != 1:
            raise ValueError(f"maps must be [B, 1, H, W], got {tuple(reference_maps.shape)}")
        for row, other in others.items():
            if row not in self.rows:
                raise ValueError(f"unknown sanity point {row!r}: this metric was built for {self.rows}")
            scores = map_similarity(reference_maps, other.to(reference_maps.device), self.top_k)
            values = torch.stack([scores[c] for c in self.similarity_columns], 1)  # [B, K]
            total, count = row_totals(values, self.rows.index(row), self.similarity_sum)
            self.similarity_sum = self.similarity_sum + total
            self.count = self.count + count
            for k, column in enumerate(self.similarity_columns):
                self.last[f"sanity/{row}/{column}"] = values[:, k]
        if all(p in others for p in self.points):
            rho = [self.last[f"sanity/{p}/spearman"] for p in self.points]
            curve = torch.stack([torch.ones_like(rho[0]), *rho], 1)  # [B, points + 1]
            ok = torch.isfinite(curve).all(1)
            self.accumulate("curve_sum", curve[ok].sum(0))
            self.accumulate("curve_count", ok.sum().double())
            self.last["sanity_curve"] = curve

    def compute(self) -> dict[str, float | Tensor]:
        """``{"sanity/<point>/<column>": mean}`` for every point updated, and the mean ``sanity_curve``."""
        out: dict[str, float | Tensor] = {}
        for j, row in enumerate(self.rows):
            if not bool((self.count[j] > 0).any()):
                continue
            for k, column in enumerate(self.similarity_columns):
                n = float(self.count[j, k])
                out[f"sanity/{row}/{column}"] = float(self.similarity_sum[j, k]) / n if n else float("nan")
        if float(self.curve_count) > 0:
            out["sanity_curve"] = self.curve_sum / self.curve_count
        return out

    def reset(self) -> None:
        """Zero the states and forget the per-image values."""
        super().reset()
        self.last = {}
