"""One explanation run over a dataset: fixed batches, per-image outputs, manifest, W&B, resume.

Layout of a run folder (``output.dir``)::

    config.yaml                 the resolved config (method settings included)
    manifest.csv                one row per image: id, status, classes, score, seconds, passes, paths
    maps/<id>.pt                the maps as tensors (torch.load(..., weights_only=True))
    overlays/<id>.png           JET heatmap over the image (papers' figures)
    binary/<id>.png             the binary mask
    stages/<id>.png             input, each stage's map, the final map (HDM paper Fig. 5)
    records/<id>.json           per-image record; written last, so its presence means "done"
    wandb/                      the W&B run (offline by default; `wandb sync` it later)
    .work/batch-<k>/            mid-stage checkpoints of the batch in flight (removed when it is written)

Resume: the images are cut into fixed batches in dataset order, so a rerun forms exactly the batches
of an uninterrupted run; a batch whose images all have records is skipped, the batch in flight
continues from its work folder. Every file is written to a temporary name and renamed, so a killed run
leaves finished files or none, never a partial one.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from hdm_lightning.config import ConfigError
from hdm_lightning.data import IMAGE_EXTENSIONS, build_dataset, load_items
from hdm_lightning.distributed import Shard, run_device
from hdm_lightning.explainers import Explanation
from hdm_lightning.io import atomic_torch_save, atomic_write_json, atomic_write_text, load_tensors
from hdm_lightning.models import check_num_classes, load_classifier
from hdm_lightning.viz import overlay, save_png, stage_strip

__all__ = ["RunSummary", "check_run_folder", "output_names", "run_explain", "safe_name", "write_manifest"]

# Keys that change how a run goes, not what it computes: a rerun may change them and still resume.
NON_RESULT_KEYS = (
    "imports",
    "preset",
    "batch_size",
    "device",
    "trainer",
    "progress",
    "output",
    "wandb",
    "data.ids",
    "data.limit",
    "explainer.engine.progress_bar",
    "explainer.engine.log_every_n_steps",
    "explainer.engine.checkpoint_every_n_steps",
    "explainer.engine.checkpoint_every_n_seconds",
    "explainer.engine.max_rows",
)
MANIFEST_COLUMNS = (
    "id",
    "method",
    "status",
    "label",
    "label_name",
    "target",
    "target_name",
    "probability",
    "activation",
    "seconds",
    "passes",
    "map",
    "overlay",
    "binary",
    "stages",
    "forward_per_image",
    "backward_per_image",
    "error",
)


@dataclass
class RunSummary:
    """What one invocation did."""

    folder: Path
    done: int = 0  # explained by this invocation
    skipped: int = 0  # finished by an earlier invocation
    failed: int = 0  # unreadable images (recorded in the manifest)
    seconds: float = 0.0  # wall time of the explained batches
    ids_done: list[str] = field(default_factory=list)

    def line(self) -> str:
        """The final summary line."""
        per = f"{self.seconds / self.done:.1f} s/image" if self.done else "no image explained"
        return (
            f"{self.done} images explained, {self.skipped} skipped (done before), {self.failed} failed; "
            f"{per}; results in {self.folder}"
        )


# ------------------------------------------------------------------------------------------- folder


def safe_name(item_id: str, keep_extension: bool = False) -> str:
    """A relative file path for an item id: sub-folders kept, the image extension dropped, odd characters ``_``."""
    parts = [re.sub(r"[^\w.\-]", "_", p) for p in item_id.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    if not parts:
        raise ValueError(f"item id {item_id!r} gives no usable file name")
    last = parts[-1].lstrip(".") or "_"
    stem, dot, ext = last.rpartition(".")
    if not keep_extension and dot and stem and f".{ext.lower()}" in IMAGE_EXTENSIONS:
        last = stem
    parts[-1] = last
    return "/".join(parts)


def output_names(ids: list[str]) -> dict[str, str]:
    """``safe_name`` for every id; extensions are kept when dropping them would make two names equal."""
    names = {i: safe_name(i) for i in ids}
    if len(set(names.values())) != len(names):
        names = {i: safe_name(i, keep_extension=True) for i in ids}
    if len(set(names.values())) != len(names):
        raise ValueError("two item ids map to the same output file name; rename one of the files")
    return names


def _flat(cfg: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _result_keys(cfg: dict, ignore: tuple[str, ...]) -> dict[str, object]:
    return {k: v for k, v in _flat(cfg).items() if not any(k == n or k.startswith(n + ".") for n in ignore)}


def check_run_folder(folder: Path, cfg: DictConfig, ignore: tuple[str, ...] = NON_RESULT_KEYS) -> None:
    """Refuse to mix results of different configs in one folder; archive the old run if asked to.

    Keys under ``ignore`` may differ between the saved config and ``cfg``.

    Raises:
        ConfigError: ``folder`` holds a run whose result-determining settings differ and
            ``output.resume`` is true.
    """
    saved = folder / "config.yaml"
    if not folder.exists() or not any(p for p in folder.iterdir() if not p.name.startswith("previous-")):
        return
    if not cfg.output.resume:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        archive = folder / f"previous-{stamp}"
        archive.mkdir()
        for p in list(folder.iterdir()):
            if not p.name.startswith("previous-"):
                shutil.move(str(p), str(archive / p.name))
        print(f"output.resume=false: moved the earlier run in {folder} to {archive}", file=sys.stderr)
        return
    if not saved.is_file():
        raise ConfigError(
            f"output folder {str(folder)!r} is not empty and holds no config.yaml of an earlier run: "
            "choose another output.dir"
        )
    old = _result_keys(OmegaConf.to_container(OmegaConf.load(saved)), ignore)
    new = _result_keys(OmegaConf.to_container(cfg), ignore)
    diff = [k for k in sorted(set(old) | set(new)) if old.get(k, "<unset>") != new.get(k, "<unset>")]
    if diff:
        shown = "; ".join(f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}" for k in diff[:6])
        more = f" (and {len(diff) - 6} more)" if len(diff) > 6 else ""
        raise ConfigError(
            f"output folder {str(folder)!r} holds a run made with a different config ({shown}{more}). "
            "Choose another output.dir, or pass output.resume=false to move the old run into "
            f"{folder}/previous-<time>/ and start over"
        )


def _read_records(folder: Path) -> dict[str, dict]:
    records = {}
    for path in sorted((folder / "records").rglob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # cannot happen with atomic writes; treat as not done
        records[rec["id"]] = rec
    return records


def write_manifest(folder: Path, records: dict[str, dict] | None = None, order: list[str] | None = None) -> Path:
    """Rewrite ``manifest.csv`` from the records (read from ``records/`` when not given; dataset order first)."""
    records = _read_records(folder) if records is None else records
    rank = {i: n for n, i in enumerate(order or [])}
    rows = sorted(records.values(), key=lambda r: (rank.get(r["id"], math.inf), r["id"]))
    # Per-image metric values: the summary keys (not the curves, nor Dice & co. at every single percentile).
    metric_keys: list[str] = []
    for r in rows:
        for k, v in r.get("metrics", {}).items():
            if k not in metric_keys and not isinstance(v, list) and not re.fullmatch(r"(\w+/\d+|probability.*)", k):
                metric_keys.append(k)
    for r in rows:
        for k in r.get("metrics", {}):
            if k not in metric_keys and re.fullmatch(r"(drop|increase)/\d+", k):
                metric_keys.append(k)
    from hdm_lightning.evaluation import column_key

    columns = [*MANIFEST_COLUMNS, *sorted(metric_keys, key=column_key)]  # one order, fresh or resumed
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        flat = {**r, **r.get("metrics", {})}
        writer.writerow({k: ("" if flat.get(k) is None else flat.get(k)) for k in columns})
    return atomic_write_text(buf.getvalue(), folder / "manifest.csv")


# ------------------------------------------------------------------------------------------- run


def _wandb_logger(cfg: DictConfig, folder: Path):
    if cfg.wandb.mode == "disabled":
        return None
    from hdm_lightning.callbacks.logging import RunWandbLogger

    save_dir = Path(cfg.wandb.dir) if cfg.wandb.dir else folder
    save_dir.mkdir(parents=True, exist_ok=True)
    logger = RunWandbLogger(
        project=cfg.wandb.project,
        name=cfg.wandb.name,
        save_dir=str(save_dir),
        offline=cfg.wandb.mode == "offline",
        tags=list(cfg.wandb.tags) or None,
        settings=_wandb_settings(),
    )
    logger.log_hyperparams(OmegaConf.to_container(cfg))
    return logger


def _wandb_settings():
    import wandb

    # No console capture and no system metrics: a run is many short fits, and tests run offline.
    return wandb.Settings(console="off", x_disable_stats=True, silent=True)


@dataclass
class MethodRun:
    """One method of a run: where its outputs go, its records, and the saliency method that computes it."""

    label: str
    root: Path  # maps/, overlays/, binary/, stages/, records/ of this method
    method: object  # a hdm_lightning.baselines.SaliencyMethod
    records: dict[str, dict] = field(default_factory=dict)

    @property
    def finished(self) -> set[str]:
        """Ids whose outputs are all written."""
        return {i for i, r in self.records.items() if r["status"] == "ok"}


def _method_runs(cfg: DictConfig, settings: DictConfig, model, folder: Path) -> list[MethodRun]:
    """The run's methods: ``cfg.methods`` (a comparison, one sub-folder each), else ``cfg.method`` alone."""
    from hdm_lightning.baselines import build_method

    if not cfg.methods:
        method = build_method(cfg.method, model, {"config": settings})
        return [MethodRun(cfg.method, folder, method)]
    runs, labels = [], set()
    for entry in cfg.methods:
        label = entry.label or entry.name
        if label in labels or not re.fullmatch(r"[\w.+\-]+", label):
            raise ConfigError(
                f"methods: label {label!r} is repeated or not a plain name: give each entry its own label "
                "(letters, digits, . + - _)"
            )
        labels.add(label)
        params = OmegaConf.to_container(entry.params)
        if entry.name == cfg.method and entry.name in ("hdm", "dm", "mdm") and "config" not in params:
            params["config"] = settings  # the run's own method settings
        try:
            method = build_method(entry.name, model, params)
        except (KeyError, ValueError) as e:
            raise ConfigError(f"methods: entry {label!r}: {e.args[0] if isinstance(e, KeyError) else e}") from None
        runs.append(MethodRun(label, folder / "methods" / label, method))
    return runs


