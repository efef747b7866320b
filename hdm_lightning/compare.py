"""Compare saliency methods from Python: ``hl.compare(model, images, methods, metrics) -> Comparison``.

The Python form of ``explain.py``'s comparison (a run config with ``methods:`` and ``evaluation.metrics:``): the
settings go through the same config loader and checks, the same runner explains and scores the images, and the
same run folder results (maps, overlays, records, manifest, gallery, curves, and the tables with their bootstrap
intervals and paired tests). A second call with the same ``output_dir`` resumes: finished images are read, not
explained again, and another model or other images are refused. Without ``output_dir`` the folder is a temporary
one, read into the :class:`Comparison` and removed. :meth:`Comparison.load` reads any run folder, ``explain.py``'s
included.
"""

from __future__ import annotations

import csv
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from hdm_lightning.config import ConfigError, load_run_config
from hdm_lightning.core import preserved
from hdm_lightning.data import ItemDataset, TensorImages
from hdm_lightning.io import load_tensors
from hdm_lightning.models import Classifier
from hdm_lightning.models.preprocess import Preprocess
from hdm_lightning.run.explain_run import Given, RunSummary, run_explain
from hdm_lightning.run.folder import read_records

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Comparison", "compare"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Comparison:
    """The methods' maps on the same images, their per-image records and the metric tables.

    Attributes:
        labels: the methods' labels, in the order given.
        ids: the images every method explained, in dataset order.
        maps: per label, the maps ``[N, 1, H, W]`` of ``ids`` (float32 in ``[0, 1]``, on the CPU).
        records: per label, ``{image id: record}`` (class, probability, cost, every metric value, file paths).
        tables: per metric family (and ``cost``), per label, ``{column: value}``: the mean over images, its bootstrap
            interval ``<column>_ci_low`` / ``_ci_high``, the paired test's ``<column>_p`` against the reference
            method, and ``images`` (as ``tables/<family>.csv``).
        markdown: per family, the table as Markdown (as ``tables/<family>.md``).
        folder: the run folder (``None`` when it was temporary).
        summary: what the call did (explained, skipped, failed; ``None`` for :meth:`load`).
    """

    labels: list[str]
    ids: list[str]
    maps: dict[str, Tensor]
    records: dict[str, dict[str, dict]]
    tables: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    markdown: dict[str, str] = field(default_factory=dict)
    folder: Path | None = None
    summary: RunSummary | None = None

    @classmethod
    def load(cls, folder: str | Path) -> Comparison:
        """Read a run folder (``hl.compare``'s or ``explain.py``'s, one method or several)."""
        folder = Path(folder)
        if not (folder / "config.yaml").is_file():
            raise FileNotFoundError(f"{str(folder)!r} holds no config.yaml: pass the output folder of a run")
        cfg = OmegaConf.load(folder / "config.yaml")
        entries = list(cfg.get("methods") or [])
        labels = [e.get("label") or e["name"] for e in entries] or [cfg.get("method", "hdm")]
        roots = {label: folder / "methods" / label if entries else folder for label in labels}
        records = {label: read_records(root) for label, root in roots.items()}
        ok = [{i for i, r in recs.items() if r.get("status") == "ok"} for recs in records.values()]
        ids = [i for i in _manifest_ids(folder) if all(i in done for done in ok)]
        maps = {
            label: _stack([load_tensors(roots[label] / records[label][i]["map"])["saliency"] for i in ids])
            for label in labels
        }
        order = [*(cfg.get("evaluation", {}).get("metrics") or []), "cost"]  # the run's families, then the cost
        files = sorted((folder / "tables").glob("*.csv"), key=lambda p: order.index(p.stem) if p.stem in order else 99)
        tables = {p.stem: _read_table(p) for p in files}
        markdown = {p.stem: p.with_suffix(".md").read_text() for p in files if p.with_suffix(".md").is_file()}
        return cls(labels, ids, maps, records, tables, markdown, folder)

    def values(self, column: str) -> dict[str, dict[str, float]]:
        """Per label, ``{image id: value}`` of one metric column (e.g. ``"deletion"``) or record key."""
        out = {}
        for label, recs in self.records.items():
            out[label] = {i: recs[i].get("metrics", {}).get(column, recs[i].get(column)) for i in self.ids}
        return out

    def _repr_markdown_(self) -> str:  # a notebook shows the tables
        return "\n\n".join(f"**{family}**\n\n{md}" for family, md in self.markdown.items()) or repr(self)

    def __repr__(self) -> str:
        where = f" in {self.folder}" if self.folder is not None else ""
        return f"Comparison({self.labels}, {len(self.ids)} images, tables {list(self.tables)}{where})"


def _manifest_ids(folder: Path) -> list[str]:
    with open(folder / "manifest.csv", newline="") as f:
        return list(dict.fromkeys(row["id"] for row in csv.DictReader(f)))


def _stack(maps: list[Tensor]) -> Tensor:
    return torch.stack([m.float().reshape(1, *m.shape[-2:]) for m in maps]) if maps else torch.empty(0, 1, 0, 0)


