"""A metric family describes itself, and :data:`METRICS` is the one list of families.

A metric family is a ``torchmetrics.Metric`` subclass that also derives from :class:`MetricFamily`, registered
under a name with :func:`register_metric`; ``evaluation.metrics`` names it. Everything else reads its
description from the class: :class:`~hdm_lightning.evaluation.MetricSuite` (what the metric needs: a mask, the
classifier, the saliency method; its keyword arguments from the ``evaluation:`` config section), the tables
(which columns, their order and direction, which ones the Markdown shows), the mean curves and the run's
``manifest.csv`` (which per-image values are summary columns).

The keys a family writes (``compute()`` and ``last``) are ``<head>`` or ``<head>/<tail>``: the head names the
column (``drop``, ``dice``, ``stability``), the tail a percent (``drop/70``), ``mean`` or anything else
(``stability/batch/iou20``). A head belongs to one family; curves (lists per image) are named in ``curves``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection

from hdm_lightning.registry import Registry

__all__ = [
    "EVALUATION_FAMILIES",
    "METRICS",
    "METRIC_FAMILIES",
    "MetricFamily",
    "build_family",
    "column_key",
    "curve_family",
    "curve_labels",
    "families",
    "family_of",
    "higher_is_better",
    "in_manifest",
    "register_metric",
    "saliency_metrics",
]


def _number(tail: str) -> float | None:
    """``"70" -> 70.0``, ``"12.5" -> 12.5``; ``None`` for a tail that is not a finite number (``mean``, ``""``)."""
    try:
        value = float(tail)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


class MetricFamily:
    """What the evaluation needs to know about a metric family: plain class attributes and four classmethods.

    Attributes:
        family: the name it is registered under (set by :func:`register_metric`).
        columns: its column heads in table order, each with its direction (``True``: higher is better); the
            Markdown tables put ↑ or ↓ after each column and bold the best method.
        order: where its columns go among the families' (tables, manifest); the built-ins use 10 .. 50, a
            family that leaves the default comes after them (ties by name).
        markdown_tails: the tails shown in the Markdown table (the CSV has every column); ``None`` shows all.
        manifest_percents: whether its per-percent columns (``<head>/<number>``) are columns of ``manifest.csv``
            too; its other columns always are.
        curves: per-image curves it writes (lists), ``{key: x-axis label}``; ``curves/<key without _curve>.*``
            get the methods' mean curves.
        requires_mask: ``update`` needs the ground-truth mask (scored on the images that have one).
        requires_model: the constructor takes the classifier first and ``mean``, ``std``, ``batch_size``.
        requires_method: the metric reruns the saliency method: it has ``update_from_method(method, images,
            saliency, target, ids)`` (no mask) instead of the shared ``update(images, saliency, target, mask=None)``;
            :class:`~hdm_lightning.evaluation.MetricSuite` resets it before each batch.
    """

    family: ClassVar[str] = ""
    columns: ClassVar[Mapping[str, bool]] = {}
    order: ClassVar[int] = 100
    markdown_tails: ClassVar[tuple[str, ...] | None] = None
    manifest_percents: ClassVar[bool] = False
    curves: ClassVar[Mapping[str, str]] = {}
    requires_mask: ClassVar[bool] = False
    requires_model: ClassVar[bool] = False
    requires_method: ClassVar[bool] = False

    @classmethod
    def from_evaluation(cls, evaluation: Any) -> dict[str, Any]:
        """Keyword arguments of the constructor from the run's ``evaluation`` config section (default: none).

        ``evaluation.params.<family>`` is added over them by :class:`~hdm_lightning.evaluation.MetricSuite`, so a
        family without config keys of its own needs no override. Raise ``ValueError`` for a bad setting.
        """
        return {}

    @classmethod
    def tail_key(cls, tail: str) -> tuple:
        """Sort key of a column's tail within its head: percents in increasing order, then the rest by name."""
        number = _number(tail)
        return (math.inf if number is None else number, tail)

    @classmethod
    def curve_axis(cls, key: str, points: int, params: Mapping[str, Any]) -> tuple[list[float], str, str]:
        """The x values (fractions: ``curves/<kind>.csv``'s ``fraction`` column), x label and y label of a curve.

        ``params`` are the family's constructor keyword arguments in the run (``from_evaluation`` plus
        ``evaluation.params.<family>``). Default: ``points`` evenly spaced fractions from 0 to 1, the label in
        ``curves`` and the probability of the explained class (deletion, insertion); a family whose curves are
        something else overrides it.
        """
        xs = [i / (points - 1) for i in range(points)] if points > 1 else [0.0]
        return xs, cls.curves[key], "probability of the explained class"

    @classmethod
    def in_markdown(cls, key: str) -> bool:
        """Whether the Markdown table shows column ``key`` (``markdown_tails``)."""
        return cls.markdown_tails is None or key.split("/")[-1] in cls.markdown_tails

    @classmethod
    def in_manifest(cls, key: str) -> bool:
        """Whether per-image value ``key`` is a column of ``manifest.csv`` (``manifest_percents``)."""
        return cls.manifest_percents or _number(key.partition("/")[2]) is None


