"""Keep the memory a mask fit frees for its next step, instead of handing it back to the kernel (glibc).

A mask fit allocates and frees the same large tensors every step: the masked batch, the classifier's
activations and their gradients. glibc serves a block above its mmap threshold (128 KiB at start, raised
dynamically to at most 32 MiB) with a fresh ``mmap`` and gives it back with ``munmap`` when it is freed, and it
trims free memory above 128 KiB off the top of the heap. So every step maps its activations again and the
kernel zero-fills them page by page: on the demo (three photos, EfficientNet-Lite0 at 224x224, 2 CPU cores)
a third of the wall time was system time and page faults (docs/results.md, "Allocator").

:func:`retain_freed_memory` raises both thresholds once per process with ``mallopt`` (through ``ctypes``), so
freed blocks stay in the heap and the next step reuses them. PyTorch has no caching allocator for CPU tensors,
and no library sets these; the C library's documented knobs are the whole fix. Cost: the process keeps its peak
memory (its resident size does not shrink after a fit). ``explainer.engine.retain_memory: false`` leaves the
allocator as it is. Other C libraries (macOS, musl, Windows): a no-op.
"""

from __future__ import annotations

import ctypes
import platform

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "retain_freed_memory"]

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # blocks below 1 GiB come from the heap (mallopt takes an int: at most 2 GiB - 1)
TRIM_THRESHOLD = (1 << 31) - 1  # free memory at the heap's top is kept up to 2 GiB - 1

_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True if they are set (now or before).

    Returns False where the C library is not glibc or refuses the setting; the fits then run as before.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
