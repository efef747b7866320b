"""ROAD, Remove And Debias (Rong et al., ICML 2022, arXiv 2202.00449): family ``road``.

Paper: A Consistent and Efficient Evaluation Strategy for Attribution Methods (arXiv 2202.00449).

Protocol. For each share ``p`` in ``percents`` remove the ``p %`` most relevant pixels (MoRF) or the ``p %``
least relevant ones (LeRF), fill them by *noisy linear imputation* and read the classifier's softmax probability
``Y_c`` of the explained class. The paper's summary of a curve is its mean over the percents (its "AUC"); lower
is better for MoRF (removing what the map calls important should hurt), higher for LeRF.

Pixel order (project convention, :mod:`hdm_lightning.metrics.perturbation`): descending saliency, ties in the
fixed shuffled order, ``n = round(p / 100 * H * W)`` rounded half up. MoRF removes the ``n`` pixels of rank
``< n``, LeRF the ``n`` pixels of rank ``>= H * W - n``. The paper's code instead truncates ``int(H * W * p)``
and breaks ties by adding ``1e-4`` Gaussian noise to the rescaled map.

Imputation (the paper's §4; :func:`linear_imputation`): every removed pixel becomes the weighted mean of its 8
in-image neighbours, weight 1/6 for the 4 direct and 1/12 for the 4 diagonal ones (:data:`NEIGHBOUR_WEIGHTS`),
removed neighbours being unknowns too: one sparse linear system over all removed pixels, solved once for all
channels. Then ``N(0, noise²)`` is added to the removed pixels only.

Why not pytorch-grad-cam's ``NoisyLinearImputer`` (``pytorch_grad_cam.metrics.road``, a copy of the paper's
code)? Its system is the same and the tests check that our imputation equals it, but: its noise comes from the
global torch RNG (``randn_like``), so a map's score would depend on what ran before and on its batch; its noise
std is in units of whatever tensor it is given (the paper gives it raw ``[0, 1]`` pixels, pytorch-grad-cam the
normalised tensor); it builds the matrix entry by entry in a ``lil_matrix`` and takes CPU tensors only. Ours
builds the system vectorised (COO) and factorises it with SuperLU on the symmetric pattern (the system matrix is
symmetric), about 2-3x faster at 224 px.

Space. The imputation runs on the normalised tensor the model sees: the weights sum to 1, so it commutes with
the per-channel affine normalisation, and the result is the same as imputing raw pixels. The noise does not
commute: as in the paper's code (which imputes ``[0, 1]`` pixels before normalising, noise 0.01), ``noise`` is a
std in raw pixel units, i.e. ``noise / std_c`` in channel ``c`` of the normalised tensor; it needs ``std``.

Determinism. The noise of image ``i``, order ``o`` and percent ``p`` comes from a generator seeded by
``(seed, digest of the image's values, o, p)``: the same image and map get the same score whatever the batch,
the device or what ran before; two maps that remove the same pixels get the same perturbed image.

Cost. ``2 * len(percents) * B`` forward passes per update (no unperturbed pass). The sparse solves run on the
CPU, one per image, order and percent; at 224 px they take seconds per image and dominate the forward passes.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.linalg import splu
from torch import Tensor, nn

from hdm_lightning.metrics.base import ModelMetric, check_percents, mean_or_nan, percent_key
from hdm_lightning.metrics.family import register_metric
from hdm_lightning.metrics.perturbation import (
    DEFAULT_TIES,
    as_channel_tensor,
    check_inputs,
    check_ties,
    evaluation_ties,
    keep_count,
    rank_positions,
)
from hdm_lightning.metrics.stability import id_noise

__all__ = ["NEIGHBOUR_WEIGHTS", "ORDERS", "ROAD", "image_digest", "linear_imputation", "removed_pixels"]

#: ``((dy, dx), weight)`` of the 8 neighbours in the imputation: 1/6 direct, 1/12 diagonal (ROAD, arXiv
#: 2202.00449, §4; the same table as pytorch-grad-cam's ``neighbors_weights``).
NEIGHBOUR_WEIGHTS: tuple[tuple[tuple[int, int], float], ...] = (
    ((1, 1), 1 / 12),
    ((0, 1), 1 / 6),
    ((-1, 1), 1 / 12),
    ((1, -1), 1 / 12),
    ((0, -1), 1 / 6),
    ((-1, -1), 1 / 12),
    ((1, 0), 1 / 6),
    ((-1, 0), 1 / 6),
)
#: the two removal orders, in the order of the perturbed samples: most relevant first, least relevant first.
ORDERS = ("morf", "lerf")


def removed_pixels(positions: Tensor, n_removed: int, order: str) -> Tensor:
    """The pixels an order removes: bool ``[..., H * W]`` (True = removed).

    Args:
        positions: rank of every pixel (0 = most salient), :func:`~hdm_lightning.metrics.perturbation.rank_positions`.
        n_removed: how many pixels to remove.
        order: ``"morf"`` (the ``n_removed`` first by rank) or ``"lerf"`` (the ``n_removed`` last).
    """
    if order == "morf":
        return positions < n_removed
    if order == "lerf":
        return positions >= positions.shape[-1] - n_removed
    raise ValueError(f"Unknown ROAD order {order!r}. Available: {list(ORDERS)}")


def _imputation_system(removed: np.ndarray, values: np.ndarray) -> tuple[coo_matrix, np.ndarray]:
    """The linear system ``A x = b`` of the removed pixels (the ROAD paper's §4; pytorch-grad-cam's layout).

    Row ``i`` (removed pixel ``i``): ``sum_j w_ij x_j - (sum_j w_ij) x_i = -sum_k w_ik v_k`` over its in-image
    neighbours, ``j`` removed (unknown) and ``k`` kept (value ``v_k``), i.e. ``x_i`` = weighted mean of its neighbours.

    Args:
        removed: bool ``[H, W]``.
        values: float64 ``[C, H * W]``, the image.

    Returns:
        ``A`` ``[N, N]`` (symmetric) and ``b`` ``[N, C]`` for the ``N`` removed pixels in raster order.
    """
    height, width = removed.shape
    flat = removed.reshape(-1)
    unknown = np.flatnonzero(flat)
    n = len(unknown)
    index = np.full(flat.shape, -1)
    index[unknown] = np.arange(n)
    y, x = np.divmod(unknown, width)
    rows, cols, entries = [np.arange(n)], [np.arange(n)], []
    diagonal = np.zeros(n)
    b = np.zeros((n, values.shape[0]))
    for (dy, dx), weight in NEIGHBOUR_WEIGHTS:
        ny, nx = y + dy, x + dx
        rows_in = np.flatnonzero((ny >= 0) & (ny < height) & (nx >= 0) & (nx < width))
        neighbour = ny[rows_in] * width + nx[rows_in]
        diagonal[rows_in] += weight
        missing = flat[neighbour]
        rows.append(rows_in[missing])
        cols.append(index[neighbour[missing]])
        entries.append(np.full(int(missing.sum()), weight))
        b[rows_in[~missing]] -= weight * values[:, neighbour[~missing]].T
    entries.insert(0, -diagonal)
    a = coo_matrix((np.concatenate(entries), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    return a, b


def linear_imputation(image: Tensor, removed: Tensor) -> Tensor:
    """The image with its removed pixels filled by (noise-free) linear imputation: float64 ``[C, H, W]`` on the CPU.

    Each removed pixel equals the weighted mean of its in-image neighbours (:data:`NEIGHBOUR_WEIGHTS`), solved
    jointly for all removed pixels and channels (:func:`_imputation_system`, SuperLU). Kept pixels are unchanged.

    Args:
        image: ``[C, H, W]``, raw or normalised (the imputation commutes with a per-channel affine map).
        removed: bool ``[H, W]``; at least one pixel must be kept.
    """
    values = image.detach().to("cpu", torch.float64).numpy().reshape(image.shape[0], -1).copy()
    mask = removed.detach().to("cpu", torch.bool).numpy()
    flat = mask.reshape(-1)
    if flat.all():
        raise ValueError("linear imputation needs at least one kept pixel to impute from")
    if flat.any():
        a, b = _imputation_system(mask, values)
        solution = splu(a.tocsc(), permc_spec="MMD_AT_PLUS_A", options={"SymmetricMode": True}).solve(b)
        values[:, flat] = solution.T
    return torch.from_numpy(values).reshape(image.shape)


def image_digest(image: Tensor) -> str:
    """A digest of an image's values (as float32 on the CPU): the same image gives the same noise anywhere."""
    data = image.detach().to("cpu", torch.float32).contiguous().numpy()
    return hashlib.sha256(data.tobytes() + str(tuple(data.shape)).encode()).hexdigest()[:32]


