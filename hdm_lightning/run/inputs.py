"""What a run folder's results were made from, beyond its config: the content of the files the config names.

The config guard (:func:`hdm_lightning.run.folder.check_run_folder`) compares keys, so a classifier checkpoint
retrained in place under the same name would let a rerun add maps of another classifier to the folder. Each run
therefore records, in ``inputs.json``, a SHA-256 digest of every file its config names (``classifier.checkpoint``,
an amortised explainer's ``checkpoint`` / ``init_checkpoint``, ``init.file``) and of the source file of each module
in ``imports:`` (custom schedules); a rerun against a changed one is refused. A model and images given in Python
(:func:`hdm_lightning.compare`) are recorded the same way, by a digest of their values (path ``memory``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

from omegaconf import DictConfig

from hdm_lightning.config import ConfigError
from hdm_lightning.config.methods import config_leaves
from hdm_lightning.io import atomic_write_json

__all__ = ["INPUTS_FILE", "check_inputs", "input_digests", "write_inputs"]

INPUTS_FILE = "inputs.json"
FILE_KEYS = ("checkpoint", "init_checkpoint", "file")  # config keys (at any depth) that name an input file


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _named_files(cfg: DictConfig) -> dict[str, str]:
    """``{config key: path}`` of every existing file named under one of :data:`FILE_KEYS`, at any depth."""
    return {
        name: value
        for name, keys, value in config_leaves(cfg)
        if keys[-1] in FILE_KEYS and isinstance(value, str) and Path(value).is_file()
    }


def _module_file(name: str) -> str | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    origin = spec.origin if spec is not None else None
    return origin if origin and origin.endswith(".py") and Path(origin).is_file() else None


def input_digests(cfg: DictConfig, given: dict[str, str] | None = None) -> dict[str, dict[str, str]]:
    """``{what: {"path": ..., "sha256": ...}}`` for the files ``cfg`` names and its ``imports:`` modules' sources.

    ``given``: ``{what: sha256}`` of inputs given in memory (recorded with the path ``memory``).
    """
    files = _named_files(cfg)
    for module in cfg.get("imports") or []:
        source = _module_file(module)
        if source is not None:
            files[f"imports: {module}"] = source
    out = {what: {"path": str(path), "sha256": _digest(Path(path))} for what, path in files.items()}
    return out | {what: {"path": "memory", "sha256": sha} for what, sha in (given or {}).items()}


def write_inputs(folder: Path, cfg: DictConfig, given: dict[str, str] | None = None) -> None:
    """Record the digests of ``cfg``'s input files in ``folder/inputs.json`` (left as it is when they are the same)."""
    digests, path = input_digests(cfg, given), folder / INPUTS_FILE
    if not path.is_file() or json.loads(path.read_text()) != digests:
        atomic_write_json(digests, path)


def check_inputs(folder: Path, cfg: DictConfig, given: dict[str, str] | None = None) -> None:
    """Refuse to resume the run in ``folder`` when a file it was made from now holds something else.

    A folder without ``inputs.json`` (a run from before it was recorded) is not checked; a file that is gone is
    left to the loader that reads it (it says so).

    Raises:
        ConfigError: naming the changed file and how to start afresh.
    """
    saved = folder / INPUTS_FILE
    if not saved.is_file():
        return
    old = json.loads(saved.read_text())
    for what, now in input_digests(cfg, given).items():
        before = old.get(what)
        if before is None or before["path"] != now["path"] or before["sha256"] == now["sha256"]:
            continue
        changed = "it" if now["path"] == "memory" else f"the file {now['path']!r}"
        raise ConfigError(
            f"{what}: {changed} has changed since the run in {str(folder)!r} began (its content digest differs), "
            "so resuming would mix results of two versions in one folder. Restore it, choose another output "
            f"folder, or pass output.resume=false to move the old run into {folder}/previous-<time>/ and start afresh"
        )
