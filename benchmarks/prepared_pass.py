r"""The prepared classifier (batch norm folded, ``explainer.engine.prepare``) against the classifier as given.

Two parts, each measured side by side in one run, in alternating rounds (slow drifts of a noisy machine hit both):

1. **One pass** (forward + input gradient of the class logit, what every mask step spends) of the bundled
   EfficientNet-Lite0 and a torchvision ResNet-50 (random weights, random batch-norm statistics) at 224², for
   1, 9 and 32 rows: eager, folded (batch norm folded only), prepared (folded, static TF-"same" padding,
   activations out of place: what the fits run), and prepared + ``torch.compile`` (``--compile``; the first call's
   compile time is shown apart), in sample-passes/s, with the largest output and input-gradient difference
   against eager in float32 (relative to the largest value) and in float64 (the rewrites' exactness).
2. **The demo job**: ``explain.py --config configs/demo.yaml`` (HDM, ``hdm_fast``, three photos, Lite0 at 224²)
   with ``explainer.engine.prepare=true`` and ``=false``: wall seconds and engine sample-passes/s of both, and the
   ratio::

    python -m benchmarks.prepared_pass [--rows 1 9 32] [--repeats 3] [--demo-repeats 1] [--compile] [--json F]
    python -m benchmarks.prepared_pass --device cuda --compile --compile-mode reduce-overhead   # CUDA graphs

Each variant runs once before the timed rounds (its differences are taken there; a first call pays one-off costs).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet50

from hdm_lightning.allocator import retain_freed_memory
from hdm_lightning.models import load_classifier
from hdm_lightning.prepare import COMPILE_MODES, compiled, prepare_classifier

REPO = Path(__file__).resolve().parents[1]
MODELS = ["lite0", "resnet50"]


def models(names: list[str] = MODELS, device: torch.device | None = None) -> dict[str, nn.Module]:
    """The bundled Lite0 and a ResNet-50 with random weights and batch-norm statistics, eval, channels_last."""
    torch.manual_seed(0)
    resnet = resnet50(num_classes=1000)
    for m in resnet.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    out = {"lite0": load_classifier({"name": "bundled_efficientnet_lite0"}).model, "resnet50": resnet}
    out = {k: m for k, m in out.items() if k in names}
    return {k: m.eval().requires_grad_(False).to(device, memory_format=torch.channels_last) for k, m in out.items()}


def one_pass(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and the input gradient of logit 1 summed over the rows."""
    x = x.detach().clone().requires_grad_(True)
    out = model(x)
    (grad,) = torch.autograd.grad(out[:, 1].sum(), x)
    return out.detach(), grad


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest value of ``b``."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def timed(model: nn.Module, x: torch.Tensor) -> float:
    """Seconds of one pass (the device synchronised before and after)."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    one_pass(model, x)
    sync()
    return time.perf_counter() - start


def variants_of(model: nn.Module, x: torch.Tensor, args: argparse.Namespace) -> tuple[dict, float | None]:
    """Eager, folded, prepared (and prepared + compiled) for input ``x``; the compiled one's first-call seconds."""
    prepared = prepare_classifier(model, x).model
    folded = prepare_classifier(model, x, static_padding=False, out_of_place=False).model
    variants = {"eager": model, "folded": folded, "prepared": prepared}
    if not args.compile:
        return variants, None
    variants["prepared+compiled"] = compiled(prepared, args.compile_mode)
    return variants, timed(variants["prepared+compiled"], x)


def pass_table(args: argparse.Namespace) -> list[dict]:
    """Part 1: one pass per model, rows and variant, each warmed up once, then alternating rounds."""
    rows_out, device = [], torch.device(args.device)
    for name, model in models(args.models, device).items():
        x64 = torch.randn(2, 3, 224, 224, dtype=torch.float64, device=device)
        exact = prepare_classifier(model.double(), x64)  # the float64 check of the rewrites themselves
        (o64, g64), (r64, q64) = one_pass(exact.model, x64), one_pass(model, x64)
        model.float()
        for rows in args.rows:
            x = torch.randn(rows, 3, 224, 224, device=device).to(memory_format=torch.channels_last)
            variants, compile_s = variants_of(model, x, args)
            results = {v: one_pass(m, x) for v, m in variants.items()}  # also the warm-up of every variant
            seconds = dict.fromkeys(variants, 0.0)
            for k in range(args.repeats):
                for v, m in list(variants.items())[:: 1 if k % 2 == 0 else -1]:
                    seconds[v] += timed(m, x)
            for v, (out, grad) in results.items():
                rows_out.append(
                    {
                        "model": name,
                        "device": str(device),
                        "rows": rows,
                        "variant": v,
                        "passes_per_s": rows * args.repeats / seconds[v],
                        "speedup": seconds["eager"] / seconds[v],
                        "output_diff": relative(out, results["eager"][0]),
                        "grad_diff": relative(grad, results["eager"][1]),
                        "float64_output_diff": relative(o64, r64),
                        "float64_grad_diff": relative(g64, q64),
                        "compile_s": compile_s if v == "prepared+compiled" else None,
                    }
                )
                print(json.dumps(rows_out[-1]), flush=True)
    return rows_out


