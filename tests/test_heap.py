"""atft_core.heap: freed memory stays in the process (no per-step page faults), glibc only.

Each case runs in a fresh interpreter: the setting is process-wide and cannot be undone.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from atft_core.heap import can_retain

pytestmark = pytest.mark.skipif(not can_retain(), reason="needs Linux with glibc")

PAGE = 4096
BLOCK = 64 * 2**20  # above glibc's largest mmap threshold (32 MB)

_PROBE = """
import json, resource, sys
import torch
from atft_core.heap import retain_freed_memory
retained = retain_freed_memory() if sys.argv[1] == "retain" else False

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096

per_cycle = []
for _ in range(20):  # a "step": two large activations and a smaller one, made, used, freed
    f0 = faults()
    a, b, c = torch.ones(16 * 2**20), torch.ones(12 * 2**20), torch.ones(2 * 2**20)
    float(a.sum() + b.sum() + c.sum())
    del a, b, c
    per_cycle.append(faults() - f0)
x = torch.ones(40 * 2**20)  # 160 MB: more than the heap holds free after the cycles above
held = rss()
del x
print(json.dumps({"retained": retained, "per_cycle": per_cycle, "rss_dropped": held - rss()}))
"""


def _probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True,
                         timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_steps_stop_faulting_their_memory_in_once_the_heap_is_kept():
    default, kept = _probe("default"), _probe("retain")
    assert kept["retained"] is True and default["retained"] is False
    step_pages = (16 + 12 + 2) * 2**20 * 4 // PAGE  # 30,720 pages touched per cycle
    # glibc's default: each large block is a fresh mmap, so every cycle faults its 64 MB + 48 MB
    # back in (the 8 MB one may come from the heap once the dynamic threshold has risen)
    assert min(default["per_cycle"][5:]) >= (16 + 12) * 2**20 * 4 // PAGE
    # kept: the heap grows while freed holes are too small for the next aligned request, then
    # every cycle reuses it -- the last cycles fault (almost) nothing
    assert max(kept["per_cycle"][-5:]) < step_pages // 100
    assert sum(kept["per_cycle"]) < sum(default["per_cycle"]) / 2


def test_a_freed_block_stays_resident_only_when_kept():
    default, kept = _probe("default"), _probe("retain")
    assert default["rss_dropped"] >= BLOCK * 2  # 160 MB unmapped on free
    assert kept["rss_dropped"] < BLOCK // 16  # kept in the heap for the next step


def test_retain_is_idempotent():
    code = ("from atft_core.heap import retain_freed_memory as r; "
            "print(r(), r())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["True", "True"]
