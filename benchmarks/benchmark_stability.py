r"""``python -m benchmarks.benchmark_stability``: how much a map moves under changes that should not matter.

A saliency map should be a function of the image, the classifier, the class and the settings. For each method of
``--methods`` and each shipped photo of ``--photos`` (loaded and preprocessed as ``explain.py``'s
``data.kind: photos`` does), the map of the photo explained alone (a batch of 1) is compared with the map under:

- ``noise <eps>``: the photo plus ``eps * n`` (``n`` standard normal, drawn from a generator seeded with ``--seed``
  and the photo's name), also explained alone, for each ``eps`` of ``--eps``;
- ``batch <B>``: the photo explained inside a batch of ``B`` images (``--batch``): the photos themselves in groups
  of ``B``, a short group padded with horizontally flipped copies of its photos;
- ``processes 1 vs 2``: the saved maps of ``explain.py --config configs/demo.yaml`` with ``trainer.devices=1`` and
  ``trainer.devices=2`` (``device=cpu``, ``batch_size=1``, the same method settings), run as subprocesses; the row
  ``explain.py vs API`` checks that the one-process run reproduces the alone map of this process.

Every method explains the class the classifier predicts for the clean photo alone, under every condition.
Agreement is :func:`hdm_lightning.metrics.stability.map_agreement`: Pearson and Spearman correlation, IoU of the
top 5 % and 20 % pixels (1 everywhere = identical maps). Methods come from the one registry
(:func:`hdm_lightning.baselines.build_method`); DM/HDM/MDM settings from ``--preset NAME=PATH`` (defaults:
``configs/methods/hdm_fast.yaml`` for hdm and dm, where dm keeps the keys a DM config has, and
``configs/methods/mdm_fast.yaml`` for mdm) and ``--set NAME:key=value`` overrides (dotted OmegaConf keys; for other
methods they are the method's parameters). Examples::

    python -m benchmarks.benchmark_stability --json .bench/stability.json     # Lite0, 224², all four methods
    python -m benchmarks.benchmark_stability --methods gradcam dm --classifier small_cnn --size 64 \
        --set dm:schedule.params.epochs=5 --parts noise batch                   # a quick run

Prints one Markdown table (mean over photos, and the minimum) and the wall seconds per method; ``--json`` keeps
every per-photo number, the settings and the command line. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
MASK_METHODS = ("hdm", "dm", "mdm")
DEFAULT_PRESETS = {
    "hdm": REPO / "configs" / "methods" / "hdm_fast.yaml",
    "dm": REPO / "configs" / "methods" / "hdm_fast.yaml",  # its DM keys: schedule, threshold, ... (no stages/mixing)
    "mdm": REPO / "configs" / "methods" / "mdm_fast.yaml",
}
DEFAULT_METHODS = ("hdm", "dm", "mdm", "gradcam")
DEFAULT_PHOTOS = ("chelsea", "coffee", "rocket")
PARTS = ("noise", "batch", "processes")
TOP_K = (0.05, 0.2)
RANDOM_INIT_CLASSES = 10  # head size of a randomly initialised --classifier backbone (small_cnn, resnet18, ...)
_DDP_ENV = ("LOCAL_RANK", "WORLD_SIZE", "RANK", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")


class UsageError(ValueError):
    """A command-line value that cannot be used; the message names it and the fix."""


# ----------------------------------------------------------------------------------------- settings


@dataclasses.dataclass
class MethodSpec:
    """One method to benchmark: its registry name and the ``build_method`` params (the resolved settings).

    Attributes:
        name: a registered saliency method (``hdm_lightning.baselines.METHODS``).
        params: keyword arguments of the method; for hdm/dm/mdm ``{"config": <every setting, resolved>}``.
        preset: the preset file hdm/dm/mdm started from (``None`` for other methods).
        overrides: the ``--set`` items for this method, ``key=value``.
        dropped: top-level preset keys that the method's config does not have (HDM's ``stages`` for dm).
    """

    name: str
    params: dict
    preset: str | None = None
    overrides: list[str] = dataclasses.field(default_factory=list)
    dropped: list[str] = dataclasses.field(default_factory=list)

    @property
    def is_mask(self) -> bool:
        """DM, HDM or MDM (settings are a method config; explain.py runs them as its ``method``)."""
        return self.name in MASK_METHODS


def _split_pairs(items: list[str], sep: str, flag: str, example: str) -> list[tuple[str, str]]:
    out = []
    for item in items:
        name, found, rest = item.partition(sep)
        if not found or not name or not rest:
            raise UsageError(f"bad {flag} {item!r}: write {flag} {example}")
        out.append((name.strip(), rest))
    return out


def _find_file(text: str, flag: str) -> Path:
    path = Path(text).expanduser()
    for candidate in (path, REPO / path) if not path.is_absolute() else (path,):
        if candidate.is_file():
            return candidate.resolve()
    raise UsageError(f"{flag}: file {text!r} not found (looked relative to {Path.cwd()} and {REPO})")


def _preset_for(name: str, path: Path) -> tuple[dict, list[str]]:
    """The preset's settings for method ``name``: a preset of HDM gives DM its DM keys (and vice versa).

    Returns:
        ``(settings, dropped)``: a plain dict without ``method:``, and the top-level keys left out.
    """
    from hdm_lightning.config import METHOD_CONFIGS

    try:
        raw = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as e:
        raise UsageError(f"--preset {name}={path}: cannot read it as YAML: {e}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"--preset {name}={path}: the file holds no mapping of settings")
    named = raw.pop("method", name)
    if named == name:
        return raw, []
    if {named, name} != {"hdm", "dm"}:
        raise UsageError(
            f"--preset {name}={path} is a preset for method {named!r}: give {name} a preset of its own (or of hdm/dm, "
            "whose shared keys carry over)"
        )
    known = {f.name for f in dataclasses.fields(METHOD_CONFIGS[name])}
    dropped = sorted(k for k in raw if k not in known)
    return {k: v for k, v in raw.items() if k in known}, dropped


def resolve_methods(names: list[str], presets: list[str], sets: list[str]) -> list[MethodSpec]:
    """Check ``--methods``, ``--preset`` and ``--set`` and resolve every method's settings (before any work).

    Raises:
        UsageError: an unknown or repeated method, a malformed item, an item for a method not in ``--methods``,
            an unknown or wrongly typed key, or settings the method refuses (the message names it and the fix).
    """
    from hdm_lightning.config import ConfigError, method_config, parse_overrides
    from hdm_lightning.contract import METHODS, available_methods

    known = available_methods()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"--methods: unknown method(s) {unknown}. Available: {known}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UsageError(f"--methods lists {repeated} more than once: list each method once")

    preset_paths = {n: DEFAULT_PRESETS[n] for n in names if n in MASK_METHODS}
    for name, text in _split_pairs(presets, "=", "--preset", "NAME=PATH, e.g. --preset dm=configs/methods/x.yaml"):
        if name not in MASK_METHODS:
            raise UsageError(f"--preset {name}={text}: presets are for {list(MASK_METHODS)} only")
        if name not in names:
            raise UsageError(f"--preset {name}={text}: {name!r} is not in --methods {names}")
        preset_paths[name] = _find_file(text, f"--preset {name}")

    overrides: dict[str, list[str]] = {n: [] for n in names}
    example = "NAME:key=value, e.g. --set dm:schedule.params.epochs=2"
    for name, item in _split_pairs(sets, ":", "--set", example):
        if name not in names:
            raise UsageError(f"--set {name}:{item}: {name!r} is not in --methods {names}")
        overrides[name].append(item)

    specs = []
    for name in names:
        try:
            dots = parse_overrides(overrides[name])
        except ConfigError as e:
            raise UsageError(f"--set {name}: {e}") from None
        if name in MASK_METHODS:
            base, dropped = _preset_for(name, preset_paths[name])
            try:
                settings = method_config(name, OmegaConf.merge(OmegaConf.create(base), dots))
            except Exception as e:  # OmegaConf merge errors, method_config's ValueError
                raise UsageError(
                    f"settings of {name} (preset {preset_paths[name]}, --set {overrides[name]}): {e}"
                ) from None
            spec = MethodSpec(
                name,
                {"config": OmegaConf.to_container(settings)},
                str(preset_paths[name]),
                overrides[name],
                dropped,
            )
        else:
            spec = MethodSpec(name, OmegaConf.to_container(dots), None, overrides[name])
        if spec.is_mask:  # schedule name and parameters: refused now, before the classifier is loaded
            try:
                METHODS.get(name).check_config(method_config(name, spec.params["config"]))
            except (ValueError, KeyError, TypeError) as e:
                msg = e.args[0] if isinstance(e, KeyError) and e.args else e
                raise UsageError(f"settings of {name} (--set {overrides[name]}): {msg}") from None
        specs.append(spec)
    return specs


def build_methods(specs: list[MethodSpec], model: torch.nn.Module) -> dict[str, Any]:
    """One ``build_method`` instance per method for ``model`` (unknown parameters are refused here).

    Raises:
        UsageError: a method refuses its parameters (e.g. a ``--set`` key it does not have).
    """
    from hdm_lightning.contract import build_method

    methods = {}
    for spec in specs:
        try:
            methods[spec.name] = build_method(spec.name, model, spec.params)
        except (ValueError, KeyError, TypeError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
            raise UsageError(f"settings of {spec.name} (--set {spec.overrides}): {msg}") from None
    return methods


# ----------------------------------------------------------------------------------------- inputs


@dataclasses.dataclass
class Setup:
    """The classifier, the photos as the classifier sees them, and what explain.py needs to do the same."""

    model: torch.nn.Module
    classifier: Any  # hdm_lightning.models.Classifier
    ids: list[str]
    images: Tensor  # [N, 3, S, S] on the device
    targets: Tensor  # [N]: the class predicted for each photo alone
    cli_classifier: list[str]  # explain.py overrides that load the same classifier and preprocessing


def classifier_config(args: argparse.Namespace) -> dict:
    """``--classifier``/``--num-classes`` as a ``ClassifierConfig`` dict (preprocess overrides come later)."""
    from hdm_lightning.models import BUNDLED_NAME

    text = args.classifier
    path = Path(text).expanduser()
    if path.suffix in (".pt", ".ckpt", ".pth") or path.is_file():
        if not path.is_file():
            raise UsageError(f"--classifier {text!r}: no such checkpoint file")
        return {"name": BUNDLED_NAME, "checkpoint": str(path.resolve()), "num_classes": args.num_classes}
    if text == BUNDLED_NAME:
        return {"name": text, "num_classes": args.num_classes}
    return {"name": text, "num_classes": args.num_classes or RANDOM_INIT_CLASSES}


def load_setup(args: argparse.Namespace, device: torch.device) -> Setup:
    """Load the classifier and the photos (``data.kind: photos``), and predict each photo's class alone.

    Raises:
        UsageError: a classifier that cannot be loaded, a bad ``--size``, or an unknown photo.
    """
    from hdm_lightning.config import DataConfig
    from hdm_lightning.data import build_dataset, load_items
    from hdm_lightning.models import load_classifier

    cfg = classifier_config(args)
    try:
        classifier = load_classifier(cfg)
    except ValueError as e:
        raise UsageError(f"--classifier {args.classifier!r}: {e}") from None
    prep = classifier.preprocess
    if args.size is not None and args.size != prep.size:
        resize = max(args.size, round(args.size * prep.resize / prep.size))  # the classifier's crop ratio
        prep = dataclasses.replace(prep, size=args.size, resize=resize)
        classifier = dataclasses.replace(classifier, preprocess=prep)
    try:
        dataset = build_dataset(OmegaConf.structured(DataConfig(kind="photos", photos=list(args.photos))), prep)
        items, failed = load_items(dataset, range(len(dataset)))
    except (ValueError, RuntimeError) as e:  # DatasetError is a ValueError; no photo package: RuntimeError
        raise UsageError(f"--photos: {e}") from None
    if failed:
        raise UsageError(f"--photos: cannot read {[f[1] for f in failed]}: {[f[2] for f in failed]}")
    model = classifier.model.to(device).eval()
    images = torch.stack([it.image for it in items]).to(device)
    with torch.no_grad():
        targets = torch.cat([model(images[i : i + 1]).argmax(1) for i in range(len(items))])
    cli = [f"classifier.name={cfg['name']}"]
    if cfg.get("checkpoint"):
        cli.append(f"classifier.checkpoint={cfg['checkpoint']}")
    if cfg.get("num_classes") is not None:
        cli.append(f"classifier.num_classes={cfg['num_classes']}")
    cli += [f"classifier.preprocess.size={prep.size}", f"classifier.preprocess.resize={prep.resize}"]
    return Setup(model, classifier, [it.id for it in items], images, targets, cli)


def photo_noise(photo: str, shape: tuple[int, ...], seed: int) -> Tensor:
    """Standard normal noise for one photo: a generator seeded with ``seed`` and the photo's name (CPU, float32)."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(photo.encode())) % (2**63))
    return torch.randn(shape, generator=gen)


