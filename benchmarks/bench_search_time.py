"""Run time of the exact bucket search for 2,000 gradients.

    python benchmarks/bench_search_time.py [--params 2000] [--repeats 5]

A synthetic ready timeline of ``--params`` gradients (sizes cycling 16 B .. 64 KiB,
one every 50 us) and a linear cost model; times ``optimal_plan`` without a bucket
limit and with AOE's limit of 8 buckets, median of ``--repeats`` runs.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gdat.core.cost_model import AllreduceCostModel, Contention  # noqa: E402
from gdat.core.layout import GradientLayout  # noqa: E402
from gdat.core.profile import ReadyTimeline  # noqa: E402
from gdat.schedule.search import optimal_plan  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--params", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    n = args.params
    grads = GradientLayout(tuple(range(n)), tuple(16 * 4 ** (k % 7) for k in range(n)), ("float32",) * n)
    timeline = ReadyTimeline(layout=grads, ready_s=tuple(0.01 + 5e-5 * k for k in range(n)),
                             backward_start_s=0.01, backward_end_s=0.01 + 5e-5 * n, post_s=0.002)
    cost = AllreduceCostModel.linear(1e-4, 2e-9)
    for limit in (None, 8):
        runs = []
        for _ in range(args.repeats):
            began = time.perf_counter()
            plan = optimal_plan(timeline, cost, Contention(1.2, 1.5), max_buckets=limit)
            runs.append(time.perf_counter() - began)
        print(f"{n} gradients, {'no bucket limit' if limit is None else f'at most {limit} buckets'}: "
              f"median {statistics.median(runs) * 1e3:.0f} ms over {args.repeats} runs "
              f"({len(plan.buckets)} buckets)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
