"""What a results table shows per cell besides the mean: a bootstrap interval and a paired test against a reference.

Both take per-image values (one per explained image, as in the runs' records; ``None`` or ``NaN`` where an image has
no value) and are plain numpy and scipy:

1. :func:`bootstrap_ci`: percentile bootstrap interval of the mean over images (Efron, Tibshirani, "An
   Introduction to the Bootstrap", 1993, ch. 13), seeded, so a table is the same at every rebuild.
2. :func:`paired_test`: two-sided Wilcoxon signed-rank p-value of two methods' values on the same images (Wilcoxon,
   "Individual Comparisons by Ranking Methods", 1945; :func:`scipy.stats.wilcoxon`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import stats as sps

__all__ = ["bootstrap_ci", "paired_test"]

#: most resampled indices held at once (int64: 32 MiB); the resamples are drawn in blocks of rows below it
_BLOCK = 1 << 22


def _floats(values: Iterable[float | None]) -> np.ndarray:
    """``values`` as float64 ``[N]``, ``None`` as ``NaN``."""
    return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)


def bootstrap_ci(
    values: Iterable[float | None], *, seed: int = 0, resamples: int = 10000, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``.

    1. ``x``: the values without ``None`` / ``NaN`` (``n`` of them); fewer than 2 gives ``(nan, nan)``.
    2. ``resamples`` resamples of ``n`` values drawn with replacement, indices from
       ``numpy.random.default_rng(seed).integers(0, n, (rows, n))`` in blocks of rows (all rows at once while
       ``resamples * n <= 2**22``); the mean of each.
    3. The ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of those means (linear interpolation,
       ``numpy.quantile``'s default).

    The generator is the function's own, so the result depends on the input and the settings only. For
    ``resamples * n <= 2**22`` it equals ``scipy.stats.bootstrap((x,), np.mean, method="percentile",
    n_resamples=resamples, confidence_level=level, rng=numpy.random.default_rng(seed))``.

    Args:
        values: per-image values.
        seed: seed of the resampling.
        resamples: number of bootstrap resamples (a positive integer).
        level: coverage of the interval, in ``(0, 1)``.

    Returns:
        ``(low, high)`` as Python floats.
    """
    if isinstance(resamples, bool) or int(resamples) != resamples or resamples < 1:
        raise ValueError(f"bootstrap resamples must be a positive integer, got {resamples!r}")
    if isinstance(level, bool) or not 0 < level < 1:
        raise ValueError(f"bootstrap level must be a coverage in (0, 1) such as 0.95, got {level!r}")
    x = _floats(values)
    x = x[~np.isnan(x)]
    n, resamples = len(x), int(resamples)
    if n < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    rows = max(1, _BLOCK // n)
    means = np.concatenate(
        [x[rng.integers(0, n, (min(rows, resamples - k), n))].mean(1) for k in range(0, resamples, rows)]
    )
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def paired_test(a: Sequence[float | None], b: Sequence[float | None]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of ``a`` against ``b``, paired by position (image by image).

    1. Pairs with ``None`` / ``NaN`` on either side are dropped.
    2. Fewer than 2 pairs left: ``NaN`` (no test). Every difference zero: ``1.0`` (no evidence of a difference;
       scipy would warn or return ``NaN``).
    3. Otherwise :func:`scipy.stats.wilcoxon` ``(a, b)`` with its defaults: zero differences dropped
       (``zero_method="wilcox"``) and ``method="auto"`` (SciPy 1.17: the exact null distribution for at most 50
       pairs without ties or zeros, all sign flips for at most 13 pairs with them, else the normal approximation).
       Its warnings are silenced and a ``ValueError`` from it gives ``NaN``.

    ``a is b`` (the reference row compared with itself) gives ``NaN``: the table shows no p-value there rather
    than a 1.0 that looks like a test result. Two equal but distinct sequences are a test and give ``1.0``.

    Args:
        a: per-image values of a method.
        b: the reference method's values on the same images, in the same order.

    Returns:
        The p-value as a Python float (``NaN`` as above).
    """
    if a is b:
        return math.nan
    x, y = _floats(a), _floats(b)
    if x.shape != y.shape:
        raise ValueError(f"paired_test needs one value per image on both sides, got {len(x)} and {len(y)} values")
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    if len(x) < 2:
        return math.nan
    if bool(np.all(x == y)):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return float(sps.wilcoxon(x, y).pvalue)
        except ValueError:
            return math.nan
