"""Re-score a finished run's saved maps with new metric settings: ``python -m hdm_lightning.rescore RUN_DIR [k=v ...]``.

No map is recomputed. The run folder's ``config.yaml`` is loaded with the ``key=value`` overrides, which may only
touch what does not change the maps: ``evaluation.*``, ``device``, ``progress`` and ``imports`` (a plugin's
metric family). Then, per method, the maps in ``maps/<id>.pt`` are scored in the run's own batches (same images,
same classes, same batch composition: what the run scored them with), and the records, ``manifest.csv``,
``tables/``, ``curves/`` and the ``evaluation`` section of ``config.yaml`` are rewritten.

Only the families whose values can change are computed: a family that is new, or whose settings (its
``from_evaluation`` keyword arguments plus ``evaluation.params.<family>``) differ from the run's; a family no longer
listed loses its columns. ``--all`` computes every listed family again: with the run's own settings the records and
tables come out as they were (a test asserts it). Families that rerun the method (``stability``, ``sanity``) do
rerun it on the same images: that is their measurement, not a recomputed map.

Nothing is lost on interruption: the new values are written only after every image is scored (records first, then
``config.yaml``, then the tables); an interrupted rescore leaves the old results, a rerun with the same overrides
finishes the job. A rescore runs in one process.

Examples::

    python -m hdm_lightning.rescore outputs/compare_synthetic "evaluation.metrics=[deletion_insertion,road]"
    python -m hdm_lightning.rescore outputs/compare_photos evaluation.reference=gradcam    # tables only
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from hdm_lightning.config import ConfigError, EvaluationConfig, load_run_config
from hdm_lightning.data import build_dataset, load_items
from hdm_lightning.distributed import run_device
from hdm_lightning.evaluation import Evaluation, MetricSuite, family_params
from hdm_lightning.io import atomic_write_json, atomic_write_text, load_tensors
from hdm_lightning.metrics.family import curve_family, family_of
from hdm_lightning.models import load_classifier
from hdm_lightning.run.folder import EARLIER_DEFAULTS, output_names, read_records
from hdm_lightning.run.plan import MethodRun, build_runs
from hdm_lightning.run.prototypes import explained_classifier
from hdm_lightning.run.writer import write_manifest_all, write_reports
from hdm_lightning.signals import Interrupted, stop_on_signals

__all__ = ["RescoreSummary", "main", "rescore"]

# Keys an override may set: none of them changes a map.
ALLOWED = ("evaluation.", "device=", "progress=", "imports=", "imports+=")


@dataclass
class RescoreSummary:
    """What one rescore did."""

    folder: Path
    families: list[str]  # the families computed again
    images: int = 0  # (method, image) pairs scored

    def line(self) -> str:
        """The final summary line."""
        what = ", ".join(self.families) if self.families else "no family (tables only)"
        return f"re-scored {self.images} maps with {what}; tables in {self.folder / 'tables'}"


def _load(folder: Path, overrides: list[str]) -> tuple[DictConfig, DictConfig, DictConfig]:
    """The run's saved config, the new config (overrides applied) and the method settings."""
    saved = folder / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"{str(folder)!r} is not a run folder (no config.yaml): give the output.dir of explain.py")
    bad = [o for o in overrides if not o.strip().startswith(ALLOWED)]
    if bad:
        raise ConfigError(
            f"rescore only changes how saved maps are scored: {bad} would change the maps. Allowed: evaluation.*, "
            "device, progress, imports; rerun explain.py (into another output.dir) for anything else"
        )
    old = OmegaConf.load(saved)
    # The saved config holds the full method settings: the preset file is not needed (it may have moved).
    cfg, settings = load_run_config(saved, [*overrides, "preset=null", f"output.dir={folder}"])
    return old, cfg, settings


