r"""Throughput of an explanation run against its number of processes, measured side by side.

Runs ``explain.py --config <config> trainer.devices=N`` for every N, in alternating rounds (1, 2, 1, 2,
...: slow drifts of a noisy machine hit every N alike), each into a fresh temporary folder, and
reports wall time, images per hour and the speed-up over the first N::

    python -m benchmarks.benchmark_processes --config configs/compare_synthetic.yaml \
        --processes 1 2 --repeats 2 -- data.limit=16 "methods=[{name: hdm}]"

Wall time includes each invocation's start-up (imports, process group, classifier loading), which a
long run amortises; ``--json`` keeps the raw figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_once(config: str, processes: int, overrides: list[str], folder: Path) -> tuple[float, int]:
    """One ``explain.py`` invocation with ``processes`` processes; returns (seconds, images explained)."""
    args = [
        sys.executable,
        str(REPO / "explain.py"),
        "--config",
        config,
        f"trainer.devices={processes}",
        f"output.dir={folder}",
        "wandb.mode=disabled",
        "progress=false",
        *overrides,
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "WORLD_SIZE", "RANK", "NODE_RANK")}
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"explain.py with {processes} processes failed:\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if "images explained" in ln][-1]
    return seconds, int(line.split()[0])


def main(argv: list[str] | None = None) -> int:  # noqa: D103
    ap = argparse.ArgumentParser(prog="python -m benchmarks.benchmark_processes", description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default=None, help="write the raw figures here")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for explain.py (after --)")
    args = ap.parse_args(argv)
    times: dict[int, list[float]] = {n: [] for n in args.processes}
    images = 0
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for n in args.processes:
                seconds, images = run_once(args.config, n, args.overrides, Path(tmp) / f"run-{n}-{r}")
                times[n].append(seconds)
                print(f"round {r + 1}: {n} process(es): {seconds:.1f} s for {images} images", file=sys.stderr)
    base = statistics.median(times[args.processes[0]])
    print("| processes | wall s (median) | images/hour | speed-up |")
    print("| ---: | ---: | ---: | ---: |")
    for n in args.processes:
        med = statistics.median(times[n])
        print(f"| {n} | {med:.1f} | {images * 3600 / med:.0f} | ×{base / med:.2f} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"images": images, "seconds": times, "argv": sys.argv}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