def _read_table(path: Path) -> dict[str, dict[str, float]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {r["method"]: {k: float(v) if v != "" else math.nan for k, v in r.items() if k != "method"} for r in rows}


def _entry(method: str | Mapping) -> dict:
    if isinstance(method, str):
        return {"name": method}
    if isinstance(method, Mapping) and set(method) <= {"name", "label", "params"} and "name" in method:
        return dict(method)
    raise ConfigError(
        f"methods: {method!r} is not a method: give a registered name ('gradcam') or a mapping "
        "{'name': ..., 'label': ..., 'params': {...}} (DM/HDM/MDM: params {'config': ...})"
    )


def _classifier(model: nn.Module | Classifier, mean, std, size: int) -> Classifier:
    """``model`` itself when it is a :class:`Classifier`, else a record of it (classes counted by one forward pass)."""
    if isinstance(model, Classifier):
        return model
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module or a Classifier, got {type(model).__name__}")
    param = next(model.parameters(), None)
    probe = torch.zeros(1, 3, size, size, device=param.device if param is not None else "cpu")
    with preserved(model), torch.no_grad():
        num_classes = int(model.eval()(probe).shape[-1])
    prep = Preprocess(size=size, resize=size, mean=tuple(mean), std=tuple(std))
    return Classifier(model, prep, num_classes, None, type(model).__name__, "given in memory")


def compare(
    model: nn.Module | Classifier,
    images: Tensor | ItemDataset,
    methods: Sequence[str | Mapping],
    metrics: Sequence[str] = (),
    *,
    labels: Sequence[int] | Tensor | None = None,
    masks: Tensor | None = None,
    target: object = "predicted",
    evaluation: Mapping | None = None,
    output_dir: str | Path | None = None,
    batch_size: int = 4,
    device: str | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    settings: Mapping | None = None,
) -> Comparison:
    """Explain ``images`` with every one of ``methods``, score the maps with ``metrics`` and tabulate them.

    Args:
        model: the classifier (an ``nn.Module``), or a :class:`~hdm_lightning.models.Classifier` (e.g. from
            ``load_classifier``), which brings its preprocessing and class names.
        images: a normalised ``[N, C, H, W]`` tensor, or a dataset (``hdm_lightning.data``, e.g. ``build_dataset``).
        methods: registered names (``"gradcam"``), or mappings ``{"name", "label", "params"}`` as the entries of a run
            config's ``methods:`` (DM/HDM/MDM: ``params: {"config": <preset path or overrides>}``).
        metrics: metric families (``evaluation.metrics``): ``deletion_insertion``, ``drop_increase``, ``road``,
            ``proportion``, ``pointing_game``, ``segmentation``, ``stability``, ``sanity``, a plugin's.
        labels: a tensor's class labels (for ``target="label"``).
        masks: a tensor's ground-truth masks ``[N, H, W]`` (pointing game, Proportion, segmentation).
        target: ``"predicted"``, ``"label"``, or a prototype (``{"prototype": k}``), as a run config's ``target``.
        evaluation: other ``evaluation`` settings (``steps``, ``ties``, ``reference``, ``ci_level``, ``params``, ...).
        output_dir: the run folder (resumed when it holds this comparison); ``None``: a temporary one.
        batch_size: images explained together.
        device: where to run (default: the model's device; the model is left there).
        mean: the per-channel mean of a plain ``nn.Module``'s normalisation (overlays, metric baselines).
        std: its per-channel standard deviation (a :class:`Classifier` brings both).
        settings: any other run-config settings (``output``, ``wandb``, ``progress``; W&B is off unless set here).

    Raises:
        ConfigError: a bad method, metric or setting (the message names it and the fix).
    """
    if isinstance(images, Tensor):
        dataset = TensorImages(images, labels=labels, masks=masks)
    elif labels is not None or masks is not None:
        raise ConfigError("labels and masks go with a tensor of images; a dataset brings its own")
    else:
        dataset = images
    classifier = _classifier(model, mean, std, int(dataset[0].image.shape[-1]) if len(dataset) else 1)
    param = next(classifier.model.parameters(), None)
    with tempfile.TemporaryDirectory(prefix="hl-compare-") as tmp:
        folder = Path(output_dir) if output_dir is not None else Path(tmp)
        values = {
            "methods": [_entry(m) for m in methods],
            "evaluation": {**dict(evaluation or {}), "metrics": list(metrics)},
            "target": target,
            "batch_size": batch_size,
            "device": device or (str(param.device) if param is not None else "cpu"),
            "progress": False,
            "classifier": {"name": f"memory:{classifier.name}"},
            "data": {"kind": "memory"},
            "wandb": {"mode": "disabled"},
            **dict(settings or {}),
            "output": {**dict((settings or {}).get("output", {})), "dir": str(folder)},
        }
        cfg, method_settings = load_run_config(None, values=values)
        summary = run_explain(cfg, method_settings, given=Given(classifier, dataset))
        result = Comparison.load(folder)
    result.summary = summary
    result.folder = Path(output_dir) if output_dir is not None else None
    return result
