"""Host allocator policy (engine/memory.py)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from wan_cli.engine.memory import tune_host_allocator

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# A streaming-like loop: big temporaries of slowly varying size, allocated and freed again and again.
LOOP = """
import resource, sys, torch
if sys.argv[1] == "tuned":
    from wan_cli.engine.memory import tune_host_allocator
    assert tune_host_allocator()
keep = []
for i in range(60):
    a = torch.ones(2_000_000 + 37_000 * (i % 7))   # ~8 MB, freed at the next iteration
    b = torch.ones(1_500_000 + 11_000 * (i % 5))
    keep.append(torch.ones(1000))                   # a little live data in between
    del a, b
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.skipif(not GLIBC, reason="glibc-only tuning")
def test_tuned_allocator_returns_freed_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert tune_host_allocator() is True
    baseline = int(subprocess.run([sys.executable, "-c", "import resource, torch; "
                                   "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"],
                                  capture_output=True, text=True, check=True).stdout)  # fmt: skip
    tuned = int(subprocess.run([sys.executable, "-c", LOOP, "tuned"], capture_output=True, text=True,
                               check=True).stdout)  # fmt: skip
    # with the fixed threshold each temporary goes back to the OS: the peak is the import + two temporaries (~14 MB)
    assert tuned - baseline < 40_000, f"peak grew by {(tuned - baseline) / 1024:.0f} MB"


def test_users_own_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert tune_host_allocator() is False
