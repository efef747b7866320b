"""One explanation run over a dataset: the plan, the batches, the writer (``explain.py``).

The parts: :mod:`hdm_lightning.run.plan` (methods, fixed batches, resume, this process's share),
:func:`hdm_lightning.run.batch.explain_batch` (every method on one batch, then the metrics),
:mod:`hdm_lightning.run.writer` (files, records, manifest, gallery, tables) and :mod:`hdm_lightning.run.wandb_log`.
The run folder's layout is in :mod:`hdm_lightning.run.writer`, plus ``wandb/`` (the W&B run, offline by default)
and ``.work/batch-<k>/`` (mid-stage checkpoints of the batch in flight, removed when it is written).

Resume: a rerun forms exactly the batches of an uninterrupted run; a batch whose images all have records is
skipped, the batch in flight continues from its work folder.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from hdm_lightning.callbacks.logging import StageProgress
from hdm_lightning.config import ConfigError, run_defaults
from hdm_lightning.contract import RunContext
from hdm_lightning.data import ItemDataset, build_dataset, load_items
from hdm_lightning.distributed import Shard, run_device
from hdm_lightning.evaluation import Evaluation, MetricSuite
from hdm_lightning.io import atomic_write_text
from hdm_lightning.models import Classifier, check_num_classes, load_classifier
from hdm_lightning.run.batch import batch_targets, explain_batch
from hdm_lightning.run.folder import check_run_folder, output_names, read_records
from hdm_lightning.run.inputs import write_inputs
from hdm_lightning.run.plan import MethodRun, RunPlan, build_runs, plan_batches
from hdm_lightning.run.prototypes import explained_classifier
from hdm_lightning.run.wandb_log import log_batch, log_summary, wandb_logger
from hdm_lightning.run.writer import (
    load_maps,
    write_failed,
    write_gallery,
    write_manifest_all,
    write_method_batch,
    write_reports,
)
from hdm_lightning.signals import Interrupted

__all__ = ["Given", "RunSummary", "run_explain"]


@dataclass
class Given:
    """A classifier and images given in Python (:func:`hdm_lightning.compare`) instead of ``classifier:`` and ``data:``.

    A resumed run refuses another model or other images (by their digests).
    """

    classifier: Classifier
    dataset: ItemDataset

    def digests(self) -> dict[str, str]:
        """``{what: sha256}`` of the model's weights and the images (:mod:`hdm_lightning.run.inputs`)."""
        h = hashlib.sha256()
        for name, t in self.classifier.model.state_dict().items():
            h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        digest = getattr(self.dataset, "digest", None)
        images = {"images (given in memory)": digest()} if digest is not None else {}
        return {"model (given in memory)": h.hexdigest(), **images}


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


@dataclass
class _Run:
    """What every batch of a run needs: config, classifier, data, methods, metrics, names, logger."""

    cfg: DictConfig
    shard: Shard
    folder: Path
    classifier: object
    dataset: object
    model: torch.nn.Module
    runs: list[MethodRun]
    evaluation: Evaluation
    suite: MetricSuite | None
    names: dict[str, str]
    logger: object = None
    callbacks: list = field(default_factory=list)
    gallery_ids: set[str] = field(default_factory=set)
    logged_images: int = 0


