"""What-if against measurement: profile once, predict a changed network, then measure it.

    python benchmarks/bench_whatif.py [--changes FROM:TO,...] [--json out.json]

Each change ``FROM:TO`` names two networks ``NODESxRANKS@RATE`` (one node: its
loopback is shaped to RATE and shared by its ranks; several nodes: each node's link
is RATE each way and its loopback, shared by its ranks, 4 Gbit/s; see
:mod:`launch.cluster`).  The default is the four changes
``1x2@2gbit:1x2@1gbit`` (a slower link), ``1x2@2gbit:2x1@1gbit`` (ranks moved to
their own nodes), ``2x1@1gbit:2x2@1gbit`` (more ranks per node) and
``1x2@2gbit:1x2@500mbit``.  The model is the Hugging Face GPT-2 LM of
``benchmarks/hf_lm.py`` (13.8 M parameters, AdamW, batch 2 x 64 tokens).

1. Jobs.  One job per layout (a one-node job serves every rate of its layout: the
   loopback is reshaped in place); a job runs once the profiles its targets need
   exist.  After ``--warmup-steps`` steps, at each of its networks a job measures the
   allreduce ladder and profiles 3 compute-only + 3 overlapped steps, and does so
   again at the start of every later round; the sessions' steps make one profile,
   saved (the source of a change, and for a target a diagnostic: what its own
   calibration says).
2. Predict.  For every change, :func:`gdat.schedule.whatif.whatif_model` moves the
   FROM profile's calibrated model to TO, and three plans are simulated there:
   DDP's default (25 MiB, 1 MiB first), an 8 MiB cap, and the plan gdat's search
   picks under the moved model (from the first session, so that it can be measured
   in the same job; its prediction, like the others', from every session).
3. Measure.  On TO, each plan runs in ``--rounds`` interleaved rounds of
   ``--measure-steps`` steps (after 2 transition steps per switch); every round also
   times the same steps without communication (``no_sync``), the load control.  A
   job whose ranks outnumber the host's cores (``S`` ranks a core) runs ``S`` times
   the rounds: its steps vary several times as much from round to round (the
   scheduler interleaves the ranks sharing a core), and its median needs the rounds.

Prints the validation table (predicted, measured, error per change and plan), the
median and worst absolute error, and per change the model's terms against the
target's own calibration: per-byte allreduce cost, compute-only step, the
overlap stretch sigma and slowdown kappa, a small (64 KiB) allreduce.  Needs
root (network namespaces).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gdat.core.profile import Profile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

PORT = 29400  # inside the benchmark's own namespaces
INTRA = "4gbit"  # the loopback of a node of several: shaped, so that a what-if knows its rate
CHANGES = "1x2@2gbit:1x2@1gbit,1x2@2gbit:2x1@1gbit,2x1@1gbit:2x2@1gbit,1x2@2gbit:1x2@500mbit"


def _spec(text: str) -> tuple[int, int, str]:
    m = re.fullmatch(r"(\d+)x(\d+)@(\w+)", text.strip())
    if not m:
        raise SystemExit(f"bench_whatif: bad network {text!r}: expected NODESxRANKS@RATE, e.g. 2x1@1gbit")
    return int(m.group(1)), int(m.group(2)), m.group(3)


def _network(name: str):
    from gdat.core.units import parse_rate
    from gdat.schedule.whatif import Network

    nodes, ranks, rate = _spec(name)
    r = parse_rate(rate)
    return Network(nodes, ranks, r if nodes > 1 else None, r if nodes == 1 else parse_rate(INTRA))


def _job_of(name: str) -> str:
    """The job a network is measured in: one per one-node layout, one per multi-node network."""
    nodes, ranks, _ = _spec(name)
    return f"{nodes}x{ranks}" if nodes == 1 else name


def _set_rate(rate: str) -> None:
    """Reshape this node's loopback to ``rate`` (inside the benchmark's namespace)."""
    from launch.netns import tc

    subprocess.run([tc(), "qdisc", "change", "dev", "lo", "root", "tbf", "rate", rate, "burst", "1mb",
                    "latency", "200ms"], check=True)


def core_sharing(source: str, target: str, cores: int) -> float:
    """The what-if's core sharing on this testbed: every emulated node shares the host's
    ``cores``, and each rank runs one thread (docs/whatif.md, "Compute")."""
    def share(name: str) -> float:
        nodes, ranks, _ = _spec(name)
        return max(1.0, nodes * ranks / cores)
    return share(target) / share(source)


def _merged(profiles: list[Profile]) -> Profile:
    """One profile holding every session's steps (the first session's allreduce cost)."""
    from dataclasses import replace

    first = profiles[0]
    ranks = [replace(r, steps=tuple(s for p in profiles for s in p.ranks[i].steps)) for i, r in enumerate(first.ranks)]
    return replace(first, ranks=tuple(ranks))


def _predict(profile, source: str, target: str, plans: list[dict] | None = None) -> list[dict]:
    """DDP's default, an 8 MiB cap and gdat's pick on ``target`` (or ``plans``), moved from ``profile``."""
    from gdat.core.plan import BucketPlan
    from gdat.schedule.baselines import uniform_plan
    from gdat.schedule.search import optimal_plan
    from gdat.schedule.simulator import simulate
    from gdat.schedule.whatif import whatif_model

    sharing = core_sharing(source, target, len(os.sched_getaffinity(0)))
    m = whatif_model(profile, _network(source), _network(target), core_sharing=sharing)
    plans = [BucketPlan.from_dict(p) for p in plans] if plans else [
        uniform_plan(m.timeline, 25, first_bucket=True), uniform_plan(m.timeline, 8, first_bucket=True),
        optimal_plan(m.timeline, m.cost, m.contention, label="gdat")]
    return [{"plan": p.to_dict(), "predicted_s": simulate(m.timeline, p, m.cost, m.contention).step_s,
             "beta_s_per_byte": m.cost.beta_s_per_byte, "sigma": m.contention.compute_stretch,
             "kappa": m.contention.comm_slowdown, "core_sharing": sharing} for p in plans]


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from benchmarks.common import Trainer, max_over_ranks
    from gdat.core.plan import BucketPlan
    from gdat.profiling.allreduce_bench import fit_from_ladder, measure_allreduce
    from gdat.profiling.session import ProfileSession
    from gdat.reducer.plan_switch import ddp_bucket_arguments, switch_buckets

    with open(args.spec) as f:
        spec = json.load(f)
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    one_node = spec["one_node"]
    tr = Trainer("gpt2", "", args.batch, lambda m: DDP(m))
    tr.window(args.warmup_steps)

    def go_to(name: str) -> None:
        if one_node:
            if rank == 0:
                _set_rate(_spec(name)[2])
            dist.barrier()

    def profile_here(name: str, cost) -> Profile:  # noqa: ANN001 - an AllreduceCostModel
        switch_buckets(tr.ddp, bucket_cap_mb=25)  # a fresh reducer for the tracing hook, DDP's default
        tr.window(2)  # steps between the ladder or a plan and the profile, as gdat-run has
        session = ProfileSession(tr.ddp)
        session.recorder.hook_forward()
        for kind in ["compute"] * args.profile_steps + ["overlap"] * args.profile_steps:
            session.set_kind(kind)
            tr.step()
        return session.finish(cost, {"source": "bench_whatif", "network": name})

    sessions, costs = {}, {}
    for name in spec["networks"]:
        go_to(name)
        costs[name] = fit_from_ladder(measure_allreduce(args.comm_budget, min_bytes=256 << 10))
        sessions[name] = [profile_here(name, costs[name])]
    layout = sessions[spec["networks"][0]][0].ready_timeline("compute").layout
    box = [{f"{s}:{t}": _predict(sessions[s][0], s, t) for s, t in spec["predict"]} if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    predictions = {**spec["predictions"], **box[0]}
    to_measure = {c: [BucketPlan.from_dict(p["plan"]) for p in predictions[c]] for c in spec["measure"]}
    measured = {c: {p.label: [] for p in ps} for c, ps in to_measure.items()}
    control = {c: [] for c in to_measure}
    order = list(to_measure)
    for r in range(args.rounds):
        if r:  # one more profiling session per network and round, spread over the job
            for name in spec["networks"]:
                go_to(name)
                sessions[name].append(profile_here(name, costs[name]))
        for change in (order if r % 2 == 0 else order[::-1]):
            go_to(change.split(":")[1])
            with tr.ddp.no_sync():
                control[change] += max_over_ranks(tr.window(args.measure_steps))
            plans = to_measure[change]
            for plan in (plans if r % 2 == 0 else plans[::-1]):
                switch_buckets(tr.ddp, **ddp_bucket_arguments(plan, layout))
                tr.window(2)
                measured[change][plan.label] += max_over_ranks(tr.window(args.measure_steps))
    if rank == 0:  # the predictions again, from every session's steps, for the plans chosen at the start
        profiles = {name: _merged(ps) for name, ps in sessions.items()}
        for name, profile in profiles.items():
            profile.save(os.path.join(args.out_dir, f"{name}.profile.json"))
        box[0] = {f"{s}:{t}": _predict(profiles[s], s, t, [p["plan"] for p in box[0][f"{s}:{t}"]])
                  for s, t in spec["predict"]}
        with open(os.path.join(args.out_dir, f"job-{spec['job']}.json"), "w") as f:
            json.dump({"predictions": box[0], "measured_s": measured, "control_s": control}, f)
    dist.destroy_process_group()


def _run_job(job: str, spec: dict, out_dir: str, args: argparse.Namespace) -> dict:
    from launch.cluster import emulated_cluster, run_on_nodes

    path = os.path.join(out_dir, f"spec-{job}.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    nodes, ranks, rate = _spec(spec["networks"][0])
    rounds = math.ceil(args.rounds * max(1.0, nodes * ranks / len(os.sched_getaffinity(0))))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nodes), "--nproc-per-node", str(ranks),
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"node0:{PORT}", "--rdzv-id", "whatif",
           os.path.abspath(__file__), "--worker", "--spec", path, "--out-dir", out_dir, "--batch", str(args.batch),
           "--rounds", str(rounds), "--measure-steps", str(args.measure_steps),
           "--warmup-steps", str(args.warmup_steps), "--profile-steps", str(args.profile_steps),
           "--comm-budget", str(args.comm_budget)]
    with emulated_cluster(nodes, rate, rate if nodes == 1 else INTRA) as cluster:
        codes = run_on_nodes(cluster, cmd, grace_s=60)
    if any(codes):
        raise SystemExit(f"bench_whatif: the job on {job} failed ({codes})")
    with open(os.path.join(out_dir, f"job-{job}.json")) as f:
        return json.load(f)


def _jobs(changes: list[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """Jobs in an order where every change's source is profiled before (or in) its target's job."""
    networks: dict[str, list[str]] = {}
    for s, t in changes:
        for name in (s, t):
            if name not in networks.setdefault(_job_of(name), []):
                networks[_job_of(name)].append(name)
    for names in networks.values():  # a job's sources first: its own changes predict from them
        names.sort(key=lambda n: not any(s == n for s, _ in changes))
    done: list[str] = []
    while len(done) < len(networks):
        ready = [j for j in networks if j not in done and all(
            _job_of(s) in done or _job_of(s) == j for s, t in changes if _job_of(t) == j)]
        if not ready:
            raise SystemExit("bench_whatif: the changes' sources and targets form a cycle of jobs")
        done.append(ready[0])
    return [(j, networks[j]) for j in done]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--changes", default=CHANGES)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--measure-steps", type=int, default=4)
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--comm-budget", type=float, default=3.0)
    p.add_argument("--json", default=None, help="also save the result here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out-dir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return 0
    changes = [tuple(c.split(":")) for c in args.changes.split(",")]
    for c in changes:
        if len(c) != 2:
            raise SystemExit(f"bench_whatif: bad change {':'.join(c)!r}: expected FROM:TO")
        _spec(c[0]), _spec(c[1])
    out_dir = tempfile.mkdtemp(prefix="gdat-bench-whatif-")
    predictions: dict[str, list[dict]] = {}
    measured, control = {}, {}
    for job, names in _jobs(changes):
        print(f"job on {job}: {', '.join(names)} ...", file=sys.stderr, flush=True)
        spec = {"job": job, "one_node": _spec(names[0])[0] == 1, "networks": names,
                "predict": [(s, t) for s, t in changes if s in names],
                "measure": [f"{s}:{t}" for s, t in changes if t in names],
                "predictions": {f"{s}:{t}": predictions[f"{s}:{t}"] for s, t in changes
                                if t in names and f"{s}:{t}" in predictions}}
        result = _run_job(job, spec, out_dir, args)
        predictions.update(result["predictions"])
        measured.update(result["measured_s"])
        control.update(result["control_s"])
    out = _summarise(changes, predictions, measured, control, out_dir)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    _print(out)
    return 0


def _summarise(changes, predictions, measured, control, out_dir) -> dict:
    from gdat.core.profile import Profile
    from gdat.schedule.simulator import calibrate
    from gdat.schedule.whatif import whatif_model

    def load(name):
        return Profile.load(os.path.join(out_dir, f"{name}.profile.json"))

    def compute_step(profile) -> float:
        tl = profile.ready_timeline("compute")
        return tl.backward_end_s + tl.post_s

    rows, terms = [], []
    small = 64 << 10
    for s, t in changes:
        change = f"{s}:{t}"
        source, there = load(s), load(t)
        moved = whatif_model(source, _network(s), _network(t), core_sharing=predictions[change][0]["core_sharing"])
        for pred in predictions[change]:
            label = pred["plan"]["label"]
            meas = statistics.median(measured[change][label])
            rows.append({"change": change, "plan": label, "buckets": len(pred["plan"]["buckets"]),
                         "predicted_ms": pred["predicted_s"] * 1e3, "measured_ms": meas * 1e3,
                         "error": (pred["predicted_s"] - meas) / meas})
        own = calibrate(there, there.cost_model)
        terms.append({"change": change, "predicted_beta_ns": predictions[change][0]["beta_s_per_byte"] * 1e9,
                      "predicted_small_ms": moved.cost.time_s(small) * 1e3,
                      "target_small_ms": own.cost.time_s(small) * 1e3,
                      "target_beta_ns": own.cost.beta_s_per_byte * 1e9,
                      "core_sharing": predictions[change][0]["core_sharing"],
                      "source_compute_ms": compute_step(source) * 1e3, "target_compute_ms": compute_step(there) * 1e3,
                      "control_ms": statistics.median(control[change]) * 1e3,
                      "predicted_sigma": predictions[change][0]["sigma"],
                      "target_sigma": own.contention.compute_stretch,
                      "predicted_kappa": predictions[change][0]["kappa"], "target_kappa": own.contention.comm_slowdown})
    errors = [abs(r["error"]) for r in rows]
    return {"model": "gpt2 (benchmarks/hf_lm.py)", "rows": rows, "terms": terms,
            "median_abs_error": statistics.median(errors), "worst_abs_error": max(errors)}


def _print(out: dict) -> None:
    print(f"model {out['model']}")
    print("| change | plan | buckets | predicted ms | measured ms | error |")
    print("|---|---|---:|---:|---:|---:|")
    for r in out["rows"]:
        print(f"| {r['change']} | {r['plan']} | {r['buckets']} | {r['predicted_ms']:.1f} | {r['measured_ms']:.1f} | "
              f"{r['error'] * 100:+.1f}% |")
    print(f"median absolute error {out['median_abs_error'] * 100:.1f}%, worst {out['worst_abs_error'] * 100:.1f}%")
    print("| change | beta ns/B model / target | 64 KiB allreduce ms model / target | core sharing "
          "| compute-only ms source / target / control | sigma model / target | kappa model / target |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for d in out["terms"]:
        print(f"| {d['change']} | {d['predicted_beta_ns']:.2f} / {d['target_beta_ns']:.2f} | "
              f"{d['predicted_small_ms']:.2f} / {d['target_small_ms']:.2f} | x{d['core_sharing']:g} | "
              f"{d['source_compute_ms']:.1f} / {d['target_compute_ms']:.1f} / {d['control_ms']:.1f} | "
              f"{d['predicted_sigma']:.3f} / {d['target_sigma']:.3f} | {d['predicted_kappa']:.3f} / "
              f"{d['target_kappa']:.3f} |")


if __name__ == "__main__":
    sys.exit(main())
