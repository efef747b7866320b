"""The comparison tables: per method, the mean of each column over images, its bootstrap interval and a paired test.

Every cell of ``tables/<family>.csv`` and ``.md`` is computed from the per-image values in the methods' records:

- the **mean** over the images the method explained (``NaN`` values, e.g. an image without a mask, left out);
- a seeded **percentile-bootstrap confidence interval** of that mean over images (:func:`hdm_lightning.stats.
  bootstrap_ci`; level ``evaluation.ci_level``, ``evaluation.ci_resamples`` resamples, seed ``evaluation.ci_seed``);
- the two-sided **Wilcoxon signed-rank** p-value of the method's per-image values against the reference method's on
  the same images (:func:`hdm_lightning.stats.paired_test`; the reference is ``evaluation.reference``, by default
  the first method). A small p says the two methods differ on these images more than chance pairing would explain;
  it says nothing about other images or models. No correction for the many comparisons a table holds is applied.

The CSV has every column as ``<column>``, ``<column>_ci_low``, ``<column>_ci_high``, ``<column>_p``; the Markdown
shows ``mean [low, high]`` and the p-value per cell, the best mean per column in bold, and one line below the
table that says what the brackets and p mean.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hdm_lightning.io import atomic_write_text
from hdm_lightning.metrics import METRICS
from hdm_lightning.metrics.family import column_key, family_of, higher_is_better
from hdm_lightning.stats import bootstrap_ci, paired_test

__all__ = ["COST_COLUMNS", "Cell", "TableStats", "table_cells", "write_tables"]

# The runner's cost columns (tables/cost.*): lower is better.
COST_COLUMNS = ("seconds_per_image", "forward_per_image", "backward_per_image")


@dataclass(frozen=True)
class TableStats:
    """How the tables' intervals and tests are computed (``evaluation.reference`` and ``evaluation.ci_*``).

    Attributes:
        reference: the method label every other method is tested against; ``None``: the first method.
        level: the confidence level of the bootstrap intervals.
        resamples: bootstrap resamples per cell.
        seed: the bootstrap's seed (every cell uses it: a table is the same however often it is written).
    """

    reference: str | None = None
    level: float = 0.95
    resamples: int = 10000
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.level < 1.0:
            raise ValueError(f"evaluation.ci_level must be in (0, 1), e.g. 0.95, got {self.level!r}")
        if self.resamples < 100:
            raise ValueError(f"evaluation.ci_resamples must be >= 100 (10000 is usual), got {self.resamples!r}")

    def check_reference(self, labels: Sequence[str]) -> None:
        """Raise ``ValueError`` when ``reference`` is not one of the run's method ``labels``."""
        if self.reference is not None and self.reference not in labels:
            raise ValueError(
                f"evaluation.reference={self.reference!r} is not a method of this run: use one of {list(labels)} "
                "(a method's label), or leave it unset for the first one"
            )

    @classmethod
    def from_evaluation(cls, evaluation) -> TableStats:
        """The settings of a run's ``evaluation`` config section (absent keys keep the defaults)."""
        return cls(
            reference=getattr(evaluation, "reference", None) or None,
            level=float(getattr(evaluation, "ci_level", 0.95)),
            resamples=int(getattr(evaluation, "ci_resamples", 10000)),
            seed=int(getattr(evaluation, "ci_seed", 0)),
        )


@dataclass(frozen=True)
class Cell:
    """One method's statistics for one column: mean, interval, p-value against the reference, images counted."""

    mean: float
    low: float
    high: float
    p: float
    n: int


def _finite(v) -> float | None:
    if v is None or isinstance(v, bool | str | list):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _per_image(recs: list[dict], get: Callable[[dict], object]) -> dict[object, float]:
    """``{image id: value}`` of the records with a finite value (records without an id: their position)."""
    out = {}
    for i, r in enumerate(recs):
        v = _finite(get(r))
        if v is not None:
            out[r.get("id", i)] = v
    return out


def table_cells(
    records: Mapping[str, list[dict]], column: str, get: Callable[[dict], object], stats: TableStats
) -> dict[str, Cell]:
    """Every method's :class:`Cell` for one column; ``get(record)`` reads the column's value of one image."""
    values = {m: _per_image(recs, get) for m, recs in records.items()}
    reference = stats.reference if stats.reference in values else next(iter(values), None)
    ref = values.get(reference, {})
    cells = {}
    for m, vals in values.items():
        xs = list(vals.values())
        mean = sum(xs) / len(xs) if xs else float("nan")
        low, high = bootstrap_ci(xs, seed=stats.seed, resamples=stats.resamples, level=stats.level)
        if m == reference:
            p = float("nan")
        else:
            common = [k for k in vals if k in ref]
            p = paired_test([ref[k] for k in common], [vals[k] for k in common])
        cells[m] = Cell(mean, low, high, p, len(xs))
    return cells