def run_explain(
    cfg: DictConfig, settings: DictConfig, shard: Shard | None = None, given: Given | None = None
) -> RunSummary:
    """Explain every image of ``cfg.data`` with every method and write the outputs (see the module docstring).

    Args:
        cfg: the run config from :func:`hdm_lightning.config.load_run_config`.
        settings: the method settings from the same call.
        shard: this process's place among the run's processes (:func:`hdm_lightning.distributed.launch`);
            ``None``: one process on ``cfg.device``. The batches still to explain are dealt out in turn
            (batch ``todo[j]`` to rank ``j % world``); rank 0 writes config, manifest and tables and
            owns the W&B run; the others write their images' files only.
        given: a classifier and images given in Python (one process), instead of ``cfg.classifier`` and ``cfg.data``.

    Raises:
        ConfigError, DatasetError, ValueError: a problem with the config, the data or the classifier,
            with its fix in the message (raised before any image is explained).
    """
    run = _prepare(cfg, settings, shard if shard is not None else Shard(device=run_device(cfg.device)), given)
    plan = plan_batches(run.dataset.ids, run.runs, cfg.batch_size, run.shard, run.folder)
    summary = RunSummary(folder=run.folder, skipped=plan.skipped if run.shard.is_main else 0)
    run.logger = wandb_logger(cfg, run.folder) if run.shard.is_main else None
    bar = _progress(run, plan)
    completed = False
    try:
        for k, indices in plan.todo:
            _one_batch(run, k, indices, summary, bar)
        completed = True
    except Interrupted as e:
        e.finished = (
            f"{summary.done} images explained by this run, {plan.skipped} before it, "
            f"{plan.mine - summary.done - summary.failed} left; results so far in {run.folder}"
        )
        raise
    finally:
        bar.close()
        _finish(run, summary, completed)
    return summary


def _prepare(cfg: DictConfig, settings: DictConfig, shard: Shard, given: Given | None) -> _Run:
    """Check the folder, load the classifier and the data, build the methods and metrics, write ``config.yaml``."""
    folder = Path(cfg.output.dir)
    digests = None if given is None else given.digests()
    if shard.is_main:  # may archive an old run; the others wait for it at the barrier below
        check_run_folder(folder, cfg, defaults=run_defaults(cfg.method), given=digests)
    classifier = load_classifier(cfg.classifier) if given is None else given.classifier
    dataset = build_dataset(cfg.data, classifier.preprocess) if given is None else given.dataset
    _check_labels(cfg, classifier, dataset)
    classifier = explained_classifier(classifier, cfg.target)
    model = classifier.model.to(shard.device)
    runs = build_runs(cfg, settings, model, folder)
    try:
        evaluation = Evaluation.from_config(cfg.evaluation)
        evaluation.stats.check_reference([r.label for r in runs])
    except ValueError as e:
        raise ConfigError(f"evaluation: {e}") from None
    suite = None
    if evaluation.families:
        prep = classifier.preprocess
        try:
            suite = MetricSuite(model, evaluation, prep.mean, prep.std)
            suite.check_masks(dataset, warn=shard.is_main)  # every process raises, one warns
        except ValueError as e:
            raise ConfigError(f"evaluation: {e}") from None
    names = output_names(dataset.ids)
    if shard.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        write_inputs(folder, cfg, digests)  # before config.yaml: a folder with a config has its inputs recorded
        atomic_write_text(OmegaConf.to_yaml(cfg), folder / "config.yaml")
    shard.barrier()  # rank 0 has checked (or archived) the folder: everyone reads the same records
    gallery_ids = set(dataset.ids[: evaluation.gallery]) if len(runs) > 1 else set()
    return _Run(cfg, shard, folder, classifier, dataset, model, runs, evaluation, suite, names, gallery_ids=gallery_ids)


def _check_labels(cfg: DictConfig, classifier, dataset) -> None:
    """The classifier's head fits the dataset's classes; ``target=label`` needs a label for every image."""
    if cfg.target == "label" or classifier.source.startswith("checkpoint"):
        check_num_classes(classifier, dataset.num_classes, dataset.describe())
    if cfg.target == "label":
        unlabelled = [i for i, label in zip(dataset.ids, dataset.labels, strict=True) if label < 0]
        if unlabelled:
            raise ConfigError(
                f"target=label needs a label for every image, but {len(unlabelled)} have none (e.g. "
                f"{unlabelled[0]!r}): use target=predicted, or a dataset with classes"
            )


def _progress(run: _Run, plan: RunPlan) -> tqdm:
    """Announce the run on stderr (rank 0) and open the progress bar (with a per-fit callback when shown)."""
    main, shard = run.shard.is_main, run.shard
    if main:
        where = f"{shard.device}" if shard.world == 1 else f"{shard.world} processes ({shard.device.type})"
        print(
            f"{', '.join(r.label for r in run.runs)} on {run.dataset.describe()}; classifier {run.classifier.name} "
            f"({run.classifier.source}) on {where}; {len(run.dataset)} images, {plan.skipped} done before, "
            f"{plan.to_explain} to explain",
            file=sys.stderr,
        )
    desc = "explain" if shard.world == 1 else f"explain (rank 0 of {shard.world})"
    bar = tqdm(total=plan.mine, unit="img", desc=desc, disable=not (run.cfg.progress and main), file=sys.stderr)
    if run.cfg.progress and main:
        run.callbacks.append(StageProgress(bar))
    return bar