def _targets(model, images: Tensor, items, target: str) -> Tensor:
    """The class every method explains for each image: the prediction, or the dataset's label."""
    if target == "label":
        return torch.tensor([it.label for it in items], device=images.device)
    with torch.no_grad():
        was = model.training
        model.eval()
        try:
            return model(images).argmax(1)
        finally:
            model.train(was)


def _image_tensors(item, out: Explanation | None, i: int, sal: Tensor, target: int, keep_stages: bool) -> dict:
    data = {"id": item.id, "saliency": sal.float(), "target": target, "label": int(item.label)}
    if item.mask is not None:
        data["ground_truth"] = item.mask
    if out is None:
        return data
    data.update(
        method=out.method,
        binary=out.binary[i],
        probability=float(out.probability[i]),
        activation=float(out.activation[i]),
        passes=int(out.passes_per_image),
        # loss per fit step, averaged over the fit's vectors (the full per-vector history stays in W&B/API)
        loss={k: v[..., i].float().mean(-1) for k, v in out.history.items()},
    )
    if out.weights is not None:
        data["weights"] = out.weights[i].float()
    if keep_stages:
        data["stages"] = [
            {
                "saliency": s.saliency[i].float(),
                "binary": s.binary[i],
                "gamma": float(s.gamma[i]),
                **({"masked": s.masked[i].float()} if s.masked is not None else {}),
            }
            for s in out.stages
        ]
    return data