def _changed_families(old: DictConfig, cfg: DictConfig, everything: bool) -> list[str]:
    """The listed families whose per-image values can differ from the stored ones (all of them with ``everything``)."""
    new_families = list(cfg.evaluation.metrics)
    try:
        new_params = family_params(new_families, cfg.evaluation)
    except ValueError as e:
        raise ConfigError(f"evaluation: {e}") from None
    if everything:
        return new_families
    old_families = [f for f in old.evaluation.metrics if f in new_families]
    try:  # the saved section over the schema: a config written before a key existed reads its default, except
        # for a key whose default changed since (its earlier value is what the stored scores used)
        earlier = {k.split(".", 1)[1]: v for k, v in EARLIER_DEFAULTS.items() if k.startswith("evaluation.")}
        saved = OmegaConf.merge(OmegaConf.structured(EvaluationConfig), earlier, old.evaluation)
        old_params = family_params(old_families, saved)
    except ValueError:  # e.g. a plugin family no longer imported: compute them all again
        return new_families
    return [f for f in new_families if f not in old_params or old_params[f] != new_params[f]]


def _keep(key: str, drop: set[str]) -> bool:
    """Whether a stored per-image value survives: its family is still listed and not computed again."""
    cls = family_of(key) or curve_family(key)
    return cls is None or cls.family not in drop


def _update(rec: dict, new: dict, drop: set[str]) -> None:
    """Replace a record's values of the families in ``drop`` by ``new`` (the others stay)."""
    rec["metrics"] = {**{k: v for k, v in rec.get("metrics", {}).items() if _keep(k, drop)}, **new}


def _score_batch(run: MethodRun, items: list, ctx: dict, suite: MetricSuite) -> int:
    """Score one method's saved maps of one batch (its images with an ``ok`` record); update ``run.records``."""
    items = [it for it in items if run.records.get(it.id, {}).get("status") == "ok"]
    if not items:
        return 0
    device, names = ctx["device"], ctx["names"]
    maps = [load_tensors(run.root / "maps" / f"{names[it.id]}.pt")["saliency"].float() for it in items]
    images = torch.stack([it.image for it in items]).to(device)
    targets = torch.tensor([int(run.records[it.id]["target"]) for it in items], device=device)
    ids = [it.id for it in items]
    values = suite.per_image(images, torch.stack(maps).to(device), targets, [it.mask for it in items], run.method, ids)
    for it, new in zip(items, values, strict=True):
        _update(run.records[it.id], new, ctx["drop"])
    return len(items)


def _score(runs: list[MethodRun], ctx: dict, suite: MetricSuite | None, bar: tqdm) -> int:
    """Every method's saved maps in the run's batches (each batch's images read once); ``(method, image)`` pairs."""
    if suite is None:  # nothing to compute: only the columns of families no longer listed go
        oks = [rec for run in runs for rec in run.records.values() if rec.get("status") == "ok"]
        for rec in oks:
            _update(rec, {}, ctx["drop"])
        return len(oks)
    dataset, size, scored = ctx["dataset"], int(ctx["cfg"].batch_size), 0
    for start in range(0, len(dataset), size):
        items, _ = load_items(dataset, range(start, min(start + size, len(dataset))))
        for run in runs:
            done = _score_batch(run, items, ctx, suite)
            scored += done
            bar.update(done)
    return scored


