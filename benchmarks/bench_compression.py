"""Compressing only the exposed buckets vs exact plans, every-bucket compression and no communication.

    python benchmarks/bench_compression.py [--rates 2gbit,500mbit] [--rounds 2]

``--rates 100gbit`` leaves the loopback effectively unshaped (its own speed, a few
GB/s here): what communicating costs on this machine beyond the link (gloo's
copies and sums run on the cores that compute backward).

For each link rate, one 2-rank training job (``--model``, a transformer by default)
inside a network namespace limited to that rate:

1. tunes with ``gdat.DistributedDataParallel`` in tune mode with ``--gdat-compress
   bf16`` and a fresh knowledge base, until tuning is done;
2. then measures, side by side in ``--rounds`` interleaved rounds on the same
   process and model, switching in place (each window: 2 transition steps, then
   ``--measure-steps`` measured; step time = max over ranks, median over windows):

   * no communication: the same DDP step under ``no_sync()`` (each rank alone);
   * DDP's default (25 MiB + 1 MiB first bucket);
   * ``bucket_cap_mb`` in {1, 5, 10, 25, 50} MiB (the best is reported);
   * gdat exact: the fastest exact plan the tuner measured;
   * gdat with compression: the tuner's compressed candidate (tail buckets in bf16);
   * torch's stock ``bf16_compress_hook`` on every bucket of DDP's default buckets
     (registered through a wrapper function: DDP refuses the hook by name unless
     CUDA 11+ with NCCL 2.10+ is present, although gloo sums bfloat16);

3. measures the gradient error on one real step each: the relative error
   ``||c - e|| / ||e||`` of every compressed bucket's averaged gradient against
   the exact allreduce (gdat's error probe; for every-bucket bf16, gdat's hook on
   all buckets, which equals the stock hook bitwise, tests/test_compression.py).

Prints per rate the profiled backward time, the calibrated model's time for one
allreduce of every gradient, exact and in bf16 with its casts (whether the link
can carry the compressed gradients during backward at all), each configuration's
median step and its ratio to the no-communication step, and the gradient errors;
``--json`` saves everything.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from benchmarks.common import add_worker_arguments, launch_ranks  # noqa: E402

GRID_MIB = (1, 5, 10, 25, 50)
NO_COMM = "no communication (no_sync, each rank alone)"
DEFAULT = "ddp default (25 MiB + 1 MiB first)"
EXACT = "gdat exact (best exact plan measured)"
COMPRESSED = "gdat with compression (exposed tail in bf16)"
STOCK_BF16 = "stock bf16_compress_hook, every bucket"


def _stock_bf16(state, bucket):
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import bf16_compress_hook

    return bf16_compress_hook(state, bucket)


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    from benchmarks.common import Trainer, max_over_ranks, median_ms
    from gdat.core.plan import BucketPlan
    from gdat.ddp import DistributedDataParallel
    from gdat.options import GdatConfig
    from gdat.reducer import compression
    from gdat.reducer.plan_switch import ddp_bucket_arguments, switch_buckets
    from gdat.reducer.torch_internals import comm_hooks, remove_comm_hook

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    model, size, batch = args.model.split(":")
    config = GdatConfig(mode="tune", work_path=args.work, comm_budget_s=3.0, compress="bf16", max_tune_steps=40)
    tr = Trainer(model, size, int(batch), lambda m: DistributedDataParallel(m, gdat_config=config))
    while not tr.ddp.gdat_done:
        tr.step()
    decision = tr.ddp.gdat_decision
    layout = decision.found.timeline.layout
    verdict = f"adopted {decision.adopted.plan.label}" if decision.adopted else "kept the user configuration"
    table = {i: st.diff_s for i, st in decision.standings.items()}
    exact_ids = [i for i, p in enumerate(decision.plans) if not p.plan.compressed]
    exact = decision.plans[min(exact_ids, key=lambda i: table.get(i, float("inf")))].plan
    compressed = next((p.plan for p in decision.plans if p.plan.compressed), None)
    default_plan = decision.found.baseline_plan
    everything = default_plan.with_compression(
        [k for k, b in enumerate(default_plan.buckets) if b.dtype == "float32"], "bf16", "bf16 everywhere")

    def clear() -> None:
        compression.forget(tr.ddp)
        for hook, state in comm_hooks(tr.ddp):
            remove_comm_hook(tr.ddp, hook, state)

    def use(plan: BucketPlan | None, caps: dict, hook=None) -> None:
        clear()
        switch_buckets(tr.ddp, **(ddp_bucket_arguments(plan, layout) if plan is not None else caps))
        if plan is not None and plan.compressed:
            compression.install(tr.ddp, plan)
        if hook is not None:
            tr.ddp.register_comm_hook(None, hook)

    configs = {NO_COMM: lambda: use(None, {}), DEFAULT: lambda: use(None, {})}
    configs.update({f"bucket_cap_mb={c}": (lambda c=c: use(None, {"bucket_cap_mb": c})) for c in GRID_MIB})
    configs[EXACT] = lambda: use(exact, {})
    if compressed is not None:
        configs[COMPRESSED] = lambda: use(compressed, {})
    configs[STOCK_BF16] = lambda: use(None, {}, _stock_bf16)
    times: dict[str, list[float]] = {name: [] for name in configs}
    names = list(configs)
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            configs[name]()
            if name == NO_COMM:
                with tr.ddp.no_sync():
                    tr.window(2)
                    times[name] += max_over_ranks(tr.window(args.measure_steps))
            else:
                tr.window(2)
                times[name] += max_over_ranks(tr.window(args.measure_steps))
    errors = {}
    for name, plan in ((COMPRESSED, compressed), (STOCK_BF16, everything)):
        if plan is None:
            continue
        use(plan if plan is compressed else None, {})
        tr.window(2)
        state = compression.installed(tr.ddp) or compression.install(tr.ddp, plan)
        state.probe = True
        tr.window(1)
        errors[name] = {str(k): e for k, e in sorted(state.errors.items())}
    clear()
    if dist.get_rank() == 0:
        rows = {name: median_ms(t) for name, t in times.items()}
        grid = {k: v for k, v in rows.items() if k.startswith("bucket_cap_mb=")}
        best = min(grid, key=grid.get)
        found = decision.found
        timeline, total = found.timeline, layout.total_bytes
        result = {"model": f"{model}-{size}", "batch": int(batch), "rate": args.rate, "tuning": verdict,
                  "backward_ms": (timeline.backward_end_s - timeline.backward_start_s) * 1e3,
                  "link_exact_ms": found.cost.time_s(total) * 1e3,
                  "link_compressed_ms": found.cost.compressed_times_s(total) * 1e3,
                  "rows_ms": rows, "best_grid": best, "no_comm_ms": rows[NO_COMM],
                  "exact_plan": exact.label, "exact_buckets": len(exact.buckets),
                  "compressed_plan": None if compressed is None else {
                      "label": compressed.label, "buckets": len(compressed.buckets),
                      "compressed": [k for k, b in enumerate(compressed.buckets) if b.compress],
                      "compressed_bytes": compression.compressed_bytes(compressed),
                      "total_bytes": layout.total_bytes},
                  "gradient_error": errors}
        with open(args.result, "w") as f:
            json.dump(result, f, indent=1)
    tr = None  # free DDP (its reducer holds the process group) first
    dist.destroy_process_group()


def _print(r: dict) -> None:
    base = r["no_comm_ms"]
    c = r["compressed_plan"]
    print(f"\n{r['model']} (batch {r['batch']}, {r['rate']}): {r['tuning']}; exact plan {r['exact_plan']} "
          f"({r['exact_buckets']} buckets); compressed candidate: "
          + ("none (the model predicted no gain)" if c is None else
             f"{c['label']}, buckets {c['compressed']} of {c['buckets']} in bf16 "
             f"({c['compressed_bytes'] / 2**20:.1f} of {c['total_bytes'] / 2**20:.1f} MiB)"))
    fits = r["link_compressed_ms"] <= r["backward_ms"]
    print(f"backward {r['backward_ms']:.1f} ms; one allreduce of every gradient (calibrated model): "
          f"{r['link_exact_ms']:.1f} ms exact, {r['link_compressed_ms']:.1f} ms in bf16 with casts: the link "
          f"{'can' if fits else 'cannot'} carry the compressed gradients during backward")
    print("| configuration | median step ms | / no-comm | max rel. gradient error |")
    print("|---|---:|---:|---:|")
    for name, ms in r["rows_ms"].items():
        err = r["gradient_error"].get(name)
        shown = f"{max(err.values()):.2e}" if err else ("0 (exact)" if name != NO_COMM else "n/a (not averaged)")
        mark = " (best cap)" if name == r["best_grid"] else ""
        print(f"| {name}{mark} | {ms:.1f} | {ms / base:.3f} | {shown} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", default="2gbit,500mbit")
    p.add_argument("--model", default="transformer:small:16", help="MODEL:SIZE:BATCH of gdat.demo.models")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--measure-steps", type=int, default=6)
    p.add_argument("--json", default=None)
    add_worker_arguments(p)
    p.add_argument("--rate", default=None, help=argparse.SUPPRESS)
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return 0
    from launch.testbed import emulated_network

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, rate in enumerate(args.rates.split(",")):
            out = os.path.join(tmp, f"rate{k}.json")
            with emulated_network(rate) as net:
                launch_ranks(__file__, 29641 + k, [
                    "--model", args.model, "--work", os.path.join(tmp, f"work{k}"), "--result", out,
                    "--rate", rate, "--rounds", str(args.rounds), "--measure-steps", str(args.measure_steps)], net,
                    env={**os.environ, "TUNE_BANK_PATH": os.path.join(tmp, f"bank{k}")})
            with open(out) as f:
                results.append(json.load(f))
    for r in results:
        _print(r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