def batch_groups(n: int, size: int) -> list[list[int]]:
    """Photo indices in groups of ``size``; a short group lists its own photos again (to be flipped) to fill it.

    >>> batch_groups(4, 3)
    [[0, 1, 2], [3, 3, 3]]
    """
    groups = []
    for start in range(0, n, size):
        real = list(range(start, min(start + size, n)))
        groups.append(real + [real[i % len(real)] for i in range(size - len(real))])
    return groups


# ----------------------------------------------------------------------------------------- measuring


def agreement(a: Tensor, b: Tensor) -> dict[str, float]:
    """:func:`~hdm_lightning.metrics.stability.map_agreement` of two maps of one image, as plain floats."""
    from hdm_lightning.metrics.stability import map_agreement

    scores = map_agreement(a.detach().cpu()[None], b.detach().cpu()[None], top_k=TOP_K)
    return {k: float(v[0]) for k, v in scores.items()}


def summarise(per_photo: dict[str, dict[str, float]]) -> dict:
    """Mean and minimum over photos of each score."""
    keys = list(next(iter(per_photo.values())))
    return {
        "per_photo": per_photo,
        "mean": {k: statistics.fmean(p[k] for p in per_photo.values()) for k in keys},
        "min": {k: min(p[k] for p in per_photo.values()) for k in keys},
    }


