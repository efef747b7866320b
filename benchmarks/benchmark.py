"""``python -m benchmarks.benchmark``: equivalence, framework overhead and paper-preset throughput.

One run measures, on one model, image size, device and precision:

(a) the batched engine (``hdm_lightning.explain(..., method="dm")``) against the one-vector-at-a-time,
    one-image-at-a-time reference of ``tests/reference.py`` (HDM appx. Algorithm 1, batch size 1) on a
    reduced DM schedule: time ratio and max abs difference of the trained vectors and the maps;
    with ``--precision bf16-mixed`` also bf16 against fp32 maps of the engine on the same images;
(b) Lightning's overhead: ``run_fit`` of a :class:`MaskStageModule` against a bare torch loop driving an
    identical module with the same optimiser, losses and clamping (goal: at most 15 %);
(c) paper-preset throughput (HDM: DM ``sizes 6..11, factors {2, 3, 5}, 800 epochs``, ``S = 3``,
    400 mixing epochs; MDM: 27 sizes, 2000 steps), extrapolated from a few timed steps of every stage
    (``--prepare`` / ``--compile MODE``: of the prepared / compiled classifier, as ``engine.prepare`` /
    ``engine.compile`` run it; a compiled fit's first step, which compiles, is the untimed warm-up).

Inputs are synthetic (uniform pixels normalised with the ImageNet mean and std) and the classifiers
are randomly initialised: no weights, no data and no network are needed. Example::

    python -m benchmarks.benchmark --model tiny --size 64            # smoke run, seconds on a CPU
    python -m benchmarks.benchmark --model resnet50 --device cuda --batch 8 --precision bf16-mixed
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import torch
from torch import Tensor, nn

import hdm_lightning
from hdm_lightning.config import HDMConfig
from hdm_lightning.core import frozen
from hdm_lightning.explainers.fit import run_fit
from hdm_lightning.explainers.modules import MaskStageModule, MixingModule
from hdm_lightning.explainers.result import Explanation
from hdm_lightning.explainers.selectors import ActivationSelector
from hdm_lightning.prepare import COMPILE_MODES, compiled, prepare_classifier
from hdm_lightning.schedules.base import Stage
from hdm_lightning.schedules.builtin import DMSchedule, MDMSchedule
from tests.reference import reference_dm

MODELS = ("resnet18", "resnet50", "efficientnet_lite0", "tiny")
PRECISIONS = ("32-true", "bf16-mixed")
PARTS = ("a", "b", "c")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OVERHEAD_GOAL = 15.0  # per cent, framework time over the bare loop


# ----------------------------------------------------------------------------------------- inputs


def build_model(name: str, seed: int = 0) -> nn.Module:
    """A randomly initialised classifier in eval mode (timing only: no weights are downloaded).

    Args:
        name: one of :data:`MODELS`.
        seed: seed of the random initialisation.

    Raises:
        ValueError: an unknown model name.
    """
    torch.manual_seed(seed)
    if name in ("resnet18", "resnet50"):
        import torchvision

        model = getattr(torchvision.models, name)(weights=None)
    elif name == "efficientnet_lite0":
        import timm

        model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    elif name == "tiny":
        model = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(32, 10),
        )
    else:
        raise ValueError(f"Unknown model {name!r}. Available: {list(MODELS)}")
    return model.eval()


def synthetic_images(batch: int, size: int, seed: int, device: torch.device) -> Tensor:
    """Uniform random pixels in [0, 1] normalised with the ImageNet mean and std, ``[B, 3, size, size]``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, size, size, generator=gen)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).to(device)


