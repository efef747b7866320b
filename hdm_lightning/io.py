"""Atomic file writes: write to a temporary name in the same folder, then ``os.replace``.

A reader (or a resumed run) therefore sees either the old file or the complete new one, never a
partial file, whenever the process is killed.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

__all__ = ["atomic_path", "atomic_torch_save", "atomic_write_json", "atomic_write_text", "load_tensors"]


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_torch_save(obj: object, path: str | Path) -> Path:
    """``torch.save`` atomically. Keep ``obj`` to tensors, numbers, strings, lists and dicts (weights_only loading)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def atomic_write_text(text: str, path: str | Path) -> Path:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_json(obj: object, path: str | Path) -> Path:
    """Write JSON atomically (sorted keys, one object per file)."""
    return atomic_write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n", path)


def load_tensors(path: str | Path) -> object:
    """``torch.load(path, map_location="cpu", weights_only=True)``: tensors and plain data only, no code."""
    return torch.load(path, map_location="cpu", weights_only=True)
