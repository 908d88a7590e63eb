"""What-if against measurement: profile once, predict other networks, then measure them.

    flock /work/coord/bench.lock python benchmarks/bench_whatif.py [--profile-at 1x2@2gbit]
        [--targets 1x2@1gbit,1x2@2gbit,1x2@4gbit,1x2@8gbit,2x1@1gbit] [--json out.json]

1. Profile: one job on the emulated network ``--profile-at`` (``NODESxRANKS@RATE``;
   one node: its loopback is shaped to RATE and shared by its ranks; several nodes:
   each node's link is RATE each way, see :mod:`launch.cluster`) runs the allreduce
   ladder and 3 compute-only + 3 overlapped steps, and saves the profile.
2. Predict: for each target network, :func:`gdat.schedule.whatif.whatif_model`
   moves the profile's calibrated model there; the optimum is searched under it
   and DDP's default (25 MiB + 1 MiB first) is simulated too.
3. Measure: one job per target, on that emulated network, runs each plan in
   ``--rounds`` interleaved rounds of ``--measure-steps`` steps (after 2 transition
   steps per switch).  It also runs the ladder and a profile there, reported as
   diagnostics only (what the target's own calibration would have said).

Prints one table (predicted, measured, error per target and plan) and the median
absolute error.  Needs root (network namespaces).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

PORT = 29400  # inside the benchmark's own namespaces


def _spec(text: str) -> tuple[int, int, str]:
    m = re.fullmatch(r"(\d+)x(\d+)@(\w+)", text.strip())
    if not m:
        raise SystemExit(f"bench_whatif: bad network {text!r}: expected NODESxRANKS@RATE, e.g. 2x1@1gbit")
    return int(m.group(1)), int(m.group(2)), m.group(3)


def _network(spec: tuple[int, int, str]):
    from gdat.schedule.whatif import Network
    from gdat.units import parse_rate

    nodes, ranks, rate = spec
    r = parse_rate(rate)
    return Network(nodes, ranks, r if nodes > 1 else None, r if nodes == 1 else None)


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from benchmarks.common import Trainer, max_over_ranks
    from gdat.plan import BucketPlan
    from gdat.plan_switch import ddp_bucket_arguments, switch_buckets
    from gdat.profiling.allreduce_bench import fit_from_ladder, measure_allreduce
    from gdat.profiling.session import ProfileSession

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    tr = Trainer(args.model, args.size, args.batch, lambda m: DDP(m))
    cost = fit_from_ladder(measure_allreduce(args.comm_budget))
    for _ in range(2):
        tr.step()
    session = ProfileSession(tr.ddp)
    session.recorder.hook_forward()
    for kind in ["compute"] * args.profile_steps + ["overlap"] * args.profile_steps:
        session.set_kind(kind)
        tr.step()
    profile = session.finish(cost, {"source": "bench_whatif"})
    measured: dict[str, list[float]] = {}
    if args.plans:
        with open(args.plans) as f:
            plans = [BucketPlan.from_dict(d) for d in json.load(f)]
        timeline = profile.ready_timeline("compute")
        order, sizes, dtypes = list(timeline.order), list(timeline.nbytes), list(timeline.dtypes)
        measured = {p.label: [] for p in plans}
        for r in range(args.rounds):
            for plan in (plans if r % 2 == 0 else plans[::-1]):
                switch_buckets(tr.ddp, **ddp_bucket_arguments(plan, order, sizes, dtypes))
                tr.window(2)
                measured[plan.label] += max_over_ranks(tr.window(args.measure_steps))
    if dist.get_rank() == 0:
        profile.save(args.result + ".profile.json")
        with open(args.result, "w") as f:
            json.dump({"measured_s": measured}, f)
    dist.destroy_process_group()


def _run_job(spec: tuple[int, int, str], result: str, args: argparse.Namespace, plans: str | None) -> None:
    from launch.cluster import emulated_cluster, run_on_nodes

    nodes, ranks, rate = spec
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nodes), "--nproc-per-node", str(ranks),
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"node0:{PORT}", "--rdzv-id", "whatif",
           os.path.abspath(__file__), "--worker", "--result", result, "--model", args.model, "--size", args.size,
           "--batch", str(args.batch), "--rounds", str(args.rounds), "--measure-steps", str(args.measure_steps),
           "--profile-steps", str(args.profile_steps), "--comm-budget", str(args.comm_budget),
           *(["--plans", plans] if plans else [])]
    with emulated_cluster(nodes, rate, rate if nodes == 1 else None) as cluster:
        codes = run_on_nodes(cluster, cmd, grace_s=60)
    if any(codes):
        raise SystemExit(f"bench_whatif: the job on {nodes}x{ranks}@{rate} failed ({codes})")


def _predict(profile, measured_net, target_net):
    from gdat.schedule.baselines import uniform_plan
    from gdat.schedule.search import optimal_plan
    from gdat.schedule.simulator import simulate
    from gdat.schedule.whatif import whatif_model

    m = whatif_model(profile, measured_net, target_net)
    plans = [optimal_plan(m.timeline, m.cost, m.contention), uniform_plan(m.timeline, 25, first_bucket=True)]
    return m, [(p, simulate(m.timeline, p, m.cost, m.contention)) for p in plans]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile-at", default="1x2@2gbit")
    p.add_argument("--targets", default="1x2@1gbit,1x2@2gbit,1x2@4gbit,1x2@8gbit,2x1@1gbit")
    p.add_argument("--model", default="transformer")
    p.add_argument("--size", default="large")
    p.add_argument("--batch", type=int, default=6)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--measure-steps", type=int, default=5)
    p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--comm-budget", type=float, default=3.0)
    p.add_argument("--json", default=None, help="also save the result here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    p.add_argument("--plans", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return 0
    from gdat.schedule.whatif import link_beta
    from gdat.timeline import Profile

    tmp = tempfile.mkdtemp(prefix="gdat-bench-whatif-")
    base = _spec(args.profile_at)
    print(f"profiling on {args.profile_at} ...", file=sys.stderr, flush=True)
    _run_job(base, os.path.join(tmp, "profile"), args, None)
    profile = Profile.load(os.path.join(tmp, "profile.profile.json"))
    measured_net = _network(base)
    rows, diagnostics = [], []
    for text in args.targets.split(","):
        spec = _spec(text)
        model, predicted = _predict(profile, measured_net, _network(spec))
        plans_file = os.path.join(tmp, f"plans-{text}.json")
        with open(plans_file, "w") as f:
            json.dump([plan.to_dict() for plan, _ in predicted], f)
        print(f"measuring {text} ...", file=sys.stderr, flush=True)
        result = os.path.join(tmp, f"measure-{text}")
        _run_job(spec, result, args, plans_file)
        with open(result) as f:
            measured = json.load(f)["measured_s"]
        there = Profile.load(result + ".profile.json")
        diagnostics.append({"target": text, "predicted_beta_ns": model.cost.beta_s_per_byte * 1e9,
                            "link_beta_ns": (link_beta(_network(spec), "ring") or 0) * 1e9,
                            "ladder_beta_ns": there.cost_model.beta_s_per_byte * 1e9,
                            "predicted_sigma": model.contention.compute_stretch,
                            "predicted_kappa": model.contention.comm_slowdown,
                            "there": _calibration_there(there)})
        for plan, sim in predicted:
            meas = statistics.median(measured[plan.label])
            rows.append({"target": text, "plan": plan.label, "buckets": len(plan.buckets),
                         "predicted_ms": sim.step_s * 1e3, "measured_ms": meas * 1e3,
                         "error": (sim.step_s - meas) / meas})
    out = {"profile_at": args.profile_at, "model": f"{args.model}-{args.size}", "batch": args.batch,
           "profile_cost": profile.cost_model.to_dict(), "rows": rows, "diagnostics": diagnostics,
           "median_abs_error": statistics.median(abs(r["error"]) for r in rows)}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    _print(out)
    return 0


def _calibration_there(profile) -> dict[str, float]:
    from gdat.schedule.simulator import calibrate

    fitted = calibrate(profile, profile.cost_model)
    tl = profile.ready_timeline("compute")
    return {"calibrated_beta_ns": fitted.cost.beta_s_per_byte * 1e9, "comm_scale": fitted.comm_scale,
            "sigma": fitted.contention.compute_stretch, "kappa": fitted.contention.comm_slowdown,
            "backward_ms": (tl.backward_end_s - tl.backward_start_s) * 1e3}


def _print(out: dict) -> None:
    print(f"model {out['model']} batch {out['batch']}, profiled once on {out['profile_at']}")
    print("| network | plan | buckets | predicted ms | measured ms | error |")
    print("|---|---|---:|---:|---:|---:|")
    for r in out["rows"]:
        print(f"| {r['target']} | {r['plan']} | {r['buckets']} | {r['predicted_ms']:.1f} | {r['measured_ms']:.1f} | "
              f"{r['error'] * 100:+.1f}% |")
    print(f"median absolute error: {out['median_abs_error'] * 100:.1f}%")
    print("| network | link beta ns/B | predicted beta | ladder there | calibrated there | sigma pred/there "
          "| kappa pred/there | backward ms there |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for d in out["diagnostics"]:
        t = d["there"]
        print(f"| {d['target']} | {d['link_beta_ns']:.2f} | {d['predicted_beta_ns']:.2f} | {d['ladder_beta_ns']:.2f} | "
              f"{t['calibrated_beta_ns']:.2f} | {d['predicted_sigma']:.2f}/{t['sigma']:.2f} | "
              f"{d['predicted_kappa']:.2f}/{t['kappa']:.2f} | {t['backward_ms']:.0f} |")


if __name__ == "__main__":
    sys.exit(main())