def now(device: torch.device) -> float:
    """``time.perf_counter()`` after the device's queued work has finished."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def max_abs(a: Tensor, b: Tensor) -> float:
    """``max |a - b|`` in float64."""
    return (a.double() - b.double()).abs().max().item()


# ----------------------------------------------------------------------------------------- (a)


def _engine_dm(model: nn.Module, images: Tensor, dm: dict, precision: str, args: argparse.Namespace):
    """``explain(method="dm")`` with the reduced schedule ``dm``; returns the result and its wall time."""
    engine = {"precision": precision, "channels_last": args.channels_last, "max_rows": args.max_rows, "seed": args.seed}
    t0 = now(images.device)
    out = hdm_lightning.explain(
        model,
        images,
        method="dm",
        # the papers' dynamics, as the reference implements them by default (optim=None)
        config={"schedule": {"name": "dm", "params": dm}, "engine": engine, "optim": {"dynamics": "paper"}},
    )
    return out, now(images.device) - t0


def _reference_dm(model: nn.Module, images: Tensor, dm: dict):
    """The one-at-a-time reference on the same work; returns its output and its wall time."""
    # Frozen like the engine's classifier (no weight gradients); the reference builds some tensors
    # without a device, so the benchmark's device is made the default one.
    with frozen(model), torch.device(images.device):
        t0 = now(images.device)
        ref = reference_dm(model, images, **dm, tau=0.5, upsample="bilinear", threshold=("quantile", 0.5))
        return ref, now(images.device) - t0


def _compare(out: Explanation, ref: dict | Explanation) -> dict:
    """Differences between an engine result and a reference output (or another engine result)."""
    vectors = out.stages[0].vectors
    other = ref["vectors"] if isinstance(ref, dict) else ref.stages[0].vectors
    if sorted(other) != sorted(vectors):
        raise RuntimeError(f"the two runs trained different vectors: {sorted(set(other) ^ set(vectors))}")
    sal = ref["saliency"] if isinstance(ref, dict) else ref.saliency
    binary = ref["binary"] if isinstance(ref, dict) else ref.binary
    dv = torch.cat([(vectors[k].double() - other[k].double()).abs().flatten() for k in vectors])
    ds = (out.saliency.double() - sal.double()).abs()
    return {
        "max_abs_diff_vectors": dv.max().item(),
        "vector_elements": dv.numel(),
        "vector_elements_off_by_1e-3": int((dv > 1e-3).sum().item()),
        "max_abs_diff_saliency": ds.max().item(),
        "mean_abs_diff_saliency": ds.mean().item(),
        "binary_agreement": (out.binary == binary.to(out.binary.device)).double().mean().item(),
    }


def equivalence(model: nn.Module, images: Tensor, args: argparse.Namespace) -> dict:
    """(a) The batched engine against the one-vector-at-a-time reference on a reduced DM schedule.

    Both run the same work in float32 (timed: the speed-up of batching), then, unless
    ``--no-float64``, again in float64 on copies of the model and images: the equivalence check proper.
    In float32 the two may drift apart with no error in either: batched and per-image convolutions
    round differently (about 1e-7), ReLU / max-pool switching makes the input gradient discontinuous,
    and Adam's first steps (about ``lr * sign(grad)``) turn a sign change of a small gradient element
    into a ``2 lr`` difference that then spreads. In float64 the runs agree to round-off. With
    ``--precision bf16-mixed`` the engine also runs in bf16 and its maps are compared with the float32 ones.

    Args:
        model: the classifier, on the benchmark's device.
        images: ``[B, C, H, W]`` on the same device.
        args: parsed command line.

    Returns:
        Timings, pass counts and differences, JSON-serialisable.
    """
    dm = {
        "sizes": args.ref_sizes,
        "factors": args.ref_factors,
        "epochs": args.ref_epochs,
        "lr": args.ref_lr,
        "eta": args.ref_eta,
    }
    out32, t_engine = _engine_dm(model, images, dm, "32-true", args)
    ref32, t_ref = _reference_dm(model, images, dm)
    res = {
        "schedule": dm,
        "vectors_per_image": len(out32.stages[0].vectors),
        "passes_per_image": out32.passes_per_image,
        "reference_s": t_ref,
        "engine_s": t_engine,
        "speedup": t_ref / t_engine,
        **_compare(out32, ref32),
    }
    if args.float64:
        model64, images64 = copy.deepcopy(model).double(), images.double()
        out64, t64 = _engine_dm(model64, images64, dm, "32-true", args)
        ref64, t_ref64 = _reference_dm(model64, images64, dm)
        res["float64"] = {"reference_s": t_ref64, "engine_s": t64, "speedup": t_ref64 / t64, **_compare(out64, ref64)}
    if args.precision == "bf16-mixed":
        out16, t16 = _engine_dm(model, images, dm, "bf16-mixed", args)
        d = (out16.saliency.double() - out32.saliency.double()).abs()
        res["bf16"] = {
            "engine_s": t16,
            "speedup_vs_reference": t_ref / t16,
            "speedup_vs_fp32_engine": t_engine / t16,
            "saliency_abs_diff_vs_fp32_mean": d.mean().item(),
            "saliency_abs_diff_vs_fp32_max": d.max().item(),
            "max_abs_diff_vectors_vs_fp32": _compare(out16, out32)["max_abs_diff_vectors"],
        }
    return res


# ----------------------------------------------------------------------------------------- (b)


def stage_module(
    model: nn.Module,
    selector: ActivationSelector,
    images: Tensor,
    stage: Stage,
    steps: int,
    args: argparse.Namespace,
    cls: type[MaskStageModule] = MaskStageModule,
) -> MaskStageModule:
    """A fresh module training ``stage``'s vectors for ``steps`` steps, with reproducible stand-in inputs.

    Vectors without ``init_from`` start at 0.5 (``tau``); the others, and every guide, start from
    seeded uniform values (stand-ins for trained vectors of earlier stages: timing does not depend on
    them). Two calls with the same arguments build identical modules.
    """
    gen = torch.Generator().manual_seed(args.seed)
    b, dev, dtype = images.shape[0], images.device, images.dtype
    init, guides = [], []
    for v in stage.vectors:
        shape = (b, 1, *v.size)
        if v.init_from is None:
            init.append(torch.full(shape, 0.5, dtype=dtype, device=dev))
        else:
            init.append(torch.rand(shape, generator=gen, dtype=dtype).to(dev))
        guides.append(None if v.guide is None else torch.rand(shape, generator=gen, dtype=dtype).to(dev))
    refs = selector.reference.detach().expand(len(stage.vectors), b).clone()
    return cls(
        model,
        selector,
        images,
        dataclasses.replace(stage, steps=steps),
        init,
        guides,
        refs,
        max_rows=args.max_rows,
        channels_last=args.channels_last,
    )


def bare_fit(module: MaskStageModule, device: torch.device, precision: str) -> None:
    """The engine's maths without Lightning: Adam, summed row losses, backward, step, clamp to [0, 1]."""
    module.to(device).train()  # the module's train() keeps the classifier in eval mode
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16-mixed" else nullcontext()
    opt = module.configure_optimizers()
    for _ in range(module.steps):
        opt.zero_grad(set_to_none=True)
        for chunk in module._chunks:
            with autocast:
                loss = module.chunk_losses(*chunk)
            loss.sum().backward()
        opt.step()
        with torch.no_grad():
            for p in module.masks:
                p.clamp_(0.0, 1.0)


