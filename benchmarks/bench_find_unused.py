"""gdat on a DDP with find_unused_parameters=True vs DDP's default and a uniform cap grid.

    python benchmarks/bench_find_unused.py [--rate 2gbit] [--rounds 2]

The protocol of ``bench_tuning.py`` (tune with a fresh knowledge base, then gdat's
plan, DDP's default and ``bucket_cap_mb`` in {1, 2, 5, 10, 25, 50, 100} MiB measured
side by side in interleaved rounds, switching in place) on DDPs built with
``find_unused_parameters=True``, which keep DDP's initial buckets (reverse
registration order) for good.  Default models (``--models``): ``branch``, a
transformer whose last block runs only on every second step (its parameters are
unused on the others), and the plain ``transformer`` (no unused parameter: the
report then also says what the option costs per step).
"""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from benchmarks.bench_tuning import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(__file__, __doc__, "branch:small:16,transformer:small:16", find_unused=True))
