"""One explanation run over a dataset: fixed batches, per-image outputs, manifest, W&B, resume.

Layout of a run folder (``output.dir``)::

    config.yaml                 the resolved config (method settings included)
    manifest.csv                one row per image: id, status, classes, score, seconds, passes, paths
    maps/<id>.pt                the maps as tensors (torch.load(..., weights_only=True))
    overlays/<id>.png           JET heatmap over the image (papers' figures)
    binary/<id>.png             the binary mask
    stages/<id>.png             input, each stage's map, the final map (papers/001 Fig. 5)
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

from hdm_lightning.config import ConfigError
from hdm_lightning.data import IMAGE_EXTENSIONS, build_dataset, load_items
from hdm_lightning.explainers import build_explainer
from hdm_lightning.io import atomic_torch_save, atomic_write_json, atomic_write_text
from hdm_lightning.models import check_num_classes, load_classifier
from hdm_lightning.viz import overlay, save_png, stage_strip

__all__ = ["RunSummary", "check_run_folder", "output_names", "run_explain", "safe_name", "write_manifest"]

# Keys that change how a run goes, not what it computes: a rerun may change them and still resume.
NON_RESULT_KEYS = (
    "imports",
    "preset",
    "batch_size",
    "device",
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
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in MANIFEST_COLUMNS})
    return atomic_write_text(buf.getvalue(), folder / "manifest.csv")


# ------------------------------------------------------------------------------------------- run


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"device {name!r} is not a torch device ({e}): use auto, cpu, cuda or cuda:<index>") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available here: use device=cpu (or auto)")
    return device


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


def _record(item, out, i: int, classifier, label_names, paths: dict[str, str], seconds: float) -> dict:
    target = int(out.target[i])
    prob = float(out.probability[i])
    return {
        "id": item.id,
        "status": "ok",
        "label": int(item.label),
        "label_name": label_names[item.label] if label_names is not None and item.label >= 0 else "",
        "target": target,
        "target_name": classifier.class_name(target) if target >= 0 else "",
        "probability": None if math.isnan(prob) else round(prob, 6),
        "activation": round(float(out.activation[i]), 6),
        "seconds": round(seconds, 3),
        "passes": int(out.passes_per_image),
        **paths,
        "error": "",
    }


def _image_tensors(item, out, i: int, keep_stages: bool) -> dict:
    data = {
        "id": item.id,
        "method": out.method,
        "saliency": out.saliency[i].float(),
        "binary": out.binary[i],
        "target": int(out.target[i]),
        "probability": float(out.probability[i]),
        "activation": float(out.activation[i]),
        "label": int(item.label),
        "passes": int(out.passes_per_image),
        # loss per fit step, averaged over the fit's vectors (the full per-vector history stays in W&B/API)
        "loss": {k: v[..., i].float().mean(-1) for k, v in out.history.items()},
    }
    if out.weights is not None:
        data["weights"] = out.weights[i].float()
    if item.mask is not None:
        data["ground_truth"] = item.mask
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


def run_explain(cfg: DictConfig, settings: DictConfig, rank: int = 0, world: int = 1) -> RunSummary:
    """Explain every image of ``cfg.data`` and write the outputs (see the module docstring).

    Args:
        cfg: the run config from :func:`hdm_lightning.config.load_run_config`.
        settings: the method settings from the same call.
        rank: this process's index among ``world`` processes (batch ``k`` goes to rank ``k % world``).
        world: number of processes sharing the run.

    Raises:
        ConfigError, DatasetError, ValueError: a problem with the config, the data or the classifier,
            with its fix in the message (raised before any image is explained).
    """
    folder = Path(cfg.output.dir)
    if rank == 0:
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
    explainer = build_explainer(cfg.method, settings)
    device = _device(cfg.device)
    model = classifier.model.to(device)
    names = output_names(dataset.ids)
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(OmegaConf.to_yaml(cfg), folder / "config.yaml")

    records = _read_records(folder)
    finished = {i for i, r in records.items() if r["status"] == "ok"}
    batches = [list(range(s, min(s + cfg.batch_size, len(dataset)))) for s in range(0, len(dataset), cfg.batch_size)]
    mine = [(k, b) for k, b in enumerate(batches) if k % world == rank]
    summary = RunSummary(folder=folder)
    summary.skipped = sum(1 for _, b in mine for i in b if dataset.ids[i] in finished)
    todo = [(k, b) for k, b in mine if any(dataset.ids[i] not in finished for i in b)]
    pending = {k for k, _ in todo}
    for k, _ in mine:
        if k not in pending:  # its outputs were all written when an interruption came
            shutil.rmtree(folder / ".work" / f"batch-{k:06d}", ignore_errors=True)

    logger = _wandb_logger(cfg, folder) if rank == 0 else None
    from tqdm import tqdm

    n_todo = sum(1 for _, b in todo for i in b if dataset.ids[i] not in finished)
    print(
        f"{cfg.method} on {dataset.describe()}; classifier {classifier.name} ({classifier.source}) on {device}; "
        f"{len(dataset)} images, {summary.skipped} done before, {n_todo} to explain",
        file=sys.stderr,
    )
    bar = tqdm(total=n_todo, unit="img", desc="explain", disable=not cfg.progress, file=sys.stderr)
    callbacks = []
    if cfg.progress:
        from hdm_lightning.callbacks.logging import StageProgress

        callbacks.append(StageProgress(bar))
    logged_images = 0
    try:
        for k, indices in todo:
            items, failed = load_items(dataset, indices)
            for _index, item_id, message in failed:
                rec = {"id": item_id, "status": "failed", "error": message}
                atomic_write_json(rec, folder / "records" / f"{names[item_id]}.json")
                records[item_id] = rec
                summary.failed += 1
                bar.update(1)
            if all(it.id in finished for it in items):
                continue  # only images that failed again are left in this batch
            images = torch.stack([it.image for it in items])
            target = torch.tensor([it.label for it in items]) if cfg.target == "label" else None
            work = folder / ".work" / f"batch-{k:06d}"
            out = explainer.explain(model, images, target, logger=logger, callbacks=callbacks, work_dir=work).cpu()
            per_image = out.seconds / len(items)
            pictures = []
            for i, item in enumerate(items):
                if item.id in finished:
                    continue  # written before an interruption inside this batch
                name = names[item.id]
                paths = {"map": f"maps/{name}.pt", "overlay": "", "binary": "", "stages": ""}
                atomic_torch_save(_image_tensors(item, out, i, cfg.output.stage_maps), folder / paths["map"])
                if cfg.output.pictures:
                    rgb = classifier.preprocess.denormalize(item.image)
                    maps = [s.saliency[i] for s in out.stages] + ([out.saliency[i]] if out.method == "hdm" else [])
                    over, strip = overlay(rgb, out.saliency[i]), stage_strip(rgb, maps)
                    paths.update(
                        overlay=f"overlays/{name}.png", binary=f"binary/{name}.png", stages=f"stages/{name}.png"
                    )
                    save_png(over, folder / paths["overlay"])
                    save_png(out.binary[i, 0].float(), folder / paths["binary"])
                    save_png(strip, folder / paths["stages"])
                    pictures.append((item, i, over, strip))
                rec = _record(item, out, i, classifier, dataset.class_names, paths, per_image)
                atomic_write_json(rec, folder / "records" / f"{name}.json")  # last: marks the image done
                records[item.id] = rec
                summary.done += 1
                summary.ids_done.append(item.id)
                bar.update(1)
            summary.seconds += out.seconds
            shutil.rmtree(work, ignore_errors=True)
            if rank == 0:
                write_manifest(folder, records, dataset.ids)
            if logger is not None:
                logged_images = _log_batch(logger, cfg, out, pictures, classifier, logged_images)
    finally:
        bar.close()
        if rank == 0:
            write_manifest(folder, records, dataset.ids)
            work_root = folder / ".work"
            if work_root.is_dir() and not any(work_root.iterdir()):
                work_root.rmdir()
        if logger is not None:
            _log_summary(logger, records, summary)
    return summary


def _log_batch(logger, cfg, out, pictures, classifier, logged: int) -> int:
    """Per-batch metrics, and overlays / stage strips while under ``wandb.max_images``."""
    logger.log_run(
        {
            "explain/seconds_per_image": out.seconds / max(out.saliency.shape[0], 1),
            "explain/passes_per_image": out.passes_per_image,
            "explain/probability": float(out.probability.nanmean()) if out.probability.numel() else float("nan"),
        }
    )
    room = max(int(cfg.wandb.max_images) - logged, 0)
    pictures = pictures[:room]
    if pictures:
        captions = [f"{it.id}: {classifier.class_name(int(out.target[i]))}" for it, i, _, _ in pictures]

        def hwc(x):  # uint8 HWC, what wandb.Image takes without guessing a value range
            return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()

        logger.log_image("overlays", [hwc(p[2]) for p in pictures], caption=captions)  # at logger.position
        logger.log_image("stages", [hwc(p[3]) for p in pictures], caption=captions)
        logger.position += 1
    return logged + len(pictures)


def _log_summary(logger, records: dict[str, dict], summary: RunSummary) -> None:
    """The manifest as a W&B table and the run's totals in the W&B summary; then close the W&B run."""
    records = list(records.values())
    columns = [c for c in MANIFEST_COLUMNS if c not in ("map", "overlay", "binary", "stages")]
    if records:
        logger.log_table("summary", columns=columns, data=[[r.get(c, "") for c in columns] for r in records])
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
