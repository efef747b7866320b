"""Structured configs of the mask methods (DM, HDM, MDM) and their loading.

The dataclass defaults are the papers' CUB-200-2011 settings (docs/methods.md, "Decisions on what the papers
leave open"); ``configs/methods/*.yaml`` hold the named presets. Unknown keys and wrongly typed values are
rejected with the key's name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


@dataclass
class ThresholdConfig:
    """Threshold ``gamma``: ``kind: quantile`` (per-image quantile in [0, 1]) or ``kind: value``."""

    kind: str = "quantile"  # quantile (per-image quantile of the combined map) | value (an absolute level)
    value: float = 0.5  # the quantile in [0, 1] (0.5: the median) or the absolute level


@dataclass
class ScheduleConfig:
    """A registered mask schedule by ``name``; ``params`` are its ``__init__`` arguments."""

    name: str = "dm"  # a registered mask schedule: dm | mdm | one registered by an `imports:` module
    # the schedule's __init__ arguments (dm: sizes, factors, epochs, lr, eta, ...)
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class EarlyStopConfig:
    """Stop a (vector, image) row once its loss has not improved for ``patience`` steps.

    The MDM authors' code used patience 200 after at least 2000 steps. Rows stop independently,
    so batched training still equals training each vector alone, and a stopped row costs no more
    forward/backward passes (``passes`` counts the rows run).
    """

    enabled: bool = False  # stop each (vector, image) row on its own loss plateau
    min_steps: int = 2000  # never before this many steps
    patience: int = 200  # steps without an improvement larger than min_delta
    min_delta: float = 0.0  # smallest loss decrease that counts as an improvement


@dataclass
class EngineConfig:
    """How the fits run (not what they compute).

    ``max_rows`` caps the masked images per forward/backward (memory); ``None`` = all at once.
    ``precision`` is passed to the Lightning Trainer (``32-true``, ``bf16-mixed``, ``16-mixed``).
    ``channels_last`` converts the classifier (restored afterwards) and the masked batch.
    ``retain_memory`` raises glibc's mmap/trim thresholds once per process (:mod:`hdm_lightning.allocator`):
    the fits stop mapping and faulting in their activations every step; same maps, less system time.
    ``prepare`` folds batch norm into a copy of the classifier (:mod:`hdm_lightning.prepare`).
    """

    precision: str = "32-true"  # Lightning precision of the fits: 32-true | bf16-mixed | 16-mixed | 64-true
    channels_last: bool = False  # channels_last memory format for the classifier (restored) and masked batch
    max_rows: int | None = None  # masked images per forward/backward (gradients accumulated); null: all at once
    seed: int = 0  # seed set before each explanation (reproducible maps)
    progress_bar: bool = False  # Lightning's progress bar inside each fit
    log_every_n_steps: int = 50  # loss logging interval of the fits
    checkpoint_every_n_steps: int | None = None  # with a work folder: save the fit in flight every N steps
    checkpoint_every_n_seconds: float | None = 60.0  # ... and/or every this many seconds
    retain_memory: bool = True  # glibc: keep freed memory for the next step (no page faults); RSS stays at its peak
    # fit a copy of the classifier with batch norm folded into the convolutions before it, TF-"same" padding made
    # static and activations out of place (checked exact in float64; same maps up to round-off, a cheaper pass); a
    # model with nothing to fold runs as given
    prepare: bool = True
    # torch.compile the classifier the fits run: none | default | reduce-overhead (CUDA graphs: the one-image case on
    # a GPU) | max-autotune. On the CPUs measured it makes a pass slower; each new row count compiles again
    compile: str = "none"


@dataclass
class MaskOptimConfig:
    """The mask optimiser (``hdm_lightning.explainers.optim``): the papers' Adam, or the stable dynamics.

    ``dynamics: paper`` is ``torch.optim.Adam`` at the schedule's constant ``lr``, last iterate (the papers'
    exact dynamics and the default; the other keys are ignored). ``dynamics: stable`` uses the keys below:
    maps that 1e-6 input noise, batch and process count leave as they are, but at 224x224 the masks hardly
    move and the maps score near a random map (docs/methods.md, "Stable maps"), so they are not the default.
    """

    dynamics: str = "paper"  # paper (Adam, constant lr, last iterate: the papers) | stable (the keys below)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam's beta1, beta2
    eps: float = 1e-8  # Adam's absolute eps
    eps_relative: float | None = 300.0  # eps += this x rms of sqrt(v_hat) over each vector; null: absolute eps only
    schedule: str = "cosine"  # learning-rate schedule within each fit: cosine (decay to 0) | constant
    warmup: float = 0.1  # fraction of each fit's steps with a linear learning-rate warm-up
    average_tail: float = 0.5  # result = mean of the iterates of this last fraction of steps (0: last iterate)


@dataclass
class MaskMethodConfig:
    """What every mask method (DM, HDM, MDM) is set by: its schedule, threshold, optimiser, restarts and engine."""

    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig("dm"))
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)
    upsample: str = "bilinear"  # g: 'bilinear' (align_corners=False) or 'nearest'
    tau: float = 0.5  # initial mask value
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    optim: MaskOptimConfig = field(default_factory=MaskOptimConfig)  # mask optimiser: the papers' | stable
    # the expected map: the mean of this many runs from x + restart_noise * N(0, 1), batched as rows (1: one run, the
    # papers); HDM averages per stage (docs/methods.md, "Stable maps"). Costs this many times the passes.
    restarts: int = 1
    restart_noise: float = 1e-6  # std of the restarts' input noise in normalised units (unused with restarts: 1)
    engine: EngineConfig = field(default_factory=EngineConfig)


@dataclass
class DMConfig(MaskMethodConfig):
    """Dynamic masks (HDM paper, arXiv 2301.04970, §3.2)."""

    aux_reference: str = "original"  # 'original' (Eq. 8) or 'previous' (Alg. 1 line 19)
    # tau: every vector starts at tau (the papers) | amortised: the vectors it predicts (benchmark, and levels) start at
    # a trained predictor's output for the image (train_explainer.py), then the schedule's steps run (epochs 0: none)
    init: str = "tau"
    init_checkpoint: str | None = None  # init amortised: the explainer.pt that train_explainer.py wrote


@dataclass
class MixingConfig:
    """HDM's learned mixing (HDM paper, arXiv 2301.04970, Eq. 3-5): Adam on ``v`` (initialised to ones)."""

    epochs: int = 400  # optimiser steps of the mixing fit
    lr: float = 0.1  # Adam learning rate of v
    lam: float = 1e-4  # lambda, weight of L_R(M_h)