def rescore(run_dir: str | Path, overrides: list[str] | None = None, everything: bool = False) -> RescoreSummary:
    """Re-score the saved maps of the run in ``run_dir`` with ``overrides`` (see the module docstring).

    Raises:
        ConfigError: not a run folder, an override that would change the maps, a bad evaluation setting.
    """
    folder = Path(run_dir)
    old, cfg, settings = _load(folder, list(overrides or []))
    compute = _changed_families(old, cfg, everything)
    listed = set(cfg.evaluation.metrics)
    drop = set(compute) | {f for f in old.evaluation.metrics if f not in listed}
    classifier = explained_classifier(load_classifier(cfg.classifier), cfg.target)
    dataset = build_dataset(cfg.data, classifier.preprocess)
    device = run_device(cfg.device)
    model = classifier.model.to(device)
    runs = build_runs(cfg, settings, model, folder)
    suite = None
    if compute:
        prep = classifier.preprocess
        suite = MetricSuite(model, Evaluation.from_config(cfg.evaluation, compute), prep.mean, prep.std)
        try:
            suite.check_masks(dataset)
        except ValueError as e:
            raise ConfigError(f"evaluation: {e}") from None
    for run in runs:
        run.records = read_records(run.root)
    names = output_names(dataset.ids)
    if suite is not None:
        _check_maps(runs, names)
    total = sum(1 for r in runs for rec in r.records.values() if rec.get("status") == "ok")
    ctx = {"cfg": cfg, "dataset": dataset, "names": names, "drop": drop, "device": device}
    summary = RescoreSummary(folder, compute)
    with tqdm(total=total, unit="map", desc="rescore", disable=not (cfg.progress and compute), file=sys.stderr) as bar:
        summary.images = _score(runs, ctx, suite, bar)
    _write(folder, old, cfg, runs, dataset.ids)
    return summary


def _check_maps(runs: list[MethodRun], names: dict[str, str]) -> None:
    """Every finished image's map is on disk: a rescore reads them, it never computes one.

    Raises:
        ConfigError: naming the missing maps and how to get them back.
    """
    for run in runs:
        ok = [i for i, rec in run.records.items() if rec.get("status") == "ok" and i in names]
        missing = [i for i in ok if not (run.root / "maps" / f"{names[i]}.pt").is_file()]
        if missing:
            record = run.root / "records" / f"{names[missing[0]]}.json"
            raise ConfigError(
                f"{len(missing)} finished image(s) have no saved map in {str(run.root / 'maps')!r} (e.g. "
                f"{missing[0]!r}; deleted?) and a rescore only reads maps: delete their records (e.g. {record}), "
                "rerun explain.py with this run's config and output.dir to compute them again, then rescore"
            )


def _write(folder: Path, old: DictConfig, cfg: DictConfig, runs: list[MethodRun], order: list[str]) -> None:
    """Records first, then ``config.yaml`` (only its ``evaluation`` section changes), then manifest and tables."""
    names = output_names(order)
    for run in runs:
        for item_id, rec in run.records.items():
            if rec.get("status") == "ok":
                atomic_write_json(rec, run.root / "records" / f"{names[item_id]}.json")
    old.evaluation = cfg.evaluation
    atomic_write_text(OmegaConf.to_yaml(old), folder / "config.yaml")
    write_manifest_all(folder, runs, order)
    write_reports(folder, runs, Evaluation.from_config(cfg.evaluation))


def main(argv: list[str] | None = None) -> int:
    """The command line; a user-fixable error prints one ``error:`` line and returns 2."""
    ap = argparse.ArgumentParser(
        prog="python -m hdm_lightning.rescore",
        description="Re-score a run's saved maps with new metric settings (no map is recomputed).",
        epilog="Example: python -m hdm_lightning.rescore outputs/compare_synthetic "
        '"evaluation.metrics=[deletion_insertion,road,pointing_game]" evaluation.reference=gradcam',
    )
    ap.add_argument("run_dir", help="the output.dir of a finished explain.py run")
    ap.add_argument("overrides", nargs="*", help="evaluation.* (and device, progress, imports) settings")
    ap.add_argument("--all", action="store_true", help="compute every listed family again, changed or not")
    args = ap.parse_args(argv)
    try:
        with stop_on_signals():
            summary = rescore(args.run_dir, args.overrides, everything=args.all)
    except Interrupted as e:
        print(
            f"error: stopped by {e.name} before the rescore finished. Rerun the same command to finish it",
            file=sys.stderr,
        )
        return e.exit_status
    except (ValueError, KeyError, FileNotFoundError) as e:  # ConfigError, DatasetError are ValueErrors
        text = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {text}", file=sys.stderr)
        return 2
    print(summary.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