def run_explain(cfg: DictConfig, settings: DictConfig, shard: Shard | None = None) -> RunSummary:
    """Explain every image of ``cfg.data`` with every method and write the outputs (see the module docstring).

    Args:
        cfg: the run config from :func:`hdm_lightning.config.load_run_config`.
        settings: the method settings from the same call.
        shard: this process's place among the run's processes (:func:`hdm_lightning.distributed.launch`);
            ``None``: one process on ``cfg.device``. The batches still to explain are dealt out in turn
            (batch ``todo[j]`` to rank ``j % world``); rank 0 writes config, manifest and tables and
            owns the W&B run; the others write their images' files only.

    Raises:
        ConfigError, DatasetError, ValueError: a problem with the config, the data or the classifier,
            with its fix in the message (raised before any image is explained).
    """
    shard = shard if shard is not None else Shard(device=run_device(cfg.device))
    main = shard.is_main
    folder = Path(cfg.output.dir)
    if main:  # may archive an old run; the others wait for it at the barrier below
        check_run_folder(folder, cfg)
    classifier = load_classifier(cfg.classifier)
    dataset = build_dataset(cfg.data, classifier.preprocess)
    if cfg.target == "label" or classifier.source.startswith("checkpoint"):
        check_num_classes(classifier, dataset.num_classes, dataset.describe())
    if cfg.target == "label":
        unlabelled = [i for i, label in zip(dataset.ids, dataset.labels, strict=True) if label < 0]
        if unlabelled:
            raise ConfigError(
                f"target=label needs a label for every image, but {len(unlabelled)} have none (e.g. "
                f"{unlabelled[0]!r}): use target=predicted, or a dataset with classes"
            )
    device = shard.device
    model = classifier.model.to(device)
    runs = _method_runs(cfg, settings, model, folder)
    suite = None
    if cfg.evaluation.metrics:
        from hdm_lightning.evaluation import MetricSuite

        prep = classifier.preprocess
        try:
            suite = MetricSuite(model, list(cfg.evaluation.metrics), cfg.evaluation, prep.mean, prep.std)
        except ValueError as e:
            raise ConfigError(f"evaluation: {e}") from None
    names = output_names(dataset.ids)
    if main:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(OmegaConf.to_yaml(cfg), folder / "config.yaml")
    shard.barrier()  # rank 0 has checked (or archived) the folder: everyone reads the same records

    for run in runs:
        run.records = _read_records(run.root)
    batches = [list(range(s, min(s + cfg.batch_size, len(dataset)))) for s in range(0, len(dataset), cfg.batch_size)]

    def done_everywhere(item_id: str) -> bool:
        return all(item_id in run.finished for run in runs)

    summary = RunSummary(folder=folder)
    todo_all = [(k, b) for k, b in enumerate(batches) if not all(done_everywhere(dataset.ids[i]) for i in b)]
    if main:
        summary.skipped = sum(1 for i in range(len(dataset)) if done_everywhere(dataset.ids[i]))
        pending = {k for k, _ in todo_all}
        for k in range(len(batches)):
            if k not in pending:  # its outputs were all written when an interruption came
                shutil.rmtree(folder / ".work" / f"batch-{k:06d}", ignore_errors=True)
    # Dealt out after the skip, so a resumed run (with any number of processes) stays balanced.
    todo = shard.take(todo_all)

    logger = _wandb_logger(cfg, folder) if main else None
    from tqdm import tqdm

    n_todo = sum(1 for _, b in todo for i in b if not done_everywhere(dataset.ids[i]))
    n_all = sum(1 for _, b in todo_all for i in b if not done_everywhere(dataset.ids[i]))
    if main:
        where = f"{device}" if shard.world == 1 else f"{shard.world} processes ({device.type})"
        print(
            f"{', '.join(r.label for r in runs)} on {dataset.describe()}; classifier {classifier.name} "
            f"({classifier.source}) on {where}; {len(dataset)} images, {summary.skipped} done before, "
            f"{n_all} to explain",
            file=sys.stderr,
        )
    desc = "explain" if shard.world == 1 else f"explain (rank 0 of {shard.world})"
    bar = tqdm(total=n_todo, unit="img", desc=desc, disable=not (cfg.progress and main), file=sys.stderr)
    callbacks = []
    if cfg.progress and main:
        from hdm_lightning.callbacks.logging import StageProgress

        callbacks.append(StageProgress(bar))
    logged_images = 0
    gallery_ids = set(dataset.ids[: int(cfg.evaluation.gallery)]) if len(runs) > 1 else set()
    completed = False
    try:
        for k, indices in todo:
            items, failed = load_items(dataset, indices)
            for _index, item_id, message in failed:
                rec = {"id": item_id, "status": "failed", "error": message}
                for run in runs:
                    atomic_write_json(rec, run.root / "records" / f"{names[item_id]}.json")
                    run.records[item_id] = rec
                summary.failed += 1
                bar.update(1)
            if all(done_everywhere(it.id) for it in items):
                continue  # only images that failed again are left in this batch
            images = torch.stack([it.image for it in items]).to(device)
            targets = _targets(model, images, items, cfg.target)
            masks = [it.mask for it in items]
            work = folder / ".work" / f"batch-{k:06d}"
            maps: dict[str, Tensor] = {}
            pictures = []
            batch_seconds = 0.0
            for run in runs:
                todo_here = [i for i, it in enumerate(items) if it.id not in run.finished]
                if not todo_here:
                    if any(it.id in gallery_ids for it in items):
                        maps[run.label] = _load_maps(run, items, names)
                    continue
                if hasattr(run.method, "explain_kwargs"):
                    run.method.explain_kwargs = {
                        "logger": logger,
                        "callbacks": callbacks,
                        "work_dir": work if len(runs) == 1 else work / run.label,
                    }
                sal = run.method(images, targets)
                out = getattr(run.method, "last_explanation", None)
                out = out.cpu() if out is not None else None
                n = len(items)
                cost = {
                    "seconds_per_image": round(run.method.seconds / n, 4),
                    "forward_per_image": run.method.forward_passes / n,
                    "backward_per_image": run.method.backward_passes / n,
                }
                batch_seconds += run.method.seconds
                values = [{}] * n
                if suite is not None:  # after the cost above is read: "stability" calls the method again
                    values = suite.per_image(images, sal, targets, masks, run.method, [it.id for it in items])
                sal = sal.cpu()
                maps[run.label] = sal
                for i in todo_here:
                    item = items[i]
                    pics = _write_image(cfg, classifier, dataset, run, item, out, i, sal[i], int(targets[i]), names)
                    rec = {
                        "id": item.id,
                        "method": run.label,
                        "status": "ok",
                        "label": int(item.label),
                        "label_name": dataset.class_names[item.label]
                        if dataset.class_names is not None and item.label >= 0
                        else "",
                        "target": int(targets[i]),
                        "target_name": classifier.class_name(int(targets[i])),
                        "probability": None if out is None else _round(float(out.probability[i])),
                        "activation": None if out is None else _round(float(out.activation[i])),
                        "seconds": cost["seconds_per_image"],
                        "passes": int(out.passes_per_image) if out is not None else cost["backward_per_image"],
                        **cost,
                        **pics["paths"],
                        "metrics": values[i],
                        "error": "",
                    }
                    atomic_write_json(rec, run.root / "records" / f"{names[item.id]}.json")  # last: marks it done
                    run.records[item.id] = rec
                    if pics["pictures"] is not None:
                        pictures.append((run.label, item, int(targets[i]), *pics["pictures"]))
            for i, item in enumerate(items):
                if item.id in gallery_ids and maps:
                    _write_gallery(folder, classifier, item, {m: v[i] for m, v in maps.items()}, names)
            new = [it for it in items if it.id not in summary.ids_done]
            summary.done += len(new)
            summary.ids_done += [it.id for it in new]
            summary.seconds += batch_seconds
            bar.update(len(new))
            shutil.rmtree(work, ignore_errors=True)
            if main:  # rank 0's view so far; the full manifest is written when every process is done
                _write_manifest_all(folder, runs, dataset.ids)
            if logger is not None:
                logged_images = _log_batch(logger, cfg, runs, pictures, classifier, logged_images)
        completed = True
    finally:
        bar.close()
        if completed and shard.world > 1:
            shard.barrier()  # the slowest process has written its records
            done, failed, seconds = shard.sum([summary.done, summary.failed, summary.seconds])
            summary.done, summary.failed, summary.seconds = int(done), int(failed), seconds
        tables = {}
        if main:
            if shard.world > 1:
                for run in runs:  # every process's images (all of them once the run is complete)
                    run.records = _read_records(run.root)
            _write_manifest_all(folder, runs, dataset.ids)
            work_root = folder / ".work"
            if work_root.is_dir() and not any(work_root.iterdir()):
                work_root.rmdir()
            tables = _write_reports(folder, runs, cfg) if (suite is not None or len(runs) > 1) else {}
        if logger is not None:
            _log_summary(logger, runs, summary, tables, folder)
    return summary