def _log(text: str) -> None:
    print(f"[stability] {text}", file=sys.stderr, flush=True)


def explain_cli(
    spec: MethodSpec, setup: Setup, processes: int, folder: Path, args: argparse.Namespace
) -> tuple[dict[str, Tensor], list[str], float]:
    """Run ``explain.py`` on the photos with ``processes`` processes; return the saved maps, the command, seconds.

    Raises:
        RuntimeError: explain.py failed (the message holds the end of its stderr), or its run config does not
            hold this benchmark's method settings.
    """
    from hdm_lightning.run.folder import output_names

    if spec.is_mask:
        method = [f"method={spec.name}", "preset=null", f"explainer={json.dumps(spec.params['config'])}"]
    else:
        entry = {"name": spec.name, "params": spec.params}
        method = [f"methods=[{json.dumps(entry)}]"]
    cmd = [
        sys.executable,
        str(REPO / "explain.py"),
        "--config",
        str(DEMO_CONFIG),
        *method,
        *setup.cli_classifier,
        f"data.photos=[{','.join(setup.ids)}]",
        "batch_size=1",
        f"device={args.process_device}",
        f"trainer.devices={processes}",
        "wandb.mode=disabled",
        "progress=false",
        "output.pictures=false",
        "output.stage_maps=false",
        "output.resume=false",
        f"output.dir={folder}",
    ]
    env = {k: v for k, v in os.environ.items() if k not in _DDP_ENV}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(
            f"explain.py with trainer.devices={processes} failed (exit {proc.returncode}); command:\n"
            f"{shlex.join(cmd)}\nend of its stderr:\n{proc.stderr[-3000:]}"
        )
    run_cfg = OmegaConf.load(folder / "config.yaml")
    if spec.is_mask and OmegaConf.to_container(run_cfg.explainer) != spec.params["config"]:
        raise RuntimeError(
            f"explain.py ran {spec.name} with other settings than this benchmark's: {folder / 'config.yaml'} "
            "'explainer' differs from the JSON report's settings"
        )
    root = folder if spec.is_mask else folder / "methods" / spec.name
    names = output_names(setup.ids)
    maps = {}
    for photo in setup.ids:
        path = root / "maps" / f"{names[photo]}.pt"
        if not path.is_file():
            raise RuntimeError(f"explain.py with trainer.devices={processes} wrote no map {path}")
        data = torch.load(path, map_location="cpu", weights_only=True)
        maps[photo] = data["saliency"].float()
    return maps, cmd, seconds


