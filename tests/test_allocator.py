"""The allocator fix keeps freed memory in the process: a freed large tensor is reused, not faulted in again."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys, torch
from hdm_lightning.allocator import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory() and retain_freed_memory()  # idempotent
n = 16 * 1024 * 1024  # 64 MiB of float32: above glibc's largest dynamic mmap threshold (32 MiB)
faults = []
for _ in range(6):  # a training loop's steady state: allocate, fill, free, again
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(n)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del x
print(min(faults[1:]))
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the fix is glibc's mallopt; elsewhere a no-op")
def test_retained_memory_is_reused_without_page_faults():
    default, retained = _faults("default"), _faults("retain")
    pages = 64 * 1024 * 1024 // 4096
    assert default > pages // 2  # the C library's default: the block is mapped again and faulted in page by page
    assert retained < pages // 20  # retained: the freed block is reused


def test_retain_memory_is_an_engine_setting_that_does_not_change_results():
    from hdm_lightning.config import DMConfig
    from hdm_lightning.run.folder import NON_RESULT_KEYS

    assert DMConfig().engine.retain_memory is True
    assert "explainer.engine.retain_memory" in NON_RESULT_KEYS