def demo_once(prepare: bool, folder: Path, device: str) -> dict:
    """One demo job; its wall time, the explain seconds and engine sample-passes/s from the manifest."""
    args = [sys.executable, str(REPO / "explain.py"), "--config", str(REPO / "configs" / "demo.yaml")]
    args += [f"output.dir={folder}", "wandb.mode=disabled", "progress=false", f"explainer.engine.prepare={prepare}"]
    args += [f"device={device}"]
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=dict(os.environ))
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    with open(folder / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    passes = sum(float(r["passes"]) for r in rows)
    seconds = sum(float(r["seconds"]) for r in rows)
    return {"prepare": prepare, "wall_s": wall, "explain_s": seconds, "passes_per_s": passes / seconds}


def demo(args: argparse.Namespace) -> list[dict]:
    """Part 2: the demo job prepared and as given, alternating which goes first."""
    out = []
    with tempfile.TemporaryDirectory(prefix="prepared-demo-") as tmp:
        for k in range(args.demo_repeats):
            for prepare in (True, False) if k % 2 == 0 else (False, True):
                out.append(demo_once(prepare, Path(tmp) / f"{prepare}-{k}", args.device))
                print(json.dumps(out[-1]), flush=True)
    return out


def summary(table: list[dict], runs: list[dict]) -> str:
    """The Markdown table and the demo line."""
    lines = ["| model | rows | variant | sample-passes/s | × eager | output diff | input-grad diff | compile s |"]
    lines.append("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in table:
        c = f"{r['compile_s']:.1f}" if r["compile_s"] is not None else ""
        lines.append(
            f"| {r['model']} | {r['rows']} | {r['variant']} | {r['passes_per_s']:.1f} | {r['speedup']:.2f} | "
            f"{r['output_diff']:.1e} | {r['grad_diff']:.1e} | {c} |"
        )
    if table:
        f64 = {r["model"]: (r["float64_output_diff"], r["float64_grad_diff"]) for r in table}
        lines.append(
            "float64, prepared vs eager (output, input gradient): "
            + "; ".join(f"{m} {o:.1e}, {g:.1e}" for m, (o, g) in f64.items())
        )
    if runs:
        mean = {
            p: sum(r["explain_s"] for r in runs if r["prepare"] is p) / max(1, sum(r["prepare"] is p for r in runs))
            for p in (True, False)
        }
        rate = {p: [r["passes_per_s"] for r in runs if r["prepare"] is p] for p in (True, False)}
        lines.append(
            f"demo job (3 photos, hdm_fast, Lite0 224², {len(runs) // 2} round(s)): prepared {mean[True]:.1f} s "
            f"({sum(rate[True]) / len(rate[True]):.1f} sample-passes/s), as given {mean[False]:.1f} s "
            f"({sum(rate[False]) / len(rate[False]):.1f} sample-passes/s): {mean[False] / mean[True]:.2f}x faster"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:  # noqa: D103
    ap = argparse.ArgumentParser(prog="python -m benchmarks.prepared_pass", description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="*", default=[1, 9, 32])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--demo-repeats", type=int, default=1, help="rounds of the demo job (each runs both)")
    ap.add_argument("--compile", action="store_true", help="also prepared + torch.compile (slow on these CPUs)")
    ap.add_argument("--compile-mode", choices=COMPILE_MODES[1:], default="default", help="torch.compile's mode")
    ap.add_argument("--device", default="cpu", help="where the passes run (cuda: synchronised timing)")
    ap.add_argument("--models", nargs="+", choices=MODELS, default=MODELS)
    ap.add_argument("--json", default=None, help="write the raw figures here")
    args = ap.parse_args(argv)
    retain_freed_memory()  # as the fits run (engine.retain_memory, the default): no page faults on every pass
    table = pass_table(args) if args.rows else []
    runs = demo(args) if args.demo_repeats else []
    print(summary(table, runs))
    if args.json:
        Path(args.json).write_text(json.dumps({"passes": table, "demo": runs}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