def _done_everywhere(run: _Run, item_id: str) -> bool:
    return all(item_id in r.finished for r in run.runs)


def _one_batch(run: _Run, k: int, indices: list[int], summary: RunSummary, bar: tqdm) -> None:
    """Load batch ``k``, explain it with every method that has work there, write everything, log it."""
    cfg, names = run.cfg, run.names
    items, failed = load_items(run.dataset, indices)
    for _index, item_id, message in failed:
        write_failed(run.runs, item_id, message, names)
        summary.failed += 1
        bar.update(1)
    if all(_done_everywhere(run, it.id) for it in items):
        return  # only images that failed again are left in this batch
    images = torch.stack([it.image for it in items]).to(run.shard.device)
    targets = batch_targets(run.model, images, [it.label for it in items], cfg.target)
    work = run.folder / ".work" / f"batch-{k:06d}"

    def context_for(method_run: MethodRun) -> RunContext:
        return RunContext(run.logger, run.callbacks, work if len(run.runs) == 1 else work / method_run.label)

    ids = [it.id for it in items]
    outs, pictures = {}, []
    for method_run, out in explain_batch(
        run.runs, images, targets, ids, [it.mask for it in items], context_for, run.suite
    ):
        pictures += write_method_batch(cfg, run.classifier, run.dataset, method_run, items, targets, out, names)
        outs[method_run.label] = out
    _gallery(run, items, outs)
    new = [it for it in items if it.id not in summary.ids_done]
    summary.done += len(new)
    summary.ids_done += [it.id for it in new]
    summary.seconds += sum(o.result.seconds for o in outs.values())
    bar.update(len(new))
    shutil.rmtree(work, ignore_errors=True)
    if run.shard.is_main:  # rank 0's view so far; the full manifest is written when every process is done
        write_manifest_all(run.folder, run.runs, run.dataset.ids)
    if run.logger is not None:
        costs = {label: o.result for label, o in outs.items()}
        run.logged_images = log_batch(run.logger, cfg, costs, pictures, run.classifier, run.logged_images)


def _gallery(run: _Run, items, outs) -> None:
    """A comparison's gallery pictures of this batch's first images (saved maps of methods done before)."""
    if not any(it.id in run.gallery_ids for it in items):
        return
    maps = {}
    for method_run in run.runs:
        if method_run.label in outs:
            maps[method_run.label] = outs[method_run.label].maps
        else:
            maps[method_run.label] = load_maps(method_run, items, run.names)
    for i, item in enumerate(items):
        if item.id in run.gallery_ids and maps:
            write_gallery(run.folder, run.classifier, item, {m: v[i] for m, v in maps.items()}, run.names)


def _finish(run: _Run, summary: RunSummary, completed: bool) -> None:
    """Sum the processes' counts, write the full manifest and the reports (rank 0), close the W&B run."""
    shard = run.shard
    if completed and shard.world > 1:
        shard.barrier()  # the slowest process has written its records
        done, failed, seconds = shard.sum([summary.done, summary.failed, summary.seconds])
        summary.done, summary.failed, summary.seconds = int(done), int(failed), seconds
    tables = {}
    if shard.is_main:
        if shard.world > 1:
            for method_run in run.runs:  # every process's images (all of them once the run is complete)
                method_run.records = read_records(method_run.root)
        write_manifest_all(run.folder, run.runs, run.dataset.ids)
        work_root = run.folder / ".work"
        if work_root.is_dir() and not any(work_root.iterdir()):
            work_root.rmdir()
        if run.suite is not None or len(run.runs) > 1:
            tables = write_reports(run.folder, run.runs, run.evaluation)
    if run.logger is not None:
        log_summary(run.logger, run.runs, summary, tables, run.folder)