#: metric family name -> class: the one list ``evaluation.metrics``, the tables and the manifest read.
METRICS: Registry[type[MetricFamily]] = Registry("metric family")


def _check_description(name: str, cls: type) -> None:
    if not (isinstance(cls, type) and issubclass(cls, MetricFamily) and issubclass(cls, Metric)):
        raise ValueError(
            f"metric family {name!r} must be a torchmetrics Metric subclass that derives from MetricFamily"
        )
    if name == "cost":
        raise ValueError("metric family name 'cost' is taken: tables/cost.* holds the methods' cost")
    other_names = [n for n in METRICS.names() if n != name and METRICS.get(n) is cls]
    if other_names:
        raise ValueError(f"{cls.__name__} is already registered as metric family {other_names[0]!r}")
    heads = dict(cls.columns)
    if not heads or any(
        not isinstance(h, str) or not h or "/" in h or not isinstance(d, bool) for h, d in heads.items()
    ):
        raise ValueError(
            f"metric family {name!r}: columns must map column heads (non-empty, no '/') to True (higher is better) "
            f"or False, got {heads!r}"
        )
    if cls.requires_method and not callable(getattr(cls, "update_from_method", None)):
        raise ValueError(f"metric family {name!r} has requires_method but no update_from_method(...)")
    for other in families():
        if other.family == name:
            continue
        taken = sorted((set(heads) | set(cls.curves)) & (set(other.columns) | set(other.curves)))
        if taken:
            raise ValueError(f"metric family {name!r}: columns {taken} already belong to family {other.family!r}")


def register_metric(name: str) -> Callable[[type[MetricFamily]], type[MetricFamily]]:
    """Register a metric family class under ``name`` (a duplicate name, or a column head taken, is an error).

    Example:
        >>> @register_metric("my_metric")  # doctest: +SKIP
        ... class MyMetric(SaliencyMetric):
        ...     columns = {"my_score": True}
    """

    def deco(cls: type[MetricFamily]) -> type[MetricFamily]:
        _check_description(name, cls)
        METRICS.register(name)(cls)
        cls.family = name
        return cls

    return deco


def families() -> list[type[MetricFamily]]:
    """The registered families in table order (``order``, then name)."""
    return sorted((METRICS.get(n) for n in METRICS.names()), key=lambda c: (c.order, c.family))


def family_of(key: str) -> type[MetricFamily] | None:
    """The family whose column ``key`` is (by its head), ``None`` for other keys (curves, probabilities)."""
    head = key.split("/")[0]
    return next((c for c in families() if head in c.columns), None)


def column_key(key: str) -> tuple:
    """Sort key of a metric column: family ``order``, head in ``columns`` order, then the family's ``tail_key``.

    Keys of no family come last, by name.
    """
    cls = family_of(key)
    if cls is None:
        return (1, key)
    head, _, tail = key.partition("/")
    return (0, cls.order, cls.family, list(cls.columns).index(head), *cls.tail_key(tail))


def higher_is_better(key: str) -> bool | None:
    """The direction of metric column ``key``; ``None`` when no family claims it."""
    cls = family_of(key)
    return None if cls is None else cls.columns[key.split("/")[0]]


def in_manifest(key: str) -> bool:
    """Whether per-image value ``key`` is a column of ``manifest.csv`` (a family's column it lists there)."""
    cls = family_of(key)
    return cls is not None and cls.in_manifest(key)