def overhead(model: nn.Module, images: Tensor, args: argparse.Namespace) -> dict:
    """(b) ``run_fit`` against :func:`bare_fit` on identical fresh modules, best of alternating repeats.

    Stages: the paper DM schedule's ``benchmark`` stage and its last (smallest, so worst-case) level.
    Each repeat also times 1-step runs, which split the overhead into a fixed cost per fit and a cost
    per step, and so project it onto the paper's 800 steps per fit.

    Returns:
        Per-stage timings and overheads, and the total, JSON-serialisable.
    """
    device = images.device
    h, w = images.shape[-2:]
    plan = DMSchedule().plan(h, w)
    chosen = [plan[0]] + ([plan[-1]] if len(plan) > 1 else [])
    n = args.overhead_steps
    runs = {
        "bare": lambda m: bare_fit(m, device, args.precision),
        "engine": lambda m: run_fit(m, device, args.precision),
    }
    out = {"steps": n, "repeats": args.repeats, "stages": []}
    with frozen(model, args.channels_last):
        selector = ActivationSelector(model, images, None)
        for stage in chosen:

            def timed(kind: str, steps: int, stage: Stage = stage) -> tuple[float, MaskStageModule]:
                module = stage_module(model, selector, images, stage, steps, args)
                t0 = now(device)
                runs[kind](module)
                return now(device) - t0, module

            for kind in runs:  # warm-up: allocator, kernels for these shapes, Lightning's lazy imports
                timed(kind, 1)
            times = {"bare": [], "engine": [], "bare_1": [], "engine_1": []}
            final = {}
            for r in range(args.repeats):
                order = ("bare", "engine") if r % 2 == 0 else ("engine", "bare")
                for kind in order:
                    t, final[kind] = timed(kind, n)
                    times[kind].append(t)
                for kind in order:
                    times[f"{kind}_1"].append(timed(kind, 1)[0])
            best = {k: min(v) for k, v in times.items()}
            fixed = best["engine_1"] - best["bare_1"]
            per_step = (best["engine"] - best["bare"] - fixed) / (n - 1) if n > 1 else float("nan")
            bare_step = best["bare"] / n
            full = stage.steps
            masks = zip(final["bare"].masks, final["engine"].masks, strict=True)
            out["stages"].append(
                {
                    "stage": stage.name,
                    "vectors": len(stage.vectors),
                    "rows": len(stage.vectors) * images.shape[0],
                    "bare_s": best["bare"],
                    "engine_s": best["engine"],
                    "overhead_pct": (best["engine"] / best["bare"] - 1) * 100,
                    "all_bare_s": times["bare"],
                    "all_engine_s": times["engine"],
                    "fixed_per_fit_s": fixed,
                    "per_step_overhead_s": per_step,
                    "projected_steps": full,
                    "projected_overhead_pct": (fixed + (full - 1) * per_step) / (full * bare_step) * 100,
                    "max_abs_diff_masks": max(max_abs(p, q) for p, q in masks),
                }
            )
    bare = sum(s["bare_s"] for s in out["stages"])
    eng = sum(s["engine_s"] for s in out["stages"])
    out.update(bare_s=bare, engine_s=eng, overhead_pct=(eng / bare - 1) * 100, goal_pct=OVERHEAD_GOAL)
    return out


