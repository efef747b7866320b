"""Developer tools run from a checkout of the repository, not part of the installed ``hdm_lightning`` package.

Benchmarks of the engine (equivalence with the one-at-a-time reference in ``tests/reference.py``, framework
overhead, paper-preset throughput), of map quality and stability, of multi-process runs, and the quality-against-
compute summary of a sweep. Run them from the repository root as ``python -m benchmarks.benchmark``,
``python -m benchmarks.benchmark_processes``, ``python -m benchmarks.benchmark_quality``,
``python -m benchmarks.benchmark_stability`` and ``python -m benchmarks.sweep``; ``benchmarks/gpu.sh`` is the
prepared GPU session. ``pip install .`` ships only ``hdm_lightning``.
"""