@dataclass
class HDMConfig(DMConfig):
    """Hierarchical dynamic masks: ``stages`` DM runs on progressively masked images, then mixing."""

    stages: int = 3  # S (paper: 3 on CUB, 1 on iChallenge-PM)
    mixing: MixingConfig = field(default_factory=MixingConfig)


@dataclass
class MDMConfig(MaskMethodConfig):
    """Multiple dynamic mask (MDM paper, arXiv 2207.08046): the shared settings with MDM's defaults."""

    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig("mdm"))
    threshold: ThresholdConfig = field(default_factory=lambda: ThresholdConfig("value", 5.0))
    # With dynamics: stable, MDM keeps eps_relative 30 (300 moves its masks even less in short fits).
    optim: MaskOptimConfig = field(default_factory=lambda: MaskOptimConfig(eps_relative=30.0))


INITS = ("tau", "amortised")


def config_leaves(tree: Any, where: str = "") -> Iterator[tuple[str, tuple, Any]]:
    """``(dotted name, keys from the root, value)`` of every leaf of a config (a DictConfig, dict or list)."""
    if OmegaConf.is_config(tree):
        tree = OmegaConf.to_container(tree)
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for key, value in items:
        name = f"{where}.{key}" if where and isinstance(key, str) else f"{where}[{key}]" if where else str(key)
        if isinstance(value, dict | list):
            for leaf, keys, leaf_value in config_leaves(value, name):
                yield leaf, (key, *keys), leaf_value
        else:
            yield name, (key,), value