def _round(v: float) -> float | None:
    return None if math.isnan(v) else round(v, 6)


def _load_maps(run: MethodRun, items, names) -> Tensor:
    """Saved maps of a method for a batch (for the gallery of a batch that method finished before)."""
    return torch.stack([load_tensors(run.root / "maps" / f"{names[it.id]}.pt")["saliency"].float() for it in items])


def _write_image(cfg, classifier, dataset, run, item, out, i, sal, target, names) -> dict:
    """The method's files for one image: maps (.pt), overlay, binary mask and stage strip (DM/HDM/MDM)."""
    name = names[item.id]
    paths = {"map": f"maps/{name}.pt", "overlay": "", "binary": "", "stages": ""}
    atomic_torch_save(_image_tensors(item, out, i, sal, target, cfg.output.stage_maps), run.root / paths["map"])
    if not cfg.output.pictures:
        return {"paths": paths, "pictures": None}
    rgb = classifier.preprocess.denormalize(item.image)
    over = overlay(rgb, sal)
    paths["overlay"] = f"overlays/{name}.png"
    save_png(over, run.root / paths["overlay"])
    strip = None
    if out is not None:
        stage_maps = [s.saliency[i] for s in out.stages] + ([out.saliency[i]] if out.method == "hdm" else [])
        strip = stage_strip(rgb, stage_maps)
        paths.update(binary=f"binary/{name}.png", stages=f"stages/{name}.png")
        save_png(out.binary[i, 0].float(), run.root / paths["binary"])
        save_png(strip, run.root / paths["stages"])
    return {"paths": paths, "pictures": (over, strip)}


