"""A run folder: output names for item ids, the guard against mixing configs, the records of finished images.

Every file of a run is written to a temporary name and renamed (:mod:`hdm_lightning.io`), so a folder holds
finished files or none; an image's ``records/<id>.json`` is written last, so its presence means "done".
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from hdm_lightning.config import ConfigError
from hdm_lightning.data import IMAGE_EXTENSIONS
from hdm_lightning.metrics.perturbation import DEFAULT_TIES, EARLIER_TIES
from hdm_lightning.run.inputs import check_inputs

__all__ = [
    "NON_RESULT_KEYS",
    "TRAINING_NON_RESULT_KEYS",
    "check_output_dir",
    "check_run_folder",
    "output_names",
    "read_records",
    "safe_name",
]

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
    "explainer.engine.retain_memory",
    "evaluation.gallery",
    "evaluation.reference",
    "evaluation.ci_level",
    "evaluation.ci_resamples",
    "evaluation.ci_seed",
)

# The same for the training scripts (train_classifier.py; train_explainer.py adds its method ``preset``): a rerun may
# change how it trains (processes, logging, the number of epochs, early stopping) and still resume.
TRAINING_NON_RESULT_KEYS = (
    "imports",
    "num_workers",
    "output",
    "wandb",
    "trainer.log_every_n_steps",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.accelerator",
    "trainer.max_epochs",
    "trainer.early_stopping_patience",
)


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
    # An empty mapping is left out, like an unset key: a mapping key added to the schema with default {} (e.g.
    # evaluation.params) must not stop the resumption of a run whose config.yaml predates it.
    out = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _result_keys(cfg: dict, ignore: tuple[str, ...]) -> dict[str, object]:
    return {k: v for k, v in _flat(cfg).items() if not any(k == n or k.startswith(n + ".") for n in ignore)}


def _label(entry: dict) -> str:
    return entry.get("label") or entry.get("name")


def _more_methods(old: object, new: object) -> bool:
    """Whether comparison list ``new`` holds every entry of ``old`` unchanged (same label, name and params), and more.

    Entries are matched by label, so the new ones may come anywhere in the list.
    """
    if not (isinstance(old, list) and isinstance(new, list) and old and len(new) > len(old)):
        return False
    by_label = {_label(e): e for e in new if isinstance(e, dict)}
    return all(isinstance(e, dict) and by_label.get(_label(e)) == e for e in old)


def _schema_defaults(cfg: DictConfig) -> dict:
    schema = OmegaConf.get_type(cfg)
    if schema is None or not dataclasses.is_dataclass(schema):
        return {}
    return OmegaConf.to_container(OmegaConf.structured(schema))


# Settings whose default changed: a saved config without the key was made with the earlier value, so resuming it
# under the new default would mix two kinds of result in one folder.
EARLIER_DEFAULTS = {"evaluation.ties": EARLIER_TIES, "explainer.engine.prepare": False}
# What to say when a saved run differs from the new default only because the default changed.
EARLIER_HINTS = {
    "evaluation.ties": f" The default evaluation.ties is now {DEFAULT_TIES!r}: pass evaluation.ties={EARLIER_TIES} to "
    "resume this run as it was scored, or re-score its maps with python -m hdm_lightning.rescore.",
    "explainer.engine.prepare": " The fits now run a classifier with batch norm folded into its convolutions by "
    "default (same maps up to round-off): pass explainer.engine.prepare=false to resume this run as it was computed.",
}


def check_output_dir(folder: Path, key: str = "output.dir") -> None:
    """``folder`` is, or can become, a folder this process writes to: not a file, not under one, writable.

    Raises:
        ConfigError: naming the path in the way and the fix.
    """
    for place in (folder, *folder.absolute().parents):
        if not place.exists():
            continue
        if not place.is_dir():
            where = "is a file" if place == folder else f"lies under {str(place)!r}, which is a file"
            raise ConfigError(f"{key}={str(folder)!r} {where}: set {key} to a folder path (new or existing)")
        try:  # a folder made and removed again: what the run will do (os.access says yes to root even on /proc)
            os.rmdir(tempfile.mkdtemp(dir=place, prefix=".write-check-"))
        except OSError as e:
            raise ConfigError(
                f"{key}={str(folder)!r}: cannot create folders in {str(place)!r} ({e.strerror}): set {key} to a "
                "folder you can write to, or change the folder's permissions"
            ) from None
        return


def check_run_folder(
    folder: Path,
    cfg: DictConfig,
    ignore: tuple[str, ...] = NON_RESULT_KEYS,
    defaults: dict | None = None,
    given: dict[str, str] | None = None,
) -> None:
    """Refuse to mix results of different configs in one folder; archive the old run if asked to.

    Keys under ``ignore`` may differ between the saved config and ``cfg``, and a comparison's ``methods`` list may
    grow: every earlier entry unchanged, new entries anywhere (a rerun computes only the new methods). A key the
    saved config lacks (a setting added to the schema since that run) is no difference while ``cfg`` gives it its
    default: new settings default to the earlier behaviour. ``defaults`` are the schema's values (default: those of
    ``cfg``'s structured type).

    The files the config names (checkpoints, imported modules) must hold what they held when the run began
    (:mod:`hdm_lightning.run.inputs`), and so must a model and images ``given`` in memory (``{what: sha256}``).

    Raises:
        ConfigError: ``folder`` holds a run whose result-determining settings or input files differ and
            ``output.resume`` is true.
    """
    check_output_dir(folder)
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
    old.update({k: v for k, v in EARLIER_DEFAULTS.items() if k not in old and k in new})
    if _more_methods(old.get("methods"), new.get("methods")):
        old["methods"] = new["methods"]  # a comparison may grow: only the new methods are computed
    flat_defaults = _flat(_schema_defaults(cfg) if defaults is None else defaults)
    added = {k for k in set(new) - set(old) if k in flat_defaults and new[k] == flat_defaults[k]}
    diff = [k for k in sorted(set(old) | set(new)) if k not in added and old.get(k, "<unset>") != new.get(k, "<unset>")]
    if diff:
        shown = "; ".join(f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}" for k in diff[:6])
        more = f" (and {len(diff) - 6} more)" if len(diff) > 6 else ""
        hints = "".join(h for k, h in EARLIER_HINTS.items() if k in diff and old.get(k) == EARLIER_DEFAULTS[k])
        raise ConfigError(
            f"output folder {str(folder)!r} holds a run made with a different config ({shown}{more}). "
            "Choose another output.dir, or pass output.resume=false to move the old run into "
            f"{folder}/previous-<time>/ and start over.{hints}"
        )
    check_inputs(folder, cfg, given)


def read_records(folder: Path) -> dict[str, dict]:
    """Every record under ``folder/records`` by image id (a record is written last: its image is done)."""
    records = {}
    for path in sorted((folder / "records").rglob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # cannot happen with atomic writes; treat as not done
        records[rec["id"]] = rec
    return records