def check_finite(tree: Any) -> None:
    """Refuse a NaN or infinite number anywhere in a config (a DictConfig, dict or list), naming its key.

    A NaN learning rate or weight passes every ``< 0`` check and ends in all-zero maps or a crash mid-run, so it is
    refused where the config is loaded. Inside the free-form mappings (``explainer``, any ``params``), which keep
    ``lr=nan`` as the text ``"nan"`` for ``float()`` to read later, such strings are refused too.
    """
    for name, keys, value in config_leaves(tree):
        free = any(k in ("explainer", "params") for k in keys[:-1])
        if free and isinstance(value, str) and value.strip().lower().lstrip("+-") in ("nan", "inf", "infinity"):
            value = float(value)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}: give a number (not nan or inf)")


def check_init(init: str, checkpoint: str | None) -> None:
    """``init`` is ``tau`` or ``amortised``, and ``amortised`` names its ``init_checkpoint``."""
    if init not in INITS:
        raise ValueError(f"init must be one of {list(INITS)}, got {init!r}")
    if init == "amortised" and not checkpoint:
        raise ValueError(
            "init: amortised needs init_checkpoint: <explainer.pt written by train_explainer.py> "
            "(python train_explainer.py --config configs/explainer/synthetic.yaml)"
        )


METHOD_CONFIGS: dict[str, type] = {}
"""Name -> structured config of the methods configured by one (DM, HDM, MDM): filled when such a method is
registered (:func:`hdm_lightning.contract.register_method`), so the method class is the one place that names it."""
CONFIG_CHECKS: dict[str, Callable[[DictConfig], object]] = {}


def register_method_config(name: str, schema: type, check: Callable[[DictConfig], object]) -> None:
    """Make ``schema`` the ``explainer:`` settings of method ``name``; ``check(settings)`` validates merged ones.

    Called by :func:`hdm_lightning.contract.register_method` for a method class with a ``config_class``.
    """
    METHOD_CONFIGS[name] = schema
    CONFIG_CHECKS[name] = check


def method_config(method: str, overrides: Any = None) -> DictConfig:
    """The structured config of ``method`` merged with ``overrides``.

    Args:
        method: ``"hdm"``, ``"dm"`` or ``"mdm"``.
        overrides: ``None``, a dict, a DictConfig, a dataclass instance, or a path to a YAML file
            (a preset in ``configs/methods/``). A YAML file may name its method with ``method:``.

    Raises:
        ValueError: an unknown key, a value of the wrong type, or a preset for another method.
    """
    if method not in METHOD_CONFIGS:
        raise KeyError(f"Unknown method {method!r}. Available: {sorted(METHOD_CONFIGS)}")
    base = OmegaConf.structured(METHOD_CONFIGS[method])
    if overrides is None:
        return base
    if isinstance(overrides, str | Path):
        path = Path(overrides)
        if not path.is_file():
            raise ValueError(f"method config file {str(path)!r} does not exist: give a path to a YAML preset")
        overrides = OmegaConf.load(path)
        if not isinstance(overrides, DictConfig):
            raise ValueError(
                f"method config file {str(path)!r} must hold a mapping of settings (key: value), not a list"
            )
    elif not isinstance(overrides, DictConfig):
        overrides = OmegaConf.structured(overrides) if hasattr(overrides, "__dataclass_fields__") else overrides
        overrides = OmegaConf.create(overrides)
    # A plain (unstructured) copy, so a merged preset can be merged again and 'method' dropped.
    overrides = OmegaConf.create(OmegaConf.to_container(overrides))
    named = overrides.pop("method", None)
    if named is not None and named != method:
        raise ValueError(f"this config is for method {named!r}, not {method!r}: pass method={named!r}")
    try:
        merged = OmegaConf.merge(base, overrides)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise ValueError(f"bad {method} config key {key!r}: {e.msg if hasattr(e, 'msg') else e}") from None
    try:
        check_finite(merged)
    except ValueError as e:
        raise ValueError(f"{method} config: {e}") from None
    return merged


def load_preset(path: str | Path) -> tuple[str, DictConfig]:
    """Load a method preset YAML (with a top-level ``method:``) into ``(method, config)``."""
    raw = OmegaConf.load(path)
    if not isinstance(raw, DictConfig):
        raise ValueError(f"preset {str(path)!r} must hold a mapping of settings (key: value), not a list")
    method = raw.get("method")
    if method is None:
        raise ValueError(f"preset {str(path)!r} has no 'method:' key (one of {sorted(METHOD_CONFIGS)})")
    return method, method_config(method, raw)
