"""The papers' saliency metrics as ``torchmetrics.Metric`` s (SPEC "Evaluation", HDM paper §4.5-4.6, MDM paper §4.2).

- :class:`AverageDropIncrease`: Average Drop / Average Increase (Grad-CAM++; HDM paper §4.5, Table 1).
- :class:`DeletionInsertion`: deletion / insertion AUC (RISE protocol as followed by Score-CAM; HDM paper Table 2).
- :class:`Proportion`: energy-based pointing game (Score-CAM; HDM paper §4.6, Table 3).
- :class:`SegmentationScores`: Dice, IoU, PPV, Sensitivity of the binarised map (MDM paper §4.2, Table 1).
- :func:`saliency_metrics`: a ``MetricCollection`` of the requested families by name.
- ``stability`` (:class:`~hdm_lightning.metrics.stability.MapStability`): agreement of a method's maps with its own
  reruns under conditions that should not matter; listed in :data:`EVALUATION_FAMILIES` with the families here.

Shared contract:

- ``update(images, saliency, target, mask=None)`` for every metric: ``images [B, C, H, W]`` normalised as the
  classifier expects, ``saliency [B, 1, H, W]`` (any real range: scores rank pixels or apply ``N``), ``target``
  LongTensor ``[B]`` (the explained class), ``mask`` BoolTensor ``[B, H, W]`` (ground-truth foreground; required by
  :class:`Proportion` and :class:`SegmentationScores`, ignored by the others).
- Pixel ranking, "top p %", binarising "at percentile q" and the canvases are the project decisions documented in
  :mod:`hdm_lightning.metrics.perturbation`: descending saliency, ties by raster index, half-up rounding of the
  pixel count, binarising at q = keeping the top ``(100 - q) %`` pixels by rank.
- Scores use the softmax probability ``Y_c`` of the explained class. The classifier is a plain attribute (not a
  submodule: moving or syncing a metric never touches it), run in eval mode without gradients on the inputs'
  device, at most ``batch_size`` perturbed images per forward; ``forward_passes`` counts the samples it was fed
  (a running total on this process, not reset by ``reset()`` and not synced).
- State: float64 sums and counts with ``dist_reduce_fx="sum"``, so ``compute()`` after a DDP sync (or after
  ``merge_state``) equals the single-process value. ``compute()`` returns a dict with slash keys: Python floats,
  and float64 tensors for curves. ``NaN`` where no image was counted.
- Per-image values of the last ``update`` are in ``metric.last``: a dict of float64 tensors ``[B]`` (curves
  ``[B, steps + 1]``) under the same keys as ``compute()`` (``NaN`` for a skipped image), plus the raw
  probabilities where noted.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection

from hdm_lightning.masks.ops import normalize
from hdm_lightning.metrics.perturbation import (
    as_channel_tensor,
    check_inputs,
    class_probabilities,
    keep_count,
    make_canvas,
    rank_order,
    rank_positions,
    step_counts,
)
from hdm_lightning.metrics.stability import MapStability

__all__ = [
    "EVALUATION_FAMILIES",
    "METRIC_FAMILIES",
    "AverageDropIncrease",
    "DeletionInsertion",
    "Proportion",
    "SegmentationScores",
    "saliency_metrics",
]

DROP_BASELINES = ("zero", "mean", "blur", "black")
INSERTION_CANVASES = ("blur", "zero")
DELETION_VALUES = ("black", "blur")


def _percent_key(q: float) -> str:
    """``70 -> "70"``, ``12.5 -> "12.5"`` for the slash keys."""
    return f"{q:g}"


def _check_percents(percents: Iterable[float], name: str) -> tuple[float, ...]:
    values = tuple(percents)
    if not values:
        raise ValueError(f"{name} must name at least one percentage, got {values!r}")
    for q in values:
        if isinstance(q, bool) or not isinstance(q, int | float) or not 0 <= q <= 100:
            raise ValueError(f"{name} must be numbers in [0, 100], got {q!r} in {values!r}")
    keys = [_percent_key(q) for q in values]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{name} has duplicates: {values!r}")
    return values


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer (masked images per forward), got {batch_size!r}")
    return int(batch_size)


def _mean_or_nan(total: Tensor, count: Tensor) -> Tensor:
    return total / count if bool(count > 0) else torch.full_like(total, float("nan"))


class _SaliencyMetric(Metric):
    """Common flags: no gradients, states merge by summing (``merge_state`` works), mixed better-directions."""

    is_differentiable: ClassVar[bool] = False
    higher_is_better: ClassVar[bool | None] = None
    full_state_update: ClassVar[bool] = False
    #: whether ``update`` needs ``mask`` (the factory's caller leaves such metrics out on data without masks)
    requires_mask: ClassVar[bool] = False
    #: whether the metric runs the classifier
    requires_model: ClassVar[bool] = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.last: dict[str, Tensor] = {}

    def _add_sum(self, name: str, shape: tuple[int, ...] = ()) -> None:
        self.add_state(name, default=torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")

    def _accumulate(self, name: str, value: Tensor) -> None:
        state = getattr(self, name)
        setattr(self, name, state + value.to(state.device, state.dtype))


class _ModelMetric(_SaliencyMetric):
    """Holds the classifier as a plain attribute and counts the samples it was fed."""

    requires_model: ClassVar[bool] = True

    def __init__(self, model: nn.Module, batch_size: int = 64, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(model, nn.Module):
            raise ValueError(f"{type(self).__name__} needs the classifier (an nn.Module), got {type(model).__name__}")
        # Not a registered submodule: metric.to(device), state_dict() and DDP syncing must not touch the model.
        object.__setattr__(self, "model", model)
        self.batch_size = _check_batch_size(batch_size)
        self.forward_passes = 0

    def __deepcopy__(self, memo: dict[int, Any]) -> _ModelMetric:
        """Copy the metric but share the classifier: ``clone()`` must not duplicate the caller's weights."""
        memo[id(self.model)] = self.model
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        new.__setstate__(copy.deepcopy(self.__getstate__(), memo))
        return new

    def _probabilities(self, n_samples: int, make_inputs: Callable[[int, int], tuple[Tensor, Tensor]]) -> Tensor:
        probs = class_probabilities(self.model, n_samples, make_inputs, self.batch_size)
        self.forward_passes += n_samples
        return probs