# ----------------------------------------------------------------------------------------- (c)


class _StepClock:
    """Mixin: records when each training step starts and ends (module hooks, so the fit stays barebones).

    On CUDA every timestamp synchronises, so the measured steps do not overlap the next step's launch.
    """

    def on_train_start(self) -> None:  # noqa: D102
        super().on_train_start()
        self.clock_starts, self.clock_ends = [], []

    def on_train_batch_start(self, batch, batch_idx: int) -> None:  # noqa: D102
        self.clock_starts.append(now(self.images.device))

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:  # noqa: D102
        self.clock_ends.append(now(self.images.device))


class _TimedStage(_StepClock, MaskStageModule):
    """:class:`MaskStageModule` with step timestamps."""


class _TimedMixing(_StepClock, MixingModule):
    """:class:`MixingModule` with step timestamps."""


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window: CUDA's max-allocated counter, or the process's RSS high-water mark.

    The RSS mark is Linux's ``VmHWM``, reset by writing ``5`` to ``/proc/self/clear_refs`` (skipped elsewhere).
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory_mib(device: torch.device) -> float | None:
    """Peak memory since :func:`reset_peak_memory` in MiB; ``None`` where the platform cannot tell.

    GPU: max allocated; CPU: the RSS high-water mark of the whole process (the model and Python count too).
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def measure_fit(module: _StepClock, device: torch.device, precision: str, full_steps: int) -> dict:
    """Time one ``run_fit`` of a module whose first step is a warm-up, and extrapolate to ``full_steps``.

    Returns:
        ``s_per_step`` (mean over the steps after the warm-up), ``setup_s`` (fit time outside the
        steps: Trainer construction, setup, teardown), ``warmup_step_s``, ``seconds``
        ``= setup_s + full_steps * s_per_step``, the estimate for one full fit, and ``peak_mib``, the
        fit's peak memory (:func:`peak_memory_mib`).
    """
    reset_peak_memory(device)
    t0 = now(device)
    run_fit(module, device, precision)
    t1 = now(device)
    peak = peak_memory_mib(device)
    starts, ends = module.clock_starts, module.clock_ends
    measured = len(ends) - 1
    per_step = (ends[-1] - ends[0]) / measured
    setup = (starts[0] - t0) + (t1 - ends[-1])
    return {
        "measured_steps": measured,
        "warmup_step_s": ends[0] - starts[0],
        "s_per_step": per_step,
        "setup_s": setup,
        "full_steps": full_steps,
        "seconds": setup + full_steps * per_step,
        "peak_mib": peak,
    }


def fitted_classifier(model: nn.Module, images: Tensor, args: argparse.Namespace) -> nn.Module:
    """(c) The classifier the fits run: ``model``, prepared and compiled as ``engine.prepare`` / ``compile`` do."""
    with frozen(model, args.channels_last):
        out = prepare_classifier(model, images).model if args.prepare else model
    return compiled(out, args.compile)


def throughput(model: nn.Module, images: Tensor, args: argparse.Namespace) -> dict:
    """(c) Paper-preset cost per batch, extrapolated from ``args.steps`` timed steps of every stage fit.

    HDM = ``S`` DM runs of the paper's DM schedule (each run's stages have the same shapes, whatever
    the masked image) plus the mixing fit; MDM = its single stage. The few forward-only passes outside
    the fits (references, thresholds) are not counted.

    Returns:
        Per-stage measurements and the HDM / MDM totals, JSON-serialisable.
    """
    device = images.device
    b, (h, w) = images.shape[0], images.shape[-2:]
    steps = 1 + args.steps  # one warm-up step, then the measured ones
    hdm = HDMConfig()
    n_stages, mix = int(hdm.stages), hdm.mixing
    dm, mdm = DMSchedule(), MDMSchedule()
    out = {"measured_steps": args.steps, "warmup_steps": 1}
    with frozen(model, args.channels_last):
        selector = ActivationSelector(model, images, None)

        def stages(schedule) -> list[dict]:
            rows = []
            for stage in schedule.plan(h, w):
                module = stage_module(model, selector, images, stage, steps, args, cls=_TimedStage)
                m = measure_fit(module, device, args.precision, stage.steps)
                rows.append({"stage": stage.name, "vectors": len(stage.vectors), "rows": len(stage.vectors) * b, **m})
            return rows

        dm_rows = stages(dm)
        gen = torch.Generator().manual_seed(args.seed)
        maps = torch.rand(b, n_stages, 1, h, w, generator=gen, dtype=images.dtype).to(device)
        mixing = _TimedMixing(
            model,
            selector,
            images,
            maps,
            selector.reference,
            steps,
            mix.lr,
            mix.lam,
            channels_last=args.channels_last,
        )
        mix_row = {
            "stage": "mixing",
            "vectors": 1,
            "rows": b,
            **measure_fit(mixing, device, args.precision, mix.epochs),
        }
        mdm_rows = stages(mdm)

    def totals(seconds: float, passes_per_image: int) -> dict:
        return {
            "passes_per_image": passes_per_image,
            "batch_s": seconds,
            "s_per_image": seconds / b,
            "sample_passes_per_s": passes_per_image * b / seconds,
        }

    dm_s = sum(r["seconds"] for r in dm_rows)
    out["hdm"] = {
        "preset": {
            "sizes": [list(s) for s in dm.sizes],
            "factors": dm.factors,
            "epochs": dm.epochs,
            "stages_S": n_stages,
            "mixing_epochs": int(mix.epochs),
        },
        "dm_run_s": dm_s,
        "dm_stages": dm_rows,
        "mixing": mix_row,
        **totals(n_stages * dm_s + mix_row["seconds"], dm.passes_per_image(h, w) * n_stages + int(mix.epochs)),
    }
    out["mdm"] = {
        "preset": {"sizes": len(mdm.sizes), "steps": mdm.steps},
        "stages": mdm_rows,
        **totals(sum(r["seconds"] for r in mdm_rows), mdm.passes_per_image(h, w)),
    }
    return out


# ----------------------------------------------------------------------------------------- report


def environment(device: torch.device) -> dict:
    """Versions, device and load, to read the figures against."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    return {
        "torch": torch.__version__,
        "lightning": L.__version__,
        "hdm_lightning": hdm_lightning.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": name,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _hms(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _mib(value: float | None) -> str:
    return f"{value:>9.0f}" if value is not None else f"{'n/a':>9}"