def run_method(spec: MethodSpec, method: Any, setup: Setup, args: argparse.Namespace, work: Path) -> dict:
    """Every condition of ``--parts`` for one method (``method``: its built instance).

    A failed explain.py run is recorded under ``errors`` rather than raised: the in-process maps stay measured.

    Returns:
        ``{"conditions": {name: {"per_photo", "mean", "min"}}, "seconds": {part: s}, "errors": {part: msg}, ...}``.
    """
    ids, images, targets = setup.ids, setup.images, setup.targets
    out: dict[str, Any] = {"conditions": {}, "seconds": {}, "errors": {}, "map_seconds": {}}
    total = time.perf_counter()

    def maps_of(x: Tensor, t: Tensor, what: str) -> Tensor:
        t0 = time.perf_counter()
        m = method(x, t).detach().cpu()
        out["map_seconds"][what] = time.perf_counter() - t0
        _log(f"{spec.name}: {what}: {out['map_seconds'][what]:.1f} s")
        return m

    t0 = time.perf_counter()
    alone = {p: maps_of(images[i : i + 1], targets[i : i + 1], f"{p} alone")[0] for i, p in enumerate(ids)}
    out["seconds"]["alone"] = time.perf_counter() - t0

    if "noise" in args.parts:
        t0 = time.perf_counter()
        for eps in args.eps:
            per = {}
            for i, p in enumerate(ids):
                noisy = images[i : i + 1] + eps * photo_noise(p, tuple(images[i : i + 1].shape), args.seed).to(images)
                per[p] = agreement(alone[p], maps_of(noisy, targets[i : i + 1], f"{p} + noise {eps:g}")[0])
            out["conditions"][f"noise {eps:g}"] = summarise(per)
        out["seconds"]["noise"] = time.perf_counter() - t0

    if "batch" in args.parts:
        t0 = time.perf_counter()
        per = {}
        for group in batch_groups(len(ids), args.batch):
            first = {}  # a photo's first place in the group is its real copy; repeats are flipped padding
            x, t = [], []
            for j, i in enumerate(group):
                flipped = i in first
                first.setdefault(i, j)
                x.append(images[i].flip(-1) if flipped else images[i])
                t.append(targets[i])
            x, t = torch.stack(x), torch.stack(t)
            if len(first) < len(group):  # padding explains the flipped photo's own predicted class
                with torch.no_grad():
                    pred = setup.model(x).argmax(1)
                pad = torch.tensor([j != first[i] for j, i in enumerate(group)], device=t.device)
                t = torch.where(pad, pred, t)
            label = "[" + ", ".join(ids[i] + (" (flipped)" if j != first[i] else "") for j, i in enumerate(group)) + "]"
            maps = maps_of(x, t, f"batch {label}")
            for i, j in first.items():
                per[ids[i]] = agreement(alone[ids[i]], maps[j])
        out["conditions"][f"batch {args.batch}"] = summarise(per)
        out["seconds"]["batch"] = time.perf_counter() - t0

    if "processes" in args.parts:
        t0 = time.perf_counter()
        try:
            a, b = args.processes
            runs = {}
            for n in (a, b):
                _log(f"{spec.name}: explain.py with trainer.devices={n} ...")
                runs[n] = explain_cli(spec, setup, n, work / spec.name / f"devices{n}", args)
                _log(f"{spec.name}: explain.py with trainer.devices={n}: {runs[n][2]:.1f} s")
            out["processes"] = {str(n): {"command": shlex.join(runs[n][1]), "seconds": runs[n][2]} for n in (a, b)}
            maps_a, maps_b = runs[a][0], runs[b][0]
            out["conditions"][f"processes {a} vs {b}"] = summarise({p: agreement(maps_a[p], maps_b[p]) for p in ids})
            # explain.py's one-process maps against this process's alone maps: the settings really are the same.
            here, there = images.device, torch.device(args.process_device)
            label = (
                f"explain.py ({a}) vs API" if here.type == there.type else f"explain.py ({a}, {there}) vs API ({here})"
            )
            out["conditions"][label] = summarise({p: agreement(alone[p], maps_a[p]) for p in ids})
        except Exception as e:  # a failed subprocess must not throw away an hour of in-process maps
            out["errors"]["processes"] = str(e)
            _log(f"{spec.name}: processes part FAILED: {e}")
        out["seconds"]["processes"] = time.perf_counter() - t0
    out["seconds"]["total"] = time.perf_counter() - total
    return out


