"""Overhead of gdat's profiler on steady-state step time.

    python benchmarks/bench_profiler_overhead.py [--model transformer:small:8] [--rounds 8]

One 2-rank gloo job (plain loopback) holds two identical models: A is stock DDP, B
is stock DDP with gdat's profiler attached and recording every step (gradient-ready
hooks, forward/optimizer hooks, the tracing comm hook timing every bucket).  Windows
of ``--window`` steps alternate A, B, A, B ... for ``--rounds`` rounds; a step's time
is the slowest rank's; the result is the median step time of each and their ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from benchmarks.common import add_worker_arguments, launch_ranks  # noqa: E402


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from benchmarks.common import Trainer, max_over_ranks, median_ms
    from gdat.profiling.session import ProfileSession

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    model, size, batch = args.model.split(":")
    stock = Trainer(model, size, int(batch), lambda m: DDP(m))
    profiled = Trainer(model, size, int(batch), lambda m: DDP(m))
    for tr in (stock, profiled):
        tr.window(3)
    session = ProfileSession(profiled.ddp)
    session.recorder.hook_forward()
    session.set_kind("overlap")
    times = {"stock": [], "profiled": []}
    for _ in range(args.rounds):
        times["stock"] += max_over_ranks(stock.window(args.window))
        times["profiled"] += max_over_ranks(profiled.window(args.window))
    recorded = session.finish()
    if dist.get_rank() == 0:
        a, b = median_ms(times["stock"]), median_ms(times["profiled"])
        with open(args.result, "w") as f:
            json.dump({"model": args.model, "stock_ms": a, "profiled_ms": b, "ratio": b / a,
                       "steps_each": len(times["stock"]),
                       "recorded_steps": len(recorded.ranks[0].steps)}, f, indent=1)
    del stock, profiled, session
    dist.destroy_process_group()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="transformer:small:8", help="MODEL:SIZE:BATCH (default %(default)s)")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--window", type=int, default=5)
    p.add_argument("--json", default=None)
    add_worker_arguments(p)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return 0
    result = args.json or f"/tmp/gdat_bench_overhead_{os.getpid()}.json"
    launch_ranks(__file__, 29631, ["--result", result, "--model", args.model, "--rounds", str(args.rounds),
                                   "--window", str(args.window)])
    with open(result) as f:
        r = json.load(f)
    print(f"{r['model']}: stock DDP {r['stock_ms']:.2f} ms, with profiler {r['profiled_ms']:.2f} ms per step "
          f"(median of {r['steps_each']} interleaved steps each); ratio {r['ratio']:.3f} "
          f"(overhead {(r['ratio'] - 1) * 100:+.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