def _write_gallery(folder: Path, classifier, item, maps: dict[str, Tensor], names) -> None:
    from hdm_lightning.evaluation import gallery

    rgb = classifier.preprocess.denormalize(item.image)
    tiles = [(label, overlay(rgb, m)) for label, m in maps.items()]
    save_png(gallery(rgb, tiles), folder / "gallery" / f"{names[item.id]}.png")


def _write_manifest_all(folder: Path, runs: list[MethodRun], order: list[str]) -> None:
    if len(runs) == 1:
        write_manifest(folder, runs[0].records, order)
        return
    merged = {f"{r.label}\0{i}": rec for r in runs for i, rec in r.records.items()}
    write_manifest(folder, merged, order)


def _write_reports(folder: Path, runs: list[MethodRun], cfg) -> dict[str, str]:
    from hdm_lightning.evaluation import write_curves, write_tables

    records = {r.label: list(r.records.values()) for r in runs}
    tables = write_tables(folder, records, list(cfg.evaluation.metrics))
    write_curves(folder, records)
    return tables


def _log_batch(logger, cfg, runs, pictures, classifier, logged: int) -> int:
    """Per-batch cost per method, and overlays / stage strips while under ``wandb.max_images``."""
    metrics = {}
    for run in runs:
        m = run.method
        if getattr(m, "seconds", None) is not None:
            metrics[f"cost/{run.label}/seconds"] = m.seconds
            metrics[f"cost/{run.label}/forward"] = m.forward_passes
            metrics[f"cost/{run.label}/backward"] = m.backward_passes
    logger.log_run(metrics)
    room = max(int(cfg.wandb.max_images) - logged, 0)
    pictures = pictures[:room]
    if pictures:

        def hwc(x):  # uint8 HWC, what wandb.Image takes without guessing a value range
            return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()

        captions = [f"{label} {it.id}: {classifier.class_name(t)}" for label, it, t, _, _ in pictures]
        logger.log_image("overlays", [hwc(p[3]) for p in pictures], caption=captions)  # at logger.position
        strips = [(c, p[4]) for c, p in zip(captions, pictures, strict=True) if p[4] is not None]
        if strips:
            logger.log_image("stages", [hwc(s) for _, s in strips], caption=[c for c, _ in strips])
        logger.position += 1
    return logged + len(pictures)


def _log_summary(logger, runs, summary: RunSummary, tables: dict[str, str], folder: Path) -> None:
    """The manifest and the comparison tables as W&B tables, curves and gallery as images; then close the run."""
    records = [rec for run in runs for rec in run.records.values()]
    columns = [c for c in MANIFEST_COLUMNS if c not in ("map", "overlay", "binary", "stages")]
    if records:
        logger.log_table("summary", columns=columns, data=[[r.get(c, "") for c in columns] for r in records])
    for family in tables:
        with open(folder / "tables" / f"{family}.csv") as f:
            rows = list(csv.reader(f))
        logger.log_table(f"tables/{family}", columns=rows[0], data=rows[1:])
    pictures = sorted((folder / "curves").glob("*.png")) + sorted((folder / "gallery").rglob("*.png"))[:16]
    for path in pictures:
        logger.log_image(f"{path.parent.name}/{path.stem}", [str(path)])
    exp = logger.experiment
    exp.summary.update(
        {
            "images_done": summary.done,
            "images_skipped": summary.skipped,
            "images_failed": summary.failed,
            "seconds_per_image": summary.seconds / summary.done if summary.done else None,
        }
    )
    exp.finish()