def _check_settings(percents: Sequence[float], noise: float, seed: int) -> tuple[tuple[float, ...], float, int]:
    """Validate the ``evaluation.params.road`` settings; percents come back in increasing order."""
    values = check_percents(percents, "evaluation.params.road.percents")
    if any(q >= 100 for q in values):
        raise ValueError(
            f"evaluation.params.road.percents must be below 100 (removing every pixel leaves nothing to impute "
            f"from), got {list(values)!r}; the paper uses [10, 20, ..., 90]"
        )
    if isinstance(noise, bool) or not isinstance(noise, int | float) or not math.isfinite(noise) or noise < 0:
        raise ValueError(
            f"evaluation.params.road.noise must be a std >= 0 in raw pixel units (0.01 = the paper's), got {noise!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"evaluation.params.road.seed must be an integer, got {seed!r}")
    return tuple(sorted(values)), float(noise), seed


#: ROAD's shares of the pixels removed, in percent (the paper's 10 .. 90)
DEFAULT_PERCENTS = (10, 20, 30, 40, 50, 60, 70, 80, 90)


@register_metric("road")
class ROAD(ModelMetric):
    """ROAD MoRF and LeRF with noisy linear imputation (Rong et al., ICML 2022, arXiv 2202.00449).

    For every image and every ``p`` in ``percents``: ``road_morf/p`` is ``Y_c`` after removing the ``p %`` most
    relevant pixels (lower is better), ``road_lerf/p`` after removing the ``p %`` least relevant (higher is better),
    each removal filled by noisy linear imputation (module docstring). ``road_morf/auc`` and ``road_lerf/auc`` are
    the means over the percents (the paper's summary); ``road_gap/auc = road_lerf/auc - road_morf/auc`` (higher is
    better; about 0 for a random map; twice pytorch-grad-cam's ``ROADCombined``).

    Forward passes per update: ``2 * len(percents) * B``.

    Args:
        model: classifier returning logits ``[N, K]``.
        percents: shares of the pixels removed, each in ``[0, 100)`` (sorted increasingly).
        noise: std of the imputation noise in raw pixel units (``[0, 1]`` images); 0.01 as in the paper's code;
            0 for plain linear imputation.
        seed: mixed into the per-image noise seeds (another seed, other noise draws).
        mean: the classifier's preprocessing mean (unused: the imputation commutes with the normalisation).
        std: the classifier's preprocessing std; needed when ``noise > 0`` (``noise / std`` per channel).
        batch_size: most perturbed images per forward.
        ties: the order of equal saliency values (:func:`~hdm_lightning.metrics.perturbation.rank_order`).
        **kwargs: passed to ``torchmetrics.Metric``.

    ``compute()`` keys: ``road_morf/<p>``, ``road_morf/auc``, ``road_lerf/<p>``, ``road_lerf/auc``,
    ``road_gap/auc`` (floats) and ``road_morf_curve``, ``road_lerf_curve`` (mean curves, float64 ``[len(percents)]``).
    ``last`` has the same keys per image (curves ``[B, len(percents)]``).
    """

    columns: ClassVar[dict[str, bool]] = {"road_morf": False, "road_lerf": True, "road_gap": True}
    order: ClassVar[int] = 25  # after deletion_insertion (20), the other perturbation family; before proportion (30)
    markdown_tails: ClassVar[tuple[str, ...]] = ("auc",)
    curves: ClassVar[dict[str, str]] = {
        "road_morf_curve": "share of the pixels removed and imputed, most relevant first",
        "road_lerf_curve": "share of the pixels removed and imputed, least relevant first",
    }

    @classmethod
    def from_evaluation(cls, evaluation: Any) -> dict[str, Any]:
        """``evaluation.ties``."""
        return {"ties": evaluation_ties(evaluation)}

    @classmethod
    def curve_axis(cls, key: str, points: int, params: Mapping[str, Any]) -> tuple[list[float], str, str]:
        """x: the run's percents as fractions (sorted, as the curves are); y: the class probability after imputation."""
        percents = sorted(params.get("percents", DEFAULT_PERCENTS))
        if len(percents) != points:  # records of other settings than the config's: fall back to the point index
            return [float(i) for i in range(points)], f"{cls.curves[key]} (point index)", "probability"
        return [q / 100 for q in percents], cls.curves[key], "probability of the explained class"

    def __init__(
        self,
        model: nn.Module,
        percents: Sequence[float] = DEFAULT_PERCENTS,
        noise: float = 0.01,
        seed: int = 0,
        mean: Sequence[float] | Tensor | None = None,
        std: Sequence[float] | Tensor | None = None,
        batch_size: int = 64,
        ties: str = DEFAULT_TIES,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, batch_size, **kwargs)
        self.ties = check_ties(ties, "road")
        self.percents, self.noise, self.seed = _check_settings(percents, noise, seed)
        self.mean, self.std = as_channel_tensor(mean, "mean"), as_channel_tensor(std, "std")
        if self.noise > 0 and self.std is None:
            raise ValueError(
                "evaluation.params.road.noise is a std in raw pixel units: pass std (the classifier's "
                "Preprocess.std) to convert it to the normalised tensor, or set evaluation.params.road.noise: 0"
            )
        n = len(self.percents)
        self.add_sum("morf_sum", (n,))
        self.add_sum("lerf_sum", (n,))
        self.add_sum("count")

    def _removed_counts(self, n_pixels: int) -> list[int]:
        counts = [keep_count(q, n_pixels) for q in self.percents]
        if any(c >= n_pixels for c in counts):
            raise ValueError(
                f"evaluation.params.road.percents {list(self.percents)} remove every pixel of a {n_pixels}-pixel "
                "image (rounded half up): use smaller percents or larger images"
            )
        return counts

    def _perturbed(self, image: Tensor, removed: Tensor, digest: str, order: str, q: float) -> Tensor:
        """``image [C, H, W]`` with ``removed [H, W]`` filled by noisy linear imputation, in its dtype and device."""
        removed = removed.cpu()
        filled = linear_imputation(image, removed)
        if self.noise > 0:
            noise = id_noise(f"road/{self.seed}/{digest}/{order}/{percent_key(q)}", image.shape)
            filled += noise.mul_((self.noise / self.std).view(-1, 1, 1)).mul_(removed)
        return filled.to(image.device, image.dtype)

    def update(self, images: Tensor, saliency: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        """Score every image with each percent removed in both orders; ``mask`` is ignored."""
        saliency, target, _ = check_inputs(images, saliency, target, mask, metric=type(self).__name__)
        B, _, H, W = images.shape
        P = len(self.percents)
        counts = self._removed_counts(H * W)
        if self.noise > 0 and self.std.numel() != images.shape[1]:
            raise ValueError(
                f"std has {self.std.numel()} channels but images have {images.shape[1]}: pass the classifier's "
                "Preprocess.std"
            )
        positions = rank_positions(saliency, self.ties).cpu()  # [B, HW]; the imputation runs on the CPU
        digests = [image_digest(image) for image in images]

        def make_inputs(start: int, stop: int) -> tuple[Tensor, Tensor]:
            samples = []
            for s in range(start, stop):  # s = (order * P + j) * B + b
                o, j, b = s // (P * B), (s // B) % P, s % B
                removed = removed_pixels(positions[b], counts[j], ORDERS[o]).view(H, W)
                samples.append(self._perturbed(images[b], removed, digests[b], ORDERS[o], self.percents[j]))
            rows = torch.arange(start, stop, device=images.device) % B
            return torch.stack(samples), target[rows]

        probs = self._probabilities(2 * P * B, make_inputs).view(2, P, B)
        morf, lerf = probs[0].T, probs[1].T  # [B, P]
        self.accumulate("morf_sum", morf.sum(0))
        self.accumulate("lerf_sum", lerf.sum(0))
        self.accumulate("count", torch.tensor(float(B)))
        self.last = self._keys(morf, lerf)

    def _keys(self, morf: Tensor, lerf: Tensor) -> dict[str, Tensor]:
        """The slash keys of curves ``morf``, ``lerf`` (``[..., P]``): per percent, ``auc``, the gap and the curves."""
        out: dict[str, Tensor] = {}
        for head, curve in (("road_morf", morf), ("road_lerf", lerf)):
            for j, q in enumerate(self.percents):
                out[f"{head}/{percent_key(q)}"] = curve[..., j]
            out[f"{head}/auc"] = curve.mean(-1)
        out["road_gap/auc"] = out["road_lerf/auc"] - out["road_morf/auc"]
        out["road_morf_curve"], out["road_lerf_curve"] = morf, lerf
        return out

    def compute(self) -> dict[str, float | Tensor]:
        """Means over the images: floats per percent, ``auc`` and ``road_gap/auc``; the mean curves as tensors."""
        morf = mean_or_nan(self.morf_sum, self.count)
        lerf = mean_or_nan(self.lerf_sum, self.count)
        return {k: (v if k.endswith("_curve") else float(v)) for k, v in self._keys(morf, lerf).items()}