def format_report(rep: dict) -> str:
    """The compact human-readable report."""
    cfg, env = rep["config"], rep["environment"]
    lines = [
        f"hdm_lightning benchmark: {cfg['model']} {cfg['size']}x{cfg['size']}, batch {cfg['batch']}, "
        f"{cfg['precision']}{', channels_last' if cfg['channels_last'] else ''}, max_rows {cfg['max_rows']}",
        f"  {env['device']} ({env['device_name']}), torch {env['torch']}, lightning {env['lightning']}, "
        f"{env['torch_threads']} threads / {env['cpu_count']} CPUs, load avg at start "
        f"{', '.join(f'{x:.2f}' for x in env['load_average_start'] or [])}",
    ]
    a = rep.get("a")
    if a:
        s = a["schedule"]

        def diffs(d: dict) -> str:
            return (
                f"max |diff| vectors {d['max_abs_diff_vectors']:.2e} "
                f"({d['vector_elements_off_by_1e-3']} of {d['vector_elements']} elements > 1e-3), saliency max "
                f"{d['max_abs_diff_saliency']:.2e} mean {d['mean_abs_diff_saliency']:.2e}, binary masks agree on "
                f"{d['binary_agreement'] * 100:.2f} % px"
            )

        lines += [
            "",
            f"(a) batched engine vs one-at-a-time reference (tests/reference.py), reduced DM: sizes {s['sizes']}, "
            f"factors {s['factors']}, {s['epochs']} epochs, lr {s['lr']}, eta {s['eta']}",
            f"    {a['vectors_per_image']} vectors/image, {a['passes_per_image']} gradient passes/image "
            "(the reference also runs one no-grad forward per vector)",
            f"    float32: reference {a['reference_s']:.2f} s | engine {a['engine_s']:.2f} s | "
            f"speed-up x{a['speedup']:.2f}",
            f"      {diffs(a)}",
        ]
        if "float64" in a:
            q = a["float64"]
            lines += [
                f"    float64: reference {q['reference_s']:.2f} s | engine {q['engine_s']:.2f} s | "
                f"speed-up x{q['speedup']:.2f}",
                f"      {diffs(q)}",
            ]
            if q["max_abs_diff_vectors"] < 1e-6 <= a["max_abs_diff_vectors"]:
                lines.append(
                    "      float64 agrees, so the float32 gap is round-off amplified by ReLU/max-pool switching "
                    "and Adam's sign-like first steps, not an engine error"
                )
        if "bf16" in a:
            q = a["bf16"]
            lines += [
                f"    bf16-mixed engine {q['engine_s']:.2f} s (x{q['speedup_vs_reference']:.2f} vs reference, "
                f"x{q['speedup_vs_fp32_engine']:.2f} vs fp32 engine); |bf16 - fp32| saliency per pixel: "
                f"mean {q['saliency_abs_diff_vs_fp32_mean']:.3e}, max {q['saliency_abs_diff_vs_fp32_max']:.3e}; "
                f"vectors max {q['max_abs_diff_vectors_vs_fp32']:.3e}",
            ]
    b = rep.get("b")
    if b:
        met = "met" if b["overhead_pct"] <= b["goal_pct"] else "NOT met"
        lines += [
            "",
            f"(b) Lightning run_fit vs bare torch loop, same MaskStageModule maths, {b['steps']} steps, "
            f"best of {b['repeats']} alternating runs",
            "    stage      vec  rows   bare s  engine s  overhead  fixed/fit  per step  @full steps  |masks diff|",
        ]
        for s in b["stages"]:
            lines.append(
                f"    {s['stage']:<10} {s['vectors']:>3} {s['rows']:>5} {s['bare_s']:>8.3f} {s['engine_s']:>9.3f} "
                f"{s['overhead_pct']:>8.1f}% {s['fixed_per_fit_s'] * 1e3:>7.1f} ms "
                f"{s['per_step_overhead_s'] * 1e3:>6.2f} ms "
                f"{s['projected_overhead_pct']:>10.1f}% {s['max_abs_diff_masks']:>12.1e}"
            )
        lines.append(
            f"    total: bare {b['bare_s']:.3f} s, engine {b['engine_s']:.3f} s, overhead {b['overhead_pct']:.1f} % "
            f"(goal <= {b['goal_pct']:.0f} %: {met}); fixed/per-step split from 1-step runs (noisy), "
            "@full steps = projected onto the stage's paper step count"
        )
    c = rep.get("c")
    if c:
        hdm, mdm = c["hdm"], c["mdm"]
        p = hdm["preset"]
        lines += [
            "",
            f"(c) paper presets, EXTRAPOLATED from {c['measured_steps']} measured steps per stage fit "
            f"(after {c['warmup_steps']} warm-up step) to the full step counts",
            "    fit        vec  rows   s/step  setup s   steps   est. s  peak MiB",
        ]
        mem = "GPU max allocated" if env["device"].startswith("cuda") else "process RSS high-water mark"
        fits = [(r["stage"], r) for r in [*hdm["dm_stages"], hdm["mixing"]]]
        fits += [(f"mdm:{r['stage']}", r) for r in mdm["stages"]]
        for name, r in fits:
            lines.append(
                f"    {name:<10} {r['vectors']:>3} {r['rows']:>5} {r['s_per_step']:>8.4f} {r['setup_s']:>8.2f} "
                f"{r['full_steps']:>7} {r['seconds']:>8.1f} {_mib(r.get('peak_mib'))}"
            )
        lines += [
            f"    HDM (DM sizes {p['sizes'][0][0]}..{p['sizes'][-1][0]}, factors {p['factors']}, {p['epochs']} epochs, "
            f"S={p['stages_S']}, mixing {p['mixing_epochs']}): {hdm['passes_per_image']} passes/image, "
            f"{hdm['sample_passes_per_s']:.1f} sample-passes/s, {_hms(hdm['s_per_image'])}/image "
            f"({_hms(hdm['batch_s'])} per batch of {cfg['batch']})",
            f"    MDM ({mdm['preset']['sizes']} sizes, {mdm['preset']['steps']} steps): {mdm['passes_per_image']} "
            f"passes/image, {mdm['sample_passes_per_s']:.1f} sample-passes/s, {_hms(mdm['s_per_image'])}/image",
            f"    peak MiB: {mem} during the fit (choose batch_size and engine.max_rows from it)",
        ]
    end = env.get("load_average_end") or []
    lines += ["", f"benchmark wall time {_hms(rep['wall_s'])}, load avg at end {', '.join(f'{x:.2f}' for x in end)}"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- CLI


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see ``--help``)."""
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.benchmark",
        description="Benchmark of the batched engine: equivalence, framework overhead, paper-preset throughput.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--model", choices=MODELS, default="resnet50", help="classifier (random init)")
    ap.add_argument("--size", type=_positive_int, default=224, help="image side in pixels")
    ap.add_argument("--batch", type=_positive_int, default=2, help="images per explain call")
    ap.add_argument("--device", default=None, help="torch device; default cuda when available, else cpu")
    ap.add_argument("--precision", choices=PRECISIONS, default="32-true", help="Lightning precision of the fits")
    ap.add_argument("--channels-last", action="store_true", help="channels_last classifier and masked batches")
    ap.add_argument("--max-rows", type=_positive_int, default=None, help="engine max_rows (memory cap per pass)")
    ap.add_argument("--steps", type=_positive_int, default=3, help="(c) measured steps per stage fit")
    ap.add_argument("--overhead-steps", type=_positive_int, default=10, help="(b) steps per timed run")
    ap.add_argument("--repeats", type=_positive_int, default=3, help="(b) alternating repeats (best is kept)")
    ap.add_argument("--ref-sizes", type=_positive_int, nargs="+", default=[6, 7, 8], help="(a) DM sizes")
    ap.add_argument("--ref-factors", type=_positive_int, nargs="*", default=[2], help="(a) DM factors")
    ap.add_argument("--ref-epochs", type=_positive_int, default=3, help="(a) DM epochs per vector")
    ap.add_argument("--ref-lr", type=float, default=0.05, help="(a) DM learning rate")
    ap.add_argument("--ref-eta", type=float, default=0.02, help="(a) DM eta (paper's 100 keeps few-epoch maps flat)")
    ap.add_argument(
        "--float64",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="(a) also compare in float64 (the equivalence check proper)",
    )
    ap.add_argument("--prepare", action="store_true", help="(c) fit the prepared classifier (engine.prepare)")
    ap.add_argument("--compile", choices=COMPILE_MODES, default="none", help="(c) torch.compile it (engine.compile)")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="parts to run")
    ap.add_argument("--seed", type=int, default=0, help="seed of the model, the images and the fits")
    ap.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the report (and write JSON with ``--json``); returns an exit code."""
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"error: --device {args.device} but CUDA is not available", file=sys.stderr)
        return 2
    start = time.perf_counter()
    L.seed_everything(args.seed, verbose=False)
    model = build_model(args.model, args.seed).to(device)
    images = synthetic_images(args.batch, args.size, args.seed, device)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    rep = {"config": config, "environment": environment(device)}
    if "a" in args.parts:
        rep["a"] = equivalence(model, images, args)
    if "b" in args.parts:
        rep["b"] = overhead(model, images, args)
    if "c" in args.parts:
        rep["c"] = throughput(fitted_classifier(model, images, args), images, args)
    rep["wall_s"] = time.perf_counter() - start
    rep["environment"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    print(format_report(rep))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rep, indent=2) + "\n")
        print(f"JSON report written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