class AverageDropIncrease(_ModelMetric):
    """Average Drop and Average Increase (Grad-CAM++; HDM paper §4.5, MDM paper §4.2).

    For each muted share ``q`` (SPEC's 70/80/90 % are the *muted* pixels) keep the top ``(100 - q) %`` pixels by
    rank, set the rest to the baseline and score ``O_c``; with ``Y_c`` the score of the unmodified image:

    - ``drop/q = mean_i max(0, Y_i - O_i) / Y_i * 100`` (lower is better; an image with ``Y_i = 0``, an
      underflowed softmax, contributes 0: it has nothing to drop),
    - ``increase/q = mean_i [O_i > Y_i] * 100`` (higher is better).

    Forward passes per update: ``B * (1 + len(percents))``.

    Args:
        model: classifier returning logits ``[N, K]``.
        percents: muted shares ``q`` in percent.
        baseline: value of the muted pixels: ``"zero"`` (0 in the normalised tensor = the dataset mean colour; SPEC
            decision, default), ``"mean"`` (the image's own per-channel mean), ``"blur"`` (the image blurred by a
            Gaussian, kernel about a tenth of the side) or ``"black"`` (raw 0; needs ``mean`` and ``std``).
        mean: the classifier's preprocessing mean (only for ``"black"``).
        std: the classifier's preprocessing std (only for ``"black"``).
        batch_size: most masked images per forward.
        blur_kernel: odd kernel side for ``"blur"``; ``None`` = about a tenth of the shorter side.
        blur_sigma: Gaussian sigma in pixels for ``"blur"``; ``None`` = ``0.15 * kernel + 0.35``.
        **kwargs: passed to ``torchmetrics.Metric``.

    ``last`` holds ``drop/q`` and ``increase/q`` per image plus ``probability`` (``Y_c``) and ``probability/q``
    (``O_c``).
    """

    def __init__(
        self,
        model: nn.Module,
        percents: Sequence[float] = (70, 80, 90),
        baseline: str = "zero",
        mean: Sequence[float] | Tensor | None = None,
        std: Sequence[float] | Tensor | None = None,
        batch_size: int = 64,
        blur_kernel: int | None = None,
        blur_sigma: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, batch_size, **kwargs)
        self.percents = _check_percents(percents, "percents")
        if baseline not in DROP_BASELINES:
            raise ValueError(f"Unknown baseline {baseline!r}. Available: {list(DROP_BASELINES)}")
        self.baseline = baseline
        self.mean, self.std = as_channel_tensor(mean, "mean"), as_channel_tensor(std, "std")
        if baseline == "black" and (self.mean is None or self.std is None):
            raise ValueError("baseline='black' needs mean and std: pass the classifier's Preprocess.mean/.std")
        self.blur_kernel, self.blur_sigma = blur_kernel, blur_sigma
        n = len(self.percents)
        self._add_sum("drop_sum", (n,))
        self._add_sum("increase_sum", (n,))
        self._add_sum("count")

    def update(self, images: Tensor, saliency: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        """Score the images and their partly muted copies; ``mask`` is ignored."""
        saliency, target, _ = check_inputs(images, saliency, target, mask, metric=type(self).__name__)
        B, _, H, W = images.shape
        positions = rank_positions(saliency)  # [B, HW]
        canvas = make_canvas(self.baseline, images, self.mean, self.std, self.blur_kernel, self.blur_sigma)
        # Sample s = level * B + b; level 0 is the unmodified image (all pixels kept), level j the j-th share.
        kept = torch.tensor(
            [H * W] + [keep_count(100 - q, H * W) for q in self.percents], device=images.device, dtype=torch.long
        )

        def make_inputs(start: int, stop: int) -> tuple[Tensor, Tensor]:
            s = torch.arange(start, stop, device=images.device)
            b, level = s % B, s // B
            keep = (positions[b] < kept[level, None]).view(-1, 1, H, W)
            return torch.where(keep, images[b], canvas[b]), target[b]

        probs = self._probabilities(B * (1 + len(self.percents)), make_inputs).view(1 + len(self.percents), B)
        Y, O = probs[0], probs[1:]  # [B], [Q, B]
        drop = torch.where(Y > 0, torch.clamp(Y - O, min=0) / torch.where(Y > 0, Y, 1.0), 0.0) * 100
        increase = (O > Y).double() * 100
        self._accumulate("drop_sum", drop.sum(1))
        self._accumulate("increase_sum", increase.sum(1))
        self._accumulate("count", torch.tensor(float(B)))
        self.last = {"probability": Y}
        for j, q in enumerate(self.percents):
            k = _percent_key(q)
            self.last[f"drop/{k}"], self.last[f"increase/{k}"] = drop[j], increase[j]
            self.last[f"probability/{k}"] = O[j]

    def compute(self) -> dict[str, float]:
        """``{"drop/q": %, "increase/q": %}`` for every ``q`` in ``percents``."""
        drop = _mean_or_nan(self.drop_sum, self.count)
        increase = _mean_or_nan(self.increase_sum, self.count)
        out = {}
        for j, q in enumerate(self.percents):
            out[f"drop/{_percent_key(q)}"] = float(drop[j])
            out[f"increase/{_percent_key(q)}"] = float(increase[j])
        return out


class DeletionInsertion(_ModelMetric):
    """Deletion and insertion AUC (RISE, as followed by Score-CAM and HDM paper §4.5, Table 2).

    Pixels are changed in rank order, ``round(k / steps * H * W)`` of them after step ``k = 0 .. steps`` (1 % per
    step for ``steps = 100``). Deletion replaces them by the deletion value in the image; insertion copies them from
    the image onto the canvas. ``Y_c`` is recorded at each of the ``steps + 1`` points and the curve is integrated
    by the trapezoid rule over the fraction ``[0, 1]``. Lower deletion and higher insertion are better.
    RISE's own code changes ``ceil(H * W / steps)`` pixels per step; rounding ``k / steps * H * W`` instead makes
    the last point exactly the fully deleted / fully inserted image for any size.

    Forward passes per update: ``2 * B * (steps + 1)`` (the 0 % deletion and 100 % insertion points are the original
    image, scored again so each curve is self-contained).

    Args:
        model: classifier returning logits ``[N, K]``.
        steps: number of steps (the curve has ``steps + 1`` points).
        insertion_canvas: ``"blur"`` (the image blurred, RISE; default) or ``"zero"`` (black raw pixels).
        deletion_value: ``"black"`` (raw pixel 0, RISE/SPEC; default) or ``"blur"`` (the blurred image).
        mean: the classifier's preprocessing mean; black in the normalised tensor is ``(0 - mean) / std``.
        std: the classifier's preprocessing std.
        batch_size: most perturbed images per forward; all ``steps + 1`` copies of all images share the chunks.
        blur_kernel: odd kernel side of the blur; ``None`` = about a tenth of the shorter side.
        blur_sigma: Gaussian sigma in pixels; ``None`` = ``0.15 * kernel + 0.35``.
        **kwargs: passed to ``torchmetrics.Metric``.

    ``compute()`` keys: ``deletion``, ``insertion`` (mean AUC over images) and ``deletion_curve``,
    ``insertion_curve`` (mean curves, float64 tensors ``[steps + 1]``). ``last`` has the same keys per image.
    """

    def __init__(
        self,
        model: nn.Module,
        steps: int = 100,
        insertion_canvas: str = "blur",
        deletion_value: str = "black",
        mean: Sequence[float] | Tensor | None = None,
        std: Sequence[float] | Tensor | None = None,
        batch_size: int = 64,
        blur_kernel: int | None = None,
        blur_sigma: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, batch_size, **kwargs)
        step_counts(steps, 1)  # validates steps
        self.steps = int(steps)
        if insertion_canvas not in INSERTION_CANVASES:
            raise ValueError(f"Unknown insertion_canvas {insertion_canvas!r}. Available: {list(INSERTION_CANVASES)}")
        if deletion_value not in DELETION_VALUES:
            raise ValueError(f"Unknown deletion_value {deletion_value!r}. Available: {list(DELETION_VALUES)}")
        self.insertion_canvas, self.deletion_value = insertion_canvas, deletion_value
        self.mean, self.std = as_channel_tensor(mean, "mean"), as_channel_tensor(std, "std")
        needs_black = deletion_value == "black" or insertion_canvas == "zero"
        if needs_black and (self.mean is None or self.std is None):
            raise ValueError(
                "DeletionInsertion needs mean and std (the classifier's Preprocess.mean/.std): black raw pixels are "
                "(0 - mean) / std in the normalised tensor"
            )
        self.blur_kernel, self.blur_sigma = blur_kernel, blur_sigma
        self._add_sum("deletion_sum")
        self._add_sum("insertion_sum")
        self._add_sum("deletion_curve_sum", (self.steps + 1,))
        self._add_sum("insertion_curve_sum", (self.steps + 1,))
        self._add_sum("count")

    def _canvas(self, kind: str, images: Tensor) -> Tensor:
        kind = {"zero": "black"}.get(kind, kind)  # insertion's "zero" canvas is black raw pixels
        return make_canvas(kind, images, self.mean, self.std, self.blur_kernel, self.blur_sigma)

    def update(self, images: Tensor, saliency: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        """Score every deletion and insertion step of every image; ``mask`` is ignored."""
        saliency, target, _ = check_inputs(images, saliency, target, mask, metric=type(self).__name__)
        B, _, H, W = images.shape
        P = self.steps + 1
        positions = rank_positions(saliency)  # [B, HW]
        counts = torch.tensor(step_counts(self.steps, H * W), device=images.device, dtype=torch.long)
        # Curve 0 (deletion): changed pixels come from the deletion canvas, the rest from the image.
        # Curve 1 (insertion): changed pixels come from the image, the rest from the insertion canvas.
        changed_source = torch.cat([self._canvas(self.deletion_value, images), images])
        other_source = torch.cat([images, self._canvas(self.insertion_canvas, images)])

        def make_inputs(start: int, stop: int) -> tuple[Tensor, Tensor]:
            s = torch.arange(start, stop, device=images.device)  # s = (curve * B + b) * P + k
            src, k = s // P, s % P
            b = src % B
            changed = (positions[b] < counts[k, None]).view(-1, 1, H, W)
            return torch.where(changed, changed_source[src], other_source[src]), target[b]

        curves = self._probabilities(2 * B * P, make_inputs).view(2, B, P)
        auc = torch.trapezoid(curves, dx=1.0 / self.steps, dim=-1)  # [2, B], area over the fraction [0, 1]
        self._accumulate("deletion_sum", auc[0].sum())
        self._accumulate("insertion_sum", auc[1].sum())
        self._accumulate("deletion_curve_sum", curves[0].sum(0))
        self._accumulate("insertion_curve_sum", curves[1].sum(0))
        self._accumulate("count", torch.tensor(float(B)))
        self.last = {"deletion": auc[0], "insertion": auc[1], "deletion_curve": curves[0], "insertion_curve": curves[1]}

    def compute(self) -> dict[str, float | Tensor]:
        """``{"deletion", "insertion"}`` mean AUCs and ``{"deletion_curve", "insertion_curve"}`` mean curves."""
        return {
            "deletion": float(_mean_or_nan(self.deletion_sum, self.count)),
            "insertion": float(_mean_or_nan(self.insertion_sum, self.count)),
            "deletion_curve": _mean_or_nan(self.deletion_curve_sum, self.count),
            "insertion_curve": _mean_or_nan(self.insertion_curve_sum, self.count),
        }


class Proportion(_SaliencyMetric):
    """Energy-based pointing game (Score-CAM; HDM paper §4.6, Table 3): share of ``L = N(map)`` inside the GT.

    ``proportion_i = sum_{p in GT} L_p / sum_p L_p * 100``, averaged over images (the papers report percentages,
    e.g. HDM 57.97 %). Edge cases (project decisions):

    - ``sum L = 0`` (a constant or all-zero map, which ``N`` maps to zeros): the map expresses no preference, so it
      is scored as a uniform map, i.e. the GT's area fraction.
    - An image without any GT pixel is skipped (the ratio measures nothing) and counted in ``proportion/skipped``.

    ``compute()`` keys: ``proportion`` (%), ``proportion/images`` (images counted), ``proportion/skipped``.
    ``last["proportion"]`` is per image, ``NaN`` for skipped images.
    """

    requires_mask: ClassVar[bool] = True
    higher_is_better: ClassVar[bool] = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._add_sum("proportion_sum")
        self._add_sum("count")
        self._add_sum("skipped")

    def update(self, images: Tensor, saliency: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        """Add the images' proportions; ``mask`` is required, ``target`` only checked for shape."""
        saliency, _, mask = check_inputs(images, saliency, target, mask, need_mask=True, metric=type(self).__name__)
        L = normalize(saliency.double()).flatten(1)  # N per image (SPEC notation)
        gt = mask.flatten(1)
        total, inside = L.sum(1), (L * gt).sum(1)
        area = gt.double().mean(1)
        share = torch.where(total > 0, inside / torch.where(total > 0, total, 1.0), area) * 100
        valid = gt.any(1)
        share = torch.where(valid, share, float("nan"))
        self._accumulate("proportion_sum", share[valid].sum())
        self._accumulate("count", valid.sum().double())
        self._accumulate("skipped", (~valid).sum().double())
        self.last = {"proportion": share}

    def compute(self) -> dict[str, float]:
        """``{"proportion": %, "proportion/images": n, "proportion/skipped": n}``."""
        return {
            "proportion": float(_mean_or_nan(self.proportion_sum, self.count)),
            "proportion/images": float(self.count),
            "proportion/skipped": float(self.skipped),
        }


class SegmentationScores(_SaliencyMetric):
    """Dice, IoU, PPV and Sensitivity of the binarised map against the GT foreground (MDM paper §4.2, Table 1).

    For each percentile ``q`` the prediction ``P`` is the top ``(100 - q) %`` pixels by rank (project decision:
    binarise by rank, not by ``>= value``), ``G`` the GT foreground:
    Dice ``2|P∩G| / (|P| + |G|)``, IoU ``|P∩G| / |P∪G|``, PPV ``|P∩G| / |P|``, Sensitivity ``|P∩G| / |G|``, as
    fractions in ``[0, 1]`` like MDM paper, averaged over images (macro) for each ``q``.
    Edge cases (project decisions): an image with an empty GT is skipped and counted in ``segmentation/skipped``
    (Sensitivity is 0/0 and the other scores are 0 whatever the map); an empty prediction (``(100 - q) %`` of
    the pixels rounds to 0) has PPV 0, like its Dice and IoU.

    ``compute()`` keys: ``dice/q``, ``iou/q``, ``ppv/q``, ``sensitivity/q`` for every ``q``, ``dice/mean`` etc.
    (mean over ``q`` of the per-``q`` scores), ``segmentation/images`` and ``segmentation/skipped``. ``last`` has
    the per-``q`` and ``/mean`` keys per image, ``NaN`` for skipped images.

    Args:
        percents: percentiles ``q`` (MDM: 70 .. 99).
        **kwargs: passed to ``torchmetrics.Metric``.
    """

    requires_mask: ClassVar[bool] = True
    higher_is_better: ClassVar[bool] = True
    SCORES: ClassVar[tuple[str, ...]] = ("dice", "iou", "ppv", "sensitivity")

    def __init__(self, percents: Iterable[float] = range(70, 100), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.percents = _check_percents(percents, "percents")
        for name in self.SCORES:
            self._add_sum(f"{name}_sum", (len(self.percents),))
        self._add_sum("count")
        self._add_sum("skipped")

    def update(self, images: Tensor, saliency: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        """Add the images' scores; ``mask`` is required, ``target`` only checked for shape."""
        saliency, _, mask = check_inputs(images, saliency, target, mask, need_mask=True, metric=type(self).__name__)
        n_pixels = saliency.shape[-2] * saliency.shape[-1]
        gt = mask.flatten(1)
        # |P ∩ G| for the top-n pixels is a prefix sum of the GT read in rank order: one sort serves every q.
        hits = gt.gather(1, rank_order(saliency)).double().cumsum(1)
        hits = torch.cat([torch.zeros_like(hits[:, :1]), hits], 1)  # hits[:, n] = |top-n ∩ G|
        kept = torch.tensor([keep_count(100 - q, n_pixels) for q in self.percents], device=gt.device)
        inter = hits[:, kept]  # [B, Q]
        P = kept.double()[None]  # [1, Q]
        G = gt.double().sum(1, keepdim=True)  # [B, 1]
        valid = G[:, 0] > 0
        G1 = torch.where(G > 0, G, 1.0)
        scores = {
            "dice": 2 * inter / torch.where(P + G > 0, P + G, 1.0),
            "iou": inter / torch.where(P + G - inter > 0, P + G - inter, 1.0),
            "ppv": torch.where(P > 0, inter / torch.where(P > 0, P, 1.0), 0.0),
            "sensitivity": inter / G1,
        }
        self.last = {}
        for name, value in scores.items():
            value = torch.where(valid[:, None], value, float("nan"))
            self._accumulate(f"{name}_sum", value[valid].sum(0))
            for j, q in enumerate(self.percents):
                self.last[f"{name}/{_percent_key(q)}"] = value[:, j]
            self.last[f"{name}/mean"] = value.mean(1)
        self._accumulate("count", valid.sum().double())
        self._accumulate("skipped", (~valid).sum().double())

    def compute(self) -> dict[str, float]:
        """Per-``q`` and mean-over-``q`` macro scores plus the image counts."""
        out = {}
        for name in self.SCORES:
            mean = _mean_or_nan(getattr(self, f"{name}_sum"), self.count)
            for j, q in enumerate(self.percents):
                out[f"{name}/{_percent_key(q)}"] = float(mean[j])
            out[f"{name}/mean"] = float(mean.mean())
        out["segmentation/images"] = float(self.count)
        out["segmentation/skipped"] = float(self.skipped)
        return out


#: metric family name -> class; the one list the factory, docs and tests read.
METRIC_FAMILIES: dict[str, type[_SaliencyMetric]] = {
    "drop_increase": AverageDropIncrease,
    "deletion_insertion": DeletionInsertion,
    "proportion": Proportion,
    "segmentation": SegmentationScores,
}

#: every family ``evaluation.metrics`` accepts: the map families above (``update(images, saliency, target,
#: mask)``), and those that rerun the saliency method and compare maps (``requires_method``; see
#: :class:`~hdm_lightning.metrics.stability.MapStability`, driven by :class:`hdm_lightning.evaluation.MetricSuite`).
EVALUATION_FAMILIES: dict[str, type[Metric]] = {**METRIC_FAMILIES, "stability": MapStability}


def saliency_metrics(
    model: nn.Module | None,
    kind_names: Iterable[str] | str,
    mean: Sequence[float] | Tensor | None = None,
    std: Sequence[float] | Tensor | None = None,
    batch_size: int = 64,
    params: Mapping[str, Mapping[str, Any]] | None = None,
) -> MetricCollection:
    """A ``MetricCollection`` of the requested metric families, keyed by family name.

    Every member takes ``update(images, saliency, target, mask=None)``; ``compute()`` returns one flat dict (the
    families' keys do not overlap). ``"proportion"`` and ``"segmentation"`` need ``mask`` (their class attribute
    ``requires_mask``): request them only on data with ground-truth masks.

    Args:
        model: the classifier (needed by ``"drop_increase"`` and ``"deletion_insertion"``).
        kind_names: families from :data:`METRIC_FAMILIES`: ``"drop_increase"``, ``"deletion_insertion"``,
            ``"proportion"``, ``"segmentation"``.
        mean: the classifier's preprocessing mean (``Preprocess.mean``), for black pixels.
        std: the classifier's preprocessing std.
        batch_size: most perturbed images per forward for the model-based families.
        params: per-family keyword arguments, e.g. ``{"drop_increase": {"baseline": "blur"}}``.

    Raises:
        ValueError: for an unknown or repeated family, ``params`` for a family not requested, or a model-based
            family without a model.
    """
    names = [kind_names] if isinstance(kind_names, str) else list(kind_names)
    reruns = [n for n in names if n in EVALUATION_FAMILIES and n not in METRIC_FAMILIES]
    if reruns:
        raise ValueError(
            f"metric family {reruns[0]!r} reruns the saliency method and compares maps: build "
            f"{EVALUATION_FAMILIES[reruns[0]].__name__} directly, or use hdm_lightning.evaluation.MetricSuite"
        )
    unknown = [n for n in names if n not in METRIC_FAMILIES]
    if unknown:
        raise ValueError(f"Unknown saliency metric {unknown[0]!r}. Available: {list(METRIC_FAMILIES)}")
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"kind_names must name each family once (at least one), got {names!r}")
    params = dict(params or {})
    stray = sorted(set(params) - set(names))
    if stray:
        raise ValueError(f"params given for families that were not requested: {stray}; requested: {names}")
    metrics: dict[str, Metric] = {}
    for name in names:
        cls = METRIC_FAMILIES[name]
        kwargs = dict(params.get(name, {}))
        if cls.requires_model:
            if model is None:
                raise ValueError(f"metric family {name!r} runs the classifier: pass model")
            kwargs = {"mean": mean, "std": std, "batch_size": batch_size, **kwargs}
            metrics[name] = cls(model, **kwargs)
        else:
            metrics[name] = cls(**kwargs)
    # compute_groups=False: the families never share states, and grouping would compare them after every update.
    return MetricCollection(metrics, compute_groups=False)
