"""Predicted vs measured step time for several bucket plans, on the emulated network.

    python benchmarks/bench_prediction.py [--rate 2gbit] [--model transformer --size large --batch 2]
    python benchmarks/bench_prediction.py --model gpt2 --rounds 3   # the Hugging Face LM of the campaigns

Inside a network namespace limited to ``--rate`` (2 gloo ranks over loopback), one
training job: profiles the model (compute-only and overlapped steps, allreduce
ladder), calibrates the contention model, then measures each plan (DDP uniform
caps, DDP's default, the optimum, MG-WFBP, Horovod-style fusion; plans grouping the
gradients alike measured once) on real steps, switching plans in place,
in ``--rounds`` interleaved rounds.  Prints a table of predicted and measured median
step times and the median absolute relative error; ``--json`` saves it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from benchmarks.common import add_worker_arguments, launch_ranks  # noqa: E402


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from benchmarks.common import Trainer, max_over_ranks, median_ms
    from gdat.profiling.allreduce_bench import fit_from_ladder, measure_allreduce
    from gdat.profiling.session import ProfileSession
    from gdat.reducer.plan_switch import ddp_bucket_arguments, switch_buckets
    from gdat.schedule.baselines import horovod_plan, mgwfbp_plan, uniform_plan
    from gdat.schedule.search import optimal_plan
    from gdat.schedule.simulator import calibrate, simulate

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    tr = Trainer(args.model, args.size, args.batch, lambda m: DDP(m))
    nparams = sum(1 for p in tr.model.parameters())
    nbytes = sum(p.numel() * p.element_size() for p in tr.model.parameters())
    cost = fit_from_ladder(measure_allreduce(args.comm_budget))
    for _ in range(2):
        tr.step()
    session = ProfileSession(tr.ddp)
    session.recorder.hook_forward()
    for kind in ["compute"] * args.profile_steps + ["overlap"] * args.profile_steps:
        session.set_kind(kind)
        tr.step()
    profile = session.finish(cost)
    timeline = profile.ready_timeline("compute")
    fitted = calibrate(profile, cost)
    cost, contention = fitted.cost, fitted.contention
    plans = [uniform_plan(timeline, c, first_bucket=False) for c in (1, 2, 4, 10, 50, 100)]
    plans.append(uniform_plan(timeline, 25, first_bucket=True))
    plans.append(optimal_plan(timeline, cost, contention))
    plans.append(mgwfbp_plan(timeline, cost, contention))
    plans.append(horovod_plan(timeline, 16 << 20, 5e-3))
    plans = [p for k, p in enumerate(plans) if not any(p.same_partition(q) for q in plans[:k])]
    measured: dict[str, list[float]] = {p.label: [] for p in plans}
    for r in range(args.rounds):
        for plan in (plans if r % 2 == 0 else plans[::-1]):
            switch_buckets(tr.ddp, **ddp_bucket_arguments(plan, timeline.layout))
            tr.window(2)
            measured[plan.label] += max_over_ranks(tr.window(args.measure_steps))
    if dist.get_rank() == 0:
        rows = []
        for plan in plans:
            pred = simulate(timeline, plan, cost, contention).step_s * 1e3
            meas = median_ms(measured[plan.label])
            rows.append({"plan": plan.label, "buckets": len(plan.buckets), "predicted_ms": pred,
                         "measured_ms": meas, "error": abs(pred - meas) / meas})
        result = {"model": f"{args.model}-{args.size}", "tensors": nparams, "gradient_mb": nbytes / 1e6,
                  "batch": args.batch, "rate": args.rate, "cost_model": cost.to_dict(),
                  "contention": contention.to_dict(), "comm_scale": fitted.comm_scale,
                  "backward_ms": (timeline.backward_end_s - timeline.backward_start_s) * 1e3,
                  "rows": rows, "median_abs_error": statistics.median(r["error"] for r in rows)}
        with open(args.result, "w") as f:
            json.dump(result, f, indent=1)
    dist.destroy_process_group()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", default="2gbit")
    p.add_argument("--model", default="transformer")
    p.add_argument("--size", default="large")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--measure-steps", type=int, default=6)
    p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--comm-budget", type=float, default=4.0)
    p.add_argument("--json", default=None, help="also save the result here")
    add_worker_arguments(p)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return 0
    from launch.testbed import emulated_network

    result = args.json or os.path.join("/tmp", f"gdat_bench_prediction_{os.getpid()}.json")
    with emulated_network(args.rate) as net:
        launch_ranks(__file__, 29611, [
            "--result", result, "--rate", args.rate, "--model", args.model, "--size", args.size,
            "--batch", str(args.batch), "--rounds", str(args.rounds), "--measure-steps", str(args.measure_steps),
            "--profile-steps", str(args.profile_steps), "--comm-budget", str(args.comm_budget)], net)
    with open(result) as f:
        r = json.load(f)
    c = r["cost_model"]["segments"][-1]
    print(f"model {r['model']}: {r['tensors']} tensors, {r['gradient_mb']:.1f} MB gradients, batch {r['batch']}, "
          f"backward {r['backward_ms']:.0f} ms; link {r['rate']}: allreduce beta {c['beta_s_per_byte'] * 1e9:.2f} ns/B; "
          f"in-situ x{r['comm_scale']:.2f}, contention sigma={r['contention']['compute_stretch']:.2f} "
          f"kappa={r['contention']['comm_slowdown']:.2f}")
    print("| plan | buckets | predicted ms | measured ms | error |")
    print("|---|---:|---:|---:|---:|")
    for row in r["rows"]:
        print(f"| {row['plan']} | {row['buckets']} | {row['predicted_ms']:.1f} | {row['measured_ms']:.1f} | "
              f"{row['error'] * 100:.1f}% |")
    print(f"median absolute error: {r['median_abs_error'] * 100:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
