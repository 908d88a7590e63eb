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
import subprocess
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
    from gdat.core.units import parse_rate
    from gdat.schedule.whatif import Network

    nodes, ranks, rate = spec
    r = parse_rate(rate)
    return Network(nodes, ranks, r if nodes > 1 else None, r if nodes == 1 else None)


def _set_rate(rate: str) -> None:
    """Reshape this node's loopback to ``rate`` (rank 0, inside the benchmark's namespace)."""
    from launch.netns import tc

    subprocess.run([tc(), "qdisc", "change", "dev", "lo", "root", "tbf", "rate", rate, "burst", "1mb",
                    "latency", "200ms"], check=True)


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from benchmarks.common import Trainer, max_over_ranks
    from gdat.core.plan import BucketPlan
    from gdat.profiling.allreduce_bench import fit_from_ladder, measure_allreduce
    from gdat.profiling.session import ProfileSession
    from gdat.reducer.plan_switch import ddp_bucket_arguments, switch_buckets

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    tr = Trainer(args.model, args.size, args.batch, lambda m: DDP(m))
    cost = fit_from_ladder(measure_allreduce(args.comm_budget))
    for _ in range(2):
        tr.step()
    plans_by_target: dict[str, list] = {}
    if args.plans:
        with open(args.plans) as f:
            plans_by_target = {t: [BucketPlan.from_dict(d) for d in ps] for t, ps in json.load(f).items()}
    else:
        session = ProfileSession(tr.ddp)
        session.recorder.hook_forward()
        for kind in ["compute"] * args.profile_steps + ["overlap"] * args.profile_steps:
            session.set_kind(kind)
            tr.step()
        profile = session.finish(cost, {"source": "bench_whatif"})
        box = [_predictions(profile, args) if rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        predictions = box[0]
        plans_by_target = {t: [BucketPlan.from_dict(p["plan"]) for p in ps]
                           for t, ps in predictions.items() if _spec(t)[0] == 1}
    measured: dict[str, dict[str, list[float]]] = {t: {p.label: [] for p in ps} for t, ps in plans_by_target.items()}
    ladders: dict[str, float] = {}
    control: dict[str, list[float]] = {t: [] for t in plans_by_target}
    targets = list(plans_by_target)
    for r in range(args.rounds):
        for target in (targets if r % 2 == 0 else targets[::-1]):
            if not args.plans:
                if rank == 0:
                    _set_rate(_spec(target)[2])
                dist.barrier()
            if r == 0:
                ladders[target] = fit_from_ladder(measure_allreduce(1.5, min_bytes=256 << 10)).beta_s_per_byte
            with tr.ddp.no_sync():  # the load control: the same steps without communication
                control[target] += max_over_ranks(tr.window(args.measure_steps))
            plans = plans_by_target[target]
            for plan in (plans if r % 2 == 0 else plans[::-1]):
                switch_buckets(tr.ddp, **ddp_bucket_arguments(plan, *_layout(tr.ddp, plan)))
                tr.window(2)
                measured[target][plan.label] += max_over_ranks(tr.window(args.measure_steps))
    if rank == 0:
        out = {"measured_s": measured, "ladder_beta_s_per_byte": ladders, "control_s": control}
        if not args.plans:
            out["predictions"] = predictions
            profile.save(args.result + ".profile.json")
        with open(args.result, "w") as f:
            json.dump(out, f)
    dist.destroy_process_group()


def _layout(ddp, plan):
    """(order, bytes, dtypes) of ``plan``'s parameters on this DDP."""
    params = [p for p in ddp.module.parameters() if p.requires_grad]
    order = list(plan.param_order)
    return order, [params[i].numel() * params[i].element_size() for i in order], \
        [str(params[i].dtype).replace("torch.", "") for i in order]


def _predictions(profile, args: argparse.Namespace) -> dict[str, list[dict]]:
    """For every target: the optimum and DDP's default, with their predicted steps."""
    from gdat.schedule.baselines import uniform_plan
    from gdat.schedule.search import optimal_plan
    from gdat.schedule.simulator import simulate
    from gdat.schedule.whatif import whatif_model

    out = {}
    for target in args.targets.split(","):
        m = whatif_model(profile, _network(_spec(args.profile_at)), _network(_spec(target)))
        plans = [optimal_plan(m.timeline, m.cost, m.contention), uniform_plan(m.timeline, 25, first_bucket=True)]
        out[target] = [{"plan": p.to_dict(), "predicted_s": simulate(m.timeline, p, m.cost, m.contention).step_s,
                        "beta_s_per_byte": m.cost.beta_s_per_byte, "sigma": m.contention.compute_stretch,
                        "kappa": m.contention.comm_slowdown} for p in plans]
    return out


def _run_job(spec: tuple[int, int, str], result: str, args: argparse.Namespace, plans: str | None) -> None:
    from launch.cluster import emulated_cluster, run_on_nodes

    nodes, ranks, rate = spec
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nodes), "--nproc-per-node", str(ranks),
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"node0:{PORT}", "--rdzv-id", "whatif",
           os.path.abspath(__file__), "--worker", "--result", result, "--model", args.model, "--size", args.size,
           "--batch", str(args.batch), "--rounds", str(args.rounds), "--measure-steps", str(args.measure_steps),
           "--profile-steps", str(args.profile_steps), "--comm-budget", str(args.comm_budget),
           "--profile-at", args.profile_at, "--targets", args.targets, *(["--plans", plans] if plans else [])]
    with emulated_cluster(nodes, rate, rate if nodes == 1 else None) as cluster:
        codes = run_on_nodes(cluster, cmd, grace_s=60)
    if any(codes):
        raise SystemExit(f"bench_whatif: the job on {nodes}x{ranks}@{rate} failed ({codes})")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile-at", default="1x2@2gbit")
    p.add_argument("--targets", default="1x2@1gbit,1x2@2gbit,1x2@4gbit,1x2@8gbit,2x1@1gbit")
    p.add_argument("--model", default="transformer")
    p.add_argument("--size", default="large")
    p.add_argument("--batch", type=int, default=6)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--measure-steps", type=int, default=4)
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
    from gdat.core.plan import BucketPlan
    from gdat.core.profile import Profile
    from gdat.schedule.simulator import simulate
    from gdat.schedule.whatif import link_beta, whatif_model

    tmp = tempfile.mkdtemp(prefix="gdat-bench-whatif-")
    base = _spec(args.profile_at)
    if base[0] != 1:
        raise SystemExit("bench_whatif: --profile-at must be one node (its rates are changed in place)")
    print(f"profiling on {args.profile_at}, then measuring its one-node targets side by side ...",
          file=sys.stderr, flush=True)
    first = os.path.join(tmp, "one-node")
    _run_job(base, first, args, None)
    with open(first) as f:
        result = json.load(f)
    predictions = result["predictions"]
    measured, ladders = dict(result["measured_s"]), dict(result["ladder_beta_s_per_byte"])
    control = dict(result["control_s"])
    profile = Profile.load(first + ".profile.json")
    for target in predictions:
        spec = _spec(target)
        if spec[0] == 1:
            continue
        print(f"measuring {target} ...", file=sys.stderr, flush=True)
        plans_file = os.path.join(tmp, f"plans-{target}.json")
        with open(plans_file, "w") as f:
            json.dump({target: [p["plan"] for p in predictions[target]]}, f)
        out_file = os.path.join(tmp, f"measure-{target}")
        _run_job(spec, out_file, args, plans_file)
        with open(out_file) as f:
            there = json.load(f)
        measured.update(there["measured_s"])
        control.update(there["control_s"])
        ladders.update(there["ladder_beta_s_per_byte"])
    rows, diagnostics = [], []
    timeline = profile.ready_timeline("compute")
    for target, preds in predictions.items():
        model = whatif_model(profile, _network(base), _network(_spec(target)))
        drift = statistics.median(control[target]) / (timeline.backward_end_s + timeline.post_s)
        scaled = _scaled(timeline, drift)
        for pred in preds:
            label = pred["plan"]["label"]
            meas = statistics.median(measured[target][label])
            adjusted = simulate(scaled, BucketPlan.from_dict(pred["plan"]), model.cost, model.contention).step_s
            rows.append({"target": target, "plan": label, "buckets": len(pred["plan"]["buckets"]),
                         "predicted_ms": pred["predicted_s"] * 1e3, "measured_ms": meas * 1e3,
                         "error": (pred["predicted_s"] - meas) / meas, "load_adjusted_ms": adjusted * 1e3,
                         "adjusted_error": (adjusted - meas) / meas})
        diagnostics.append({"target": target, "link_beta_ns": (link_beta(_network(_spec(target)), "ring") or 0) * 1e9,
                            "predicted_beta_ns": preds[0]["beta_s_per_byte"] * 1e9,
                            "ladder_beta_ns": ladders[target] * 1e9, "sigma": preds[0]["sigma"],
                            "kappa": preds[0]["kappa"], "compute_drift": drift})
    out = {"profile_at": args.profile_at, "model": f"{args.model}-{args.size}", "batch": args.batch,
           "rows": rows, "diagnostics": diagnostics,
           "median_abs_error": statistics.median(abs(r["error"]) for r in rows),
           "median_abs_adjusted_error": statistics.median(abs(r["adjusted_error"]) for r in rows)}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    _print(out)
    return 0