def _higher_is_better(column: str) -> bool | None:
    """A column's direction: its family's, lower for the cost columns, ``None`` (no bold) for others."""
    return False if column in COST_COLUMNS else higher_is_better(column)


def _fmt(v: float) -> str:
    return "n/a" if math.isnan(v) else (f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}")


def _fmt_p(p: float) -> str:
    if math.isnan(p):
        return ""
    return "p<0.001" if p < 0.001 else f"p={p:.2g}" if p < 0.1 else f"p={p:.2f}"


def _csv(rows: dict[str, dict[str, Cell]], columns: list[str], counts: dict[str, int]) -> str:
    def num(v: float) -> str:
        return "" if math.isnan(v) else f"{v:.6g}"

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "images", *[f"{c}{s}" for c in columns for s in ("", "_ci_low", "_ci_high", "_p")]])
    for m, cells in rows.items():
        w.writerow(
            [m, counts[m], *[num(x) for c in columns for x in (cells[c].mean, cells[c].low, cells[c].high, cells[c].p)]]
        )
    return buf.getvalue()


def _markdown(rows: dict[str, dict[str, Cell]], columns: list[str], counts: dict[str, int], note: str) -> str:
    best = {}
    for c in columns:
        vals = [cells[c].mean for cells in rows.values() if not math.isnan(cells[c].mean)]
        higher = _higher_is_better(c)
        if vals and higher is not None and len(rows) > 1:
            best[c] = max(vals) if higher else min(vals)
    arrow = {c: ("↑" if _higher_is_better(c) else "↓") for c in columns}
    md = ["| method | images | " + " | ".join(f"{c} {arrow[c]}" for c in columns) + " |"]
    md.append("| --- | ---: | " + " | ".join("---:" for _ in columns) + " |")
    for m, cells in rows.items():
        shown = []
        for c in columns:
            cell = cells[c]
            mean = f"**{_fmt(cell.mean)}**" if c in best and cell.mean == best[c] else _fmt(cell.mean)
            interval = "" if math.isnan(cell.low) else f" [{_fmt(cell.low)}, {_fmt(cell.high)}]"
            shown.append(f"{mean}{interval} {_fmt_p(cell.p)}".rstrip())
        md.append(f"| {m} | {counts[m]} | " + " | ".join(shown) + " |")
    return "\n".join(md) + "\n\n" + note + "\n"


def _note(stats: TableStats, reference: str | None) -> str:
    return (
        f"Mean over images [{stats.level:.0%} percentile-bootstrap interval of the mean, {stats.resamples} "
        f"resamples]; p: two-sided Wilcoxon signed-rank test against `{reference}` on the same images (no "
        "correction for multiple comparisons). Bold: the best mean."
    )


def _columns(records: Mapping[str, list[dict]], family: str) -> list[str]:
    """The family's columns in a fixed order (:func:`column_key`), whatever order the records hold them in."""
    keys = {k for recs in records.values() for r in recs for k in r.get("metrics", {})}
    return sorted((k for k in keys if getattr(family_of(k), "family", None) == family), key=column_key)


def write_tables(
    folder: Path, records: Mapping[str, list[dict]], families: Sequence[str], stats: TableStats | None = None
) -> dict[str, str]:
    """``tables/<family>.csv`` and ``.md`` (methods as rows, like the papers' tables) and ``tables/cost.*``.

    Args:
        folder: the run folder.
        records: per method label, the records of its explained images.
        families: the metric families the run computed.
        stats: intervals and tests (default :class:`TableStats`: 95 %, the first method as reference).

    Returns:
        ``{family: markdown}`` for the README / W&B.
    """
    stats = stats or TableStats()
    ok = {m: [r for r in recs if r.get("status") == "ok"] for m, recs in records.items()}
    counts = {m: len(recs) for m, recs in ok.items()}
    reference = stats.reference if stats.reference in ok else next(iter(ok), None)
    out = {}
    for family in [*families, "cost"]:
        if family == "cost":
            columns = list(COST_COLUMNS)

            def getter(c):
                return lambda r: r.get(c)
        else:
            columns = _columns(ok, family)

            def getter(c):
                return lambda r: r.get("metrics", {}).get(c)

        if not columns:
            continue
        by_column = {c: table_cells(ok, c, getter(c), stats) for c in columns}
        rows = {m: {c: by_column[c][m] for c in columns} for m in ok}
        # Markdown stays readable: a family may show only some of its columns (the CSV keeps all of them).
        cls = METRICS.get(family) if family in METRICS else None
        shown = [c for c in columns if cls is None or cls.in_markdown(c)]
        md = _markdown(rows, shown, counts, _note(stats, reference))
        atomic_write_text(_csv(rows, columns, counts), folder / "tables" / f"{family}.csv")
        atomic_write_text(md, folder / "tables" / f"{family}.md")
        out[family] = md
    return out
