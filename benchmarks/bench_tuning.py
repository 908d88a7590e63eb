"""gdat's tuned plan vs stock DDP's default and a grid of uniform bucket caps.

    python benchmarks/bench_tuning.py [--rate 2gbit] [--rounds 2]

For each model (``--models``: a transformer and an MLP by default), one 2-rank training job
inside a network namespace limited to ``--rate``:

1. trains with ``gdat.DistributedDataParallel`` in tune mode (what ``gdat-run``
   substitutes for stock DDP) until tuning is done, with a fresh knowledge base;
2. then measures, side by side in ``--rounds`` interleaved rounds on the same
   process and model, the steady-state step time of gdat's chosen plan, stock DDP's
   default (25 MiB + 1 MiB first bucket) and ``bucket_cap_mb`` in {1, 2, 5, 10, 25,
   50, 100} MiB, switching in place (each window: 2 transition steps, then
   ``--measure-steps`` measured; step time = max over ranks, median over windows).

Prints per model: tuning steps used, gdat / default and gdat / best-of-grid ratios,
and the table; ``--json`` saves everything.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from benchmarks.common import add_worker_arguments, launch_ranks  # noqa: E402

GRID_MIB = (1, 2, 5, 10, 25, 50, 100)


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    from benchmarks.common import Trainer, max_over_ranks, median_ms
    from gdat.ddp import DistributedDataParallel
    from gdat.options import GdatConfig
    from gdat.reducer.plan_switch import switch_buckets

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    model, size, batch = args.model.split(":")
    batch = int(batch)
    config = GdatConfig(mode="tune", work_path=args.work, comm_budget_s=3.0)
    options = {"find_unused_parameters": True} if args.find_unused else {}
    tr = Trainer(model, size, batch, lambda m: DistributedDataParallel(m, gdat_config=config, **options))
    while not tr.ddp.gdat_done:
        tr.step()
    tuning_steps = tr.ddp.gdat_decision.decision_step + 1
    after_tuning = max_over_ranks(tr.window(args.measure_steps))
    report = None
    if dist.get_rank() == 0:
        with open(sorted(glob.glob(os.path.join(args.work, "aoe_result_gdat_*.json")))[-1]) as f:
            report = json.load(f)
    box = [report]
    dist.broadcast_object_list(box)
    report = box[0]
    chosen = report["GDAT"]["chosen_plan"]["bucket_cap_mb_list"]
    configs = {"gdat": {"bucket_cap_mb_list": chosen}, "ddp default (25 MiB + 1 MiB first)": {}}
    configs.update({f"bucket_cap_mb={c}": {"bucket_cap_mb": c} for c in GRID_MIB})
    times: dict[str, list[float]] = {name: [] for name in configs}
    names = list(configs)
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            switch_buckets(tr.ddp, **configs[name])
            tr.window(2)
            times[name] += max_over_ranks(tr.window(args.measure_steps))
    if dist.get_rank() == 0:
        rows = {name: median_ms(t) for name, t in times.items()}
        grid = {k: v for k, v in rows.items() if k.startswith("bucket_cap_mb=")}
        best = min(grid, key=grid.get)
        g = report["GDAT"]
        result = {"model": f"{model}-{size}" + (" (find_unused_parameters=True)" if args.find_unused else ""),
                  "batch": batch, "rate": args.rate, "tuning_steps": tuning_steps,
                  "find_unused_cost": g.get("find_unused_parameters_cost"),
                  "tuning_result": g["gdat_tuning_result"], "chosen": g["chosen_plan"]["label"],
                  "chosen_buckets": g["chosen_plan"]["buckets"], "after_tuning_ms": median_ms(after_tuning),
                  "rows_ms": rows, "best_grid": best,
                  "gdat_over_default": rows["gdat"] / rows["ddp default (25 MiB + 1 MiB first)"],
                  "gdat_over_best_grid": rows["gdat"] / grid[best]}
        with open(args.result, "w") as f:
            json.dump(result, f, indent=1)
    del tr
    dist.destroy_process_group()


def main(script: str = __file__, doc: str = __doc__, models: str = "transformer:small:16,mlp:small:256",
         find_unused: bool = False) -> int:
    """The benchmark; ``script`` is the file its ranks run (``--worker``), and DDP is
    built with ``find_unused_parameters=find_unused``."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--rate", default="2gbit")
    p.add_argument("--models", default=models,
                   help="comma-separated MODEL:SIZE:BATCH of gdat.demo.models (default %(default)s)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--measure-steps", type=int, default=6)
    p.add_argument("--json", default=None)
    add_worker_arguments(p)
    p.add_argument("--model", default=None, help=argparse.SUPPRESS)
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    p.add_argument("--find-unused", action="store_true", default=find_unused, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return 0
    from launch.testbed import emulated_network

    results = []
    with tempfile.TemporaryDirectory() as tmp, emulated_network(args.rate) as net:
        for k, name in enumerate(args.models.split(",")):
            work = os.path.join(tmp, f"model{k}")
            out = os.path.join(tmp, f"model{k}.json")
            launch_ranks(script, 29621 + k, [
                "--model", name, "--work", work, "--result", out, "--rate", args.rate, "--rounds", str(args.rounds),
                "--measure-steps", str(args.measure_steps)], net,
                env={**os.environ, "TUNE_BANK_PATH": os.path.join(tmp, "bank")})
            with open(out) as f:
                results.append(json.load(f))
    for r in results:
        print(f"\n{r['model']} (batch {r['batch']}, {r['rate']}): {r['tuning_result']}, plan {r['chosen']} "
              f"({r['chosen_buckets']} buckets) after {r['tuning_steps']} tuning steps; "
              f"gdat/default = {r['gdat_over_default']:.3f}, gdat/best-grid ({r['best_grid']}) = "
              f"{r['gdat_over_best_grid']:.3f}")
        if r.get("find_unused_cost"):
            print(f"find_unused_parameters=True cost per step (report): {r['find_unused_cost']}")
        print("| configuration | median step ms |")
        print("|---|---:|")
        for name, ms in r["rows_ms"].items():
            print(f"| {name} | {ms:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
