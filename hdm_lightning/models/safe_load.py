"""Reading weight files safely and loading them strictly, with errors that say what does not fit.

Every file is read with ``torch.load(..., weights_only=True)``: tensors and plain containers only, never pickled
code. A state dict is loaded with ``strict=True`` after a report of the first few missing, unexpected and
mismatched keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["load_state_strict", "safe_torch_load"]

_MAX_KEYS = 5  # keys quoted per kind in a state-dict mismatch: enough to see the pattern, not hundreds of lines


def safe_torch_load(path: Path, what: str) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with a ValueError that says what went wrong."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip / unpickling / EOF errors all mean the same thing to the user
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(
            f"cannot read {what} {str(path)!r}: it is not a checkpoint written by train_classifier.py (or it holds "
            f"more than tensors, which weights_only loading refuses). torch.load said: {type(e).__name__}: {first}"
        ) from None


def _fit_report(model: nn.Module, state: Mapping[str, Any]) -> str | None:
    """``None`` when ``state`` fits ``model`` exactly, else the first few missing/unexpected/mismatched keys."""
    expected = model.state_dict()
    # Files saved before torch 0.4.1 (many of torchvision's, resnet18's included) lack BatchNorm's
    # num_batches_tracked; BatchNorm's own loading fills it in, so it does not count as missing.
    missing = [k for k in expected if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and isinstance(v, Tensor) and v.shape != expected[k].shape
    ]
    parts = [
        f"{len(keys)} {kind} {keys[:_MAX_KEYS]}{' ...' if len(keys) > _MAX_KEYS else ''}"
        for kind, keys in (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched))
        if keys
    ]
    return "; ".join(parts) if parts else None


def load_state_strict(model: nn.Module, state: Mapping[str, Any], what: str, fix: str) -> None:
    """Load ``state`` with ``strict=True``, or raise a ValueError quoting the first few bad keys and ``fix``."""
    report = _fit_report(model, state)
    if report is not None:
        raise ValueError(f"{what} does not fit the model: {report}. {fix}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # e.g. a non-tensor value; the key report above catches the usual cases
        raise ValueError(f"{what} does not fit the model: {str(e).splitlines()[0]}. {fix}") from None