# ----------------------------------------------------------------------------------------- report


def _fmt(v: float) -> str:
    """Three decimals; more when three would round a value below 1 up to 1 (1 itself: identical)."""
    if v == 1.0:
        return "1"
    if math.isnan(v):
        return "nan"
    digits = 3
    while digits < 6 and round(v, digits) == 1.0:
        digits += 1
    return f"{v:.{digits}f}"


def format_report(rep: dict) -> str:
    """The Markdown tables: agreement per method and condition, then wall seconds per method."""
    from hdm_lightning.metrics.stability import agreement_keys

    keys = agreement_keys(TOP_K)
    s = rep["settings"]
    lines = [
        f"Map stability: {s['classifier']} at {s['size']}x{s['size']}, photos {', '.join(s['photos'])}, "
        f"device {s['device']}; each cell: mean over photos (min over photos); 1 = identical maps, "
        "1.000000 = equal to 6 decimals",
        "",
        "| method | condition | " + " | ".join(keys) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in keys) + " |",
    ]
    for name, res in rep["methods"].items():
        for cond, c in res["conditions"].items():
            cells = [f"{_fmt(c['mean'][k])} (min {_fmt(c['min'][k])})" for k in keys]
            lines.append(f"| {name} | {cond} | " + " | ".join(cells) + " |")
        for part, msg in res["errors"].items():
            first = (msg.splitlines() or [""])[0].replace("|", "/")
            lines.append(f"| {name} | {part} | FAILED: {first} |" + " |" * (len(keys) - 1))
    parts = ["alone", *[p for p in PARTS if p in s["parts"]]]
    lines += [
        "",
        "| method | " + " | ".join(f"{p} s" for p in parts) + " | total s |",
        "| --- | " + " | ".join("---:" for _ in parts) + " | ---: |",
    ]
    for name, res in rep["methods"].items():
        sec = res["seconds"]
        cells = [f"{sec[p]:.1f}" if p in sec else "" for p in parts]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {sec['total']:.1f} |")
    lines += ["", f"wall time {rep['wall_s']:.1f} s"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- CLI


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see ``--help``)."""
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.benchmark_stability",
        description="Agreement of each method's map of a photo with its map under input noise, inside a batch, "
        "and with 1 vs 2 explain.py processes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), help="registered saliency methods")
    ap.add_argument("--photos", nargs="+", default=list(DEFAULT_PHOTOS), help="shipped photos (data.kind: photos)")
    ap.add_argument(
        "--classifier",
        default="bundled_efficientnet_lite0",
        help="bundled_efficientnet_lite0, a checkpoint of train_classifier.py, or a backbone name (small_cnn, "
        "resnet18, timm/<name>: random init, for quick runs)",
    )
    ap.add_argument(
        "--num-classes",
        type=_positive_int,
        default=None,
        help=f"head size of a random-init backbone (default {RANDOM_INIT_CLASSES})",
    )
    ap.add_argument("--size", type=_positive_int, default=None, help="image side; default: the classifier's own")
    ap.add_argument("--eps", type=_positive_float, nargs="+", default=[1e-6], help="noise std (normalised input)")
    ap.add_argument("--batch", type=_positive_int, default=3, help="images per call of the batch condition")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="conditions to measure")
    ap.add_argument(
        "--preset",
        nargs="+",
        action="extend",
        default=[],
        metavar="NAME=PATH",
        help="method settings YAML for hdm/dm/mdm (defaults: hdm, dm: configs/methods/hdm_fast.yaml; "
        "mdm: configs/methods/mdm_fast.yaml)",
    )
    ap.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="NAME:KEY=VALUE",
        dest="sets",
        help="override a method's setting (hdm/dm/mdm: dotted config key, e.g. dm:schedule.params.epochs=2) or "
        "parameter (others, e.g. gradcam:target_layer=bn2); also passed to explain.py",
    )
    ap.add_argument("--device", default=None, help="torch device of the in-process runs; default cuda if available")
    ap.add_argument(
        "--processes",
        type=_positive_int,
        nargs=2,
        default=[1, 2],
        metavar=("A", "B"),
        help="processes part: trainer.devices of the two explain.py runs",
    )
    ap.add_argument("--process-device", default="cpu", help="processes part: explain.py's device= for both runs")
    ap.add_argument("--seed", type=int, default=0, help="seed of the noise")
    ap.add_argument("--work-dir", type=Path, default=None, help="explain.py outputs (default: a temporary folder)")
    ap.add_argument("--json", type=Path, default=None, help="also write every per-photo number here")
    return ap.parse_args(argv)


def environment(device: torch.device) -> dict:
    """Versions, device, threads and load, to read the figures against."""
    import platform

    import lightning

    import hdm_lightning

    return {
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "hdm_lightning": hdm_lightning.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the tables (and write JSON with ``--json``); returns an exit code.

    0: done; 1: a part failed (recorded in the tables and the JSON); 2: a bad argument (nothing was run).
    """
    args = parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"--device {args.device} but CUDA is not available")
        specs = resolve_methods(list(args.methods), args.preset, args.sets)
        setup = load_setup(args, device)
        methods = build_methods(specs, setup.model)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for spec in specs:
        if spec.dropped:
            _log(f"{spec.name}: preset {spec.preset}: left out {spec.dropped} (not {spec.name} settings)")
    prep = setup.classifier.preprocess
    with torch.no_grad():
        probs = torch.cat([setup.model(setup.images[i : i + 1]).softmax(1) for i in range(len(setup.ids))])
    photos = {}
    for i, p in enumerate(setup.ids):
        t = int(setup.targets[i])
        photos[p] = {"target": t, "target_name": setup.classifier.class_name(t), "probability": float(probs[i, t])}
        if "noise" in args.parts:  # does the noise change the prediction itself? (it should not)
            x = setup.images[i : i + 1]
            with torch.no_grad():
                preds = {
                    f"{e:g}": int(setup.model(x + e * photo_noise(p, tuple(x.shape), args.seed).to(x)).argmax(1))
                    for e in args.eps
                }
            photos[p]["noisy_prediction"] = preds
        _log(f"{p}: class {t} ({photos[p]['target_name']}), p = {photos[p]['probability']:.3f}")
    rep: dict[str, Any] = {
        "command": shlex.join(["python", "-m", "benchmarks.benchmark_stability", *argv]),
        "argv": argv,
        "settings": {
            "methods": {s.name: dataclasses.asdict(s) for s in specs},
            "photos": setup.ids,
            "classifier": setup.classifier.name,
            "classifier_source": setup.classifier.source,
            "preprocess": prep.to_dict(),
            "size": prep.size,
            "eps": args.eps,
            "batch": args.batch,
            "parts": args.parts,
            "processes": args.processes,
            "process_device": args.process_device,
            "seed": args.seed,
            "device": str(device),
            "top_k": list(TOP_K),
        },
        "environment": environment(device),
        "photos": photos,
        "methods": {},
    }
    with tempfile.TemporaryDirectory(prefix="stability-") as tmp:
        work = Path(args.work_dir) if args.work_dir is not None else Path(tmp)
        for spec in specs:
            _log(f"{spec.name}: start")
            rep["methods"][spec.name] = run_method(spec, methods[spec.name], setup, args, work)
            _log(f"{spec.name}: done in {rep['methods'][spec.name]['seconds']['total']:.1f} s")
    rep["wall_s"] = time.perf_counter() - start
    rep["environment"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    print(format_report(rep))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rep, indent=1) + "\n")
        print(f"JSON report written to {args.json}")
    return 1 if any(r["errors"] for r in rep["methods"].values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
