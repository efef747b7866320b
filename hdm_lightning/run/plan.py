"""The plan of an explain run: its methods and where their outputs go, the fixed batches, what is left to do.

The images are cut into fixed batches in dataset order, so a rerun forms exactly the batches of an uninterrupted
run; a batch whose images all have records (for every method) is skipped, the batch in flight continues from its
work folder ``.work/batch-<k>/``. The batches still to do are dealt out to the processes in turn (batch
``todo[j]`` to rank ``j % world``) after the skip, so a resumed run stays balanced whatever its process count.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from hdm_lightning.config import ConfigError
from hdm_lightning.contract import METHODS, SaliencyMethod, build_method, method_params
from hdm_lightning.distributed import Shard
from hdm_lightning.run.folder import read_records

__all__ = ["MethodRun", "RunPlan", "build_runs", "plan_batches"]


@dataclass
class MethodRun:
    """One method of a run: where its outputs go, its records, and the saliency method that computes it."""

    label: str
    root: Path  # maps/, overlays/, binary/, stages/, records/ of this method
    method: SaliencyMethod
    records: dict[str, dict] = field(default_factory=dict)

    @property
    def finished(self) -> set[str]:
        """Ids whose outputs are all written."""
        return {i for i, r in self.records.items() if r["status"] == "ok"}


def build_runs(cfg: DictConfig, settings: DictConfig, model, folder: Path) -> list[MethodRun]:
    """The run's methods, each built once: ``cfg.methods`` (a comparison, one sub-folder each), else ``cfg.method``.

    Raises:
        ConfigError: a repeated or odd label, an unknown method or parameter (the message names the entry).
    """
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
        try:
            params = _lend_settings(entry.name, params, cfg.method, settings)
            method = build_method(entry.name, model, params)
        except (KeyError, ValueError) as e:
            raise ConfigError(f"methods: entry {label!r}: {e.args[0] if isinstance(e, KeyError) else e}") from None
        runs.append(MethodRun(label, folder / "methods" / label, method))
    return runs


def _lend_settings(name: str, params: dict, run_method: str, settings: DictConfig) -> dict:
    """The entry's params, with the run's method settings as ``config`` where the entry is (or wraps) that method.

    ``{name: hdm}`` gets ``config: <the run's HDM settings>``; so does the inner method of a wrapping method (a
    class with ``wraps``, e.g. ``{name: blurred, params: {of: hdm}}``: ``params.params.config``), unless given.
    """
    if name == run_method and "config" not in params:
        return {**params, "config": settings}
    if getattr(METHODS.get(name), "wraps", False):
        inner = params.get("of", method_params(name).get("of"))
        inner_params = dict(params.get("params") or {})
        if inner == run_method and "config" not in inner_params:
            return {**params, "params": {**inner_params, "config": settings}}
    return params


@dataclass
class RunPlan:
    """The batches of a run and this process's share of those still to do.

    Attributes:
        batches: every batch, as dataset indices, in dataset order.
        todo_all: ``(k, indices)`` of the batches with an image some method has not finished (every process).
        todo: this process's share of ``todo_all``.
        skipped: images every method finished before this invocation.
        to_explain: images of ``todo_all`` still to explain (all processes); ``mine``: of ``todo``.
    """

    batches: list[list[int]]
    todo_all: list[tuple[int, list[int]]]
    todo: list[tuple[int, list[int]]]
    skipped: int
    to_explain: int
    mine: int


def plan_batches(ids: list[str], runs: list[MethodRun], batch_size: int, shard: Shard, folder: Path) -> RunPlan:
    """Read the methods' records, cut the fixed batches and deal out those still to do.

    Rank 0 also removes the work folders of batches that an interruption caught after their outputs were written.
    """
    for run in runs:
        run.records = read_records(run.root)
    batches = [list(range(s, min(s + batch_size, len(ids)))) for s in range(0, len(ids), batch_size)]

    def done(i: int) -> bool:
        return all(ids[i] in run.finished for run in runs)

    todo_all = [(k, b) for k, b in enumerate(batches) if not all(done(i) for i in b)]
    if shard.is_main:
        pending = {k for k, _ in todo_all}
        for k in range(len(batches)):
            if k not in pending:  # its outputs were all written when an interruption came
                shutil.rmtree(folder / ".work" / f"batch-{k:06d}", ignore_errors=True)
    todo = shard.take(todo_all)
    return RunPlan(
        batches=batches,
        todo_all=todo_all,
        todo=todo,
        skipped=sum(1 for i in range(len(ids)) if done(i)),
        to_explain=sum(1 for _, b in todo_all for i in b if not done(i)),
        mine=sum(1 for _, b in todo for i in b if not done(i)),
    )