def _scaled(timeline, factor: float):
    """``timeline`` with every compute time multiplied by ``factor``."""
    from dataclasses import replace

    return replace(timeline, ready_s=tuple(t * factor for t in timeline.ready_s),
                   backward_start_s=timeline.backward_start_s * factor,
                   backward_end_s=timeline.backward_end_s * factor, post_s=timeline.post_s * factor)


def _print(out: dict) -> None:
    print(f"model {out['model']} batch {out['batch']}, profiled once on {out['profile_at']}")
    print("| network | plan | buckets | predicted ms | measured ms | error | load-adjusted ms | error |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in out["rows"]:
        print(f"| {r['target']} | {r['plan']} | {r['buckets']} | {r['predicted_ms']:.1f} | {r['measured_ms']:.1f} | "
              f"{r['error'] * 100:+.1f}% | {r['load_adjusted_ms']:.1f} | {r['adjusted_error'] * 100:+.1f}% |")
    print(f"median absolute error: {out['median_abs_error'] * 100:.1f}% as predicted, "
          f"{out['median_abs_adjusted_error'] * 100:.1f}% with compute scaled to the load control")
    print("| network | link beta ns/B | predicted beta ns/B | ladder there ns/B | sigma | kappa | compute drift |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for d in out["diagnostics"]:
        print(f"| {d['target']} | {d['link_beta_ns']:.2f} | {d['predicted_beta_ns']:.2f} | {d['ladder_beta_ns']:.2f} | "
              f"{d['sigma']:.2f} | {d['kappa']:.2f} | x{d['compute_drift']:.3f} |")


if __name__ == "__main__":
    sys.exit(main())
