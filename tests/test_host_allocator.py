"""glibc's malloc thresholds under a tuned DDP on the CPU (gdat.reducer.host_allocator), in fresh processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import GLIBC

# A step that allocates and frees three 8 MiB blocks, as a training step does
# gradients: the minor page faults of steps 5-20 (the first ones warm the heap).
STEPS = """
import json, sys
from gdat.reducer import host_allocator

said = [host_allocator.fix_thresholds() for _ in range(2)] if sys.argv[1] == "fix" else [None, None]

def faults():
    return int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[7])

for step in range(20):
    if step == 5:
        before = faults()
    blocks = [bytearray(8 << 20) for _ in range(3)]
    del blocks
print(json.dumps({"said": said, "faults": faults() - before}))
"""


def _run(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    done = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True,
                          env={**clean, **env})
    return json.loads(done.stdout)


@pytest.mark.skipif(not os.path.exists("/proc/self/stat") or not GLIBC,
                    reason="needs glibc and /proc to count page faults")
def test_fixed_thresholds_keep_a_steps_blocks_in_the_heap():
    plain, fixed = _run("plain"), _run("fix")
    assert plain["faults"] > 15 * 2048  # each step maps or grows the heap and faults 24 MiB in again
    assert fixed["faults"] < 200
    assert "thresholds fixed at 32 MiB (mmap) and 64 MiB (trim)" in fixed["said"][0]
    assert fixed["said"][1] is None  # once per process


@pytest.mark.skipif(not GLIBC, reason="needs glibc")
def test_the_users_own_malloc_settings_are_left_alone():
    mine = _run("fix", MALLOC_TRIM_THRESHOLD_="1")
    assert mine["said"][0] == "host allocator left as set by MALLOC_TRIM_THRESHOLD_"
    assert mine["faults"] > 15 * 2048
    tunables = _run("fix", GLIBC_TUNABLES="glibc.malloc.trim_threshold=1")
    assert tunables["said"][0] == "host allocator left as set by GLIBC_TUNABLES"
