"""``python -m benchmarks.benchmark_churn``: the demo-sized job with and without the allocator fix, side by side.

Each variant is one ``explain.py`` child process (the allocator setting is per process) on the same config:
``explainer.engine.retain_memory=false`` (the C library's defaults: freed activations go back to the kernel every
step) and ``=true`` (:mod:`hdm_lightning.allocator`). The parent reads each child's wall time, user and system
CPU seconds, page faults and peak resident memory from ``wait4``, the engine's seconds and passes from the run's
records, and compares the two runs' maps tensor by tensor (``torch.equal`` and the largest absolute difference).
Variants alternate over ``--repeats`` so that drift of a noisy machine hits both. Example::

    python -m benchmarks.benchmark_churn                       # configs/demo.yaml, ~8 minutes on 2 CPU cores
    python -m benchmarks.benchmark_churn --config configs/tiny.yaml --json churn.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from hdm_lightning.io import load_tensors

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"default": "false", "retain_memory": "true"}


def run_child(config: Path, out: Path, retain: str, overrides: list[str]) -> dict:
    """Run ``explain.py`` once; its resource usage as ``wait4`` reports it."""
    cmd = [
        sys.executable,
        str(ROOT / "explain.py"),
        "--config",
        str(config),
        f"output.dir={out}",
        "output.resume=false",
        "wandb.mode=disabled",
        f"explainer.engine.retain_memory={retain}",
        *overrides,
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read()
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"explain.py failed ({proc.returncode}): {' '.join(cmd)}\n{err[-2000:]}")
    return {
        "wall_s": wall,
        "user_s": usage.ru_utime,
        "system_s": usage.ru_stime,
        "minor_faults": usage.ru_minflt,
        "major_faults": usage.ru_majflt,
        "peak_rss_mib": usage.ru_maxrss / 1024.0,  # Linux reports KiB
    }


def engine_figures(out: Path) -> dict:
    """Engine seconds and forward/backward samples of the run, from its per-image records."""
    records = [json.loads(p.read_text()) for p in sorted((out / "records").rglob("*.json"))]
    seconds = sum(float(r["seconds_per_image"]) for r in records)
    passes = sum(int(r["passes"]) for r in records)
    return {"images": len(records), "engine_s": seconds, "passes": passes, "passes_per_s": passes / seconds}


def map_difference(a: Path, b: Path) -> dict:
    """Largest absolute difference over every tensor of every image's ``maps/*.pt``; whether all are equal."""
    worst, equal, n = 0.0, True, 0
    for pa in sorted((a / "maps").rglob("*.pt")):
        ta, tb = load_tensors(pa), load_tensors(b / pa.relative_to(a))
        for key, x in ta.items():
            y = tb[key]
            if isinstance(x, torch.Tensor):
                n += 1
                equal = equal and torch.equal(x, y)
                if x.numel():
                    worst = max(worst, float((x.double() - y.double()).abs().max()))
    return {"tensors": n, "identical": equal, "max_abs_diff": worst}


def measure(config: Path, workdir: Path, repeats: int, overrides: list[str]) -> dict:
    """Alternate the variants ``repeats`` times; each variant's mean figures and the maps' difference."""
    rows: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for r in range(repeats):
        order = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
        for name in order:
            out = workdir / f"{name}-{r}"
            usage = run_child(config, out, VARIANTS[name], overrides)
            rows[name].append({**usage, **engine_figures(out)})
            print(f"repeat {r} {name}: {rows[name][-1]}", file=sys.stderr)
    mean = {name: {k: sum(row[k] for row in rs) / len(rs) for k in rs[0]} for name, rs in rows.items()}
    diff = map_difference(workdir / "default-0", workdir / "retain_memory-0")
    return {"config": str(config), "repeats": repeats, "overrides": overrides, "runs": rows, "mean": mean, "maps": diff}


def format_report(rep: dict) -> str:
    """A Markdown table: one column per variant, and the ratio."""
    a, b = rep["mean"]["default"], rep["mean"]["retain_memory"]
    lines = [
        f"Demo-sized job: {rep['config']} {' '.join(rep['overrides'])}, {int(a['images'])} images, "
        f"mean of {rep['repeats']} alternating run(s) per variant, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "",
        "| | C library defaults | retain_memory | ratio |",
        "| --- | --- | --- | --- |",
    ]
    fields = [
        ("wall (s)", "wall_s", "{:.1f}"),
        ("user CPU (s)", "user_s", "{:.1f}"),
        ("system CPU (s)", "system_s", "{:.1f}"),
        ("system / user", None, "{:.1%}"),
        ("minor page faults (M)", "minor_faults", "{:.2f}"),
        ("peak RSS (MiB)", "peak_rss_mib", "{:.0f}"),
        ("engine seconds", "engine_s", "{:.1f}"),
        ("sample-passes per second", "passes_per_s", "{:.1f}"),
    ]
    for label, key, fmt in fields:
        if key is None:
            va, vb = a["system_s"] / a["user_s"], b["system_s"] / b["user_s"]
        elif key == "minor_faults":
            va, vb = a[key] / 1e6, b[key] / 1e6
        else:
            va, vb = a[key], b[key]
        ratio = f"{vb / va:.2f}x" if va else "-"
        lines.append(f"| {label} | {fmt.format(va)} | {fmt.format(vb)} | {ratio} |")
    m = rep["maps"]
    same = "identical (torch.equal)" if m["identical"] else f"max |difference| {m['max_abs_diff']:.3g}"
    lines += ["", f"Maps of the two variants, {m['tensors']} tensors: {same}."]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:  # noqa: D103
    ap = argparse.ArgumentParser(prog="python -m benchmarks.benchmark_churn", description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml", help="explain.py config")
    ap.add_argument("--workdir", type=Path, default=Path("outputs/benchmark_churn"), help="runs are written here")
    ap.add_argument("--repeats", type=int, default=1, help="alternating runs per variant")
    ap.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    ap.add_argument("overrides", nargs="*", help="key=value settings passed to both runs")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:  # noqa: D103
    args = parse_args(argv)
    rep = measure(args.config.resolve(), args.workdir.resolve(), max(args.repeats, 1), args.overrides)
    print(format_report(rep))
    if args.json is not None:
        args.json.write_text(json.dumps(rep, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