def curve_labels() -> dict[str, str]:
    """Every registered curve, ``{key: x-axis label}``, in family order."""
    return {k: label for c in families() for k, label in c.curves.items()}


def curve_family(key: str) -> type[MetricFamily] | None:
    """The family that writes per-image curve ``key``, ``None`` for an unknown key."""
    return next((c for c in families() if key in c.curves), None)


class _FamilyView(Mapping):
    """A read-only, always current view of :data:`METRICS` in family order (name -> class)."""

    def __init__(self, maps_only: bool) -> None:
        self._maps_only = maps_only

    def _current(self) -> dict[str, type[MetricFamily]]:
        return {c.family: c for c in families() if not (self._maps_only and c.requires_method)}

    def __getitem__(self, name: str) -> type[MetricFamily]:
        return self._current()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._current())

    def __len__(self) -> int:
        return len(self._current())

    def __repr__(self) -> str:
        return repr(self._current())


#: the families scored from a map alone (``update(images, saliency, target, mask=None)``): what
#: :func:`saliency_metrics` builds; a view of :data:`METRICS`.
METRIC_FAMILIES: Mapping[str, type[MetricFamily]] = _FamilyView(maps_only=True)
#: every family ``evaluation.metrics`` accepts, those that rerun the method included; a view of :data:`METRICS`.
EVALUATION_FAMILIES: Mapping[str, type[MetricFamily]] = _FamilyView(maps_only=False)


def build_family(
    name: str,
    model: nn.Module | None = None,
    mean: Sequence[float] | Tensor | None = None,
    std: Sequence[float] | Tensor | None = None,
    batch_size: int = 64,
    **kwargs: Any,
) -> Metric:
    """One family's metric, the classifier first if it ``requires_model``.

    ``cls(model, mean=mean, std=std, batch_size=batch_size, **kwargs)`` for a family with ``requires_model``,
    ``cls(**kwargs)`` for the others.
    """
    cls = METRICS.get(name)
    if cls.requires_model and model is None:
        raise ValueError(f"metric family {name!r} runs the classifier: pass model")
    try:
        if not cls.requires_model:
            return cls(**kwargs)
        return cls(model, **{"mean": mean, "std": std, "batch_size": batch_size, **kwargs})
    except TypeError as e:  # e.g. an unknown keyword of a plugin's __init__ without **kwargs
        raise ValueError(f"metric family {name!r}: {e}") from None


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
    families' keys do not overlap). Families with ``requires_mask`` (``"proportion"``, ``"segmentation"``) need
    ``mask``: request them only on data with ground-truth masks.

    Args:
        model: the classifier (needed by the families with ``requires_model``: ``"drop_increase"``,
            ``"deletion_insertion"``).
        kind_names: families from :data:`METRIC_FAMILIES` (the registered families that score a map alone).
        mean: the classifier's preprocessing mean (``Preprocess.mean``), for black pixels.
        std: the classifier's preprocessing std.
        batch_size: most perturbed images per forward for the model-based families.
        params: per-family keyword arguments, e.g. ``{"drop_increase": {"baseline": "blur"}}``.

    Raises:
        ValueError: for an unknown or repeated family, one that reruns the method, ``params`` for a family not
            requested, or a model-based family without a model.
    """
    names = [kind_names] if isinstance(kind_names, str) else list(kind_names)
    reruns = [n for n in names if n in METRICS and METRICS.get(n).requires_method]
    if reruns:
        raise ValueError(
            f"metric family {reruns[0]!r} reruns the saliency method and compares maps: build "
            f"{METRICS.get(reruns[0]).__name__} directly, or use hdm_lightning.evaluation.MetricSuite"
        )
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"Unknown saliency metric {unknown[0]!r}. Available: {list(METRIC_FAMILIES)}")
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"kind_names must name each family once (at least one), got {names!r}")
    params = dict(params or {})
    stray = sorted(set(params) - set(names))
    if stray:
        raise ValueError(f"params given for families that were not requested: {stray}; requested: {names}")
    metrics = {n: build_family(n, model, mean, std, batch_size, **params.get(n, {})) for n in names}
    # compute_groups=False: the families never share states, and grouping would compare them after every update.
    return MetricCollection(metrics, compute_groups=False)
