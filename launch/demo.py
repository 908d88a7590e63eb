"""The demo: ``gdat-run`` tunes a built-in model on 2 gloo ranks over an emulated network.

``python -m launch.demo`` (what ``./run.sh demo`` runs) starts
``gdat-run --nproc-per-node 2 -m gdat.demo.train ...`` inside a network namespace
whose loopback is limited to ``--rate`` (default 2gbit), so communication costs
about as much as backward compute, then prints the before/after summary from the
result file.  Without namespaces (not root, no iproute2) it runs over plain
loopback and says so.  A second run finds the plan in the knowledge base and
tunes nothing; ``REPEAT_TUNE=True`` tunes again.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import subprocess
import sys

from gdat.core.units import parse_rate
from gdat.errors import GdatError
from launch.testbed import emulated_network, namespace_unavailable_reason

__all__ = ["main"]


def _summary(report_path: str) -> list[str]:
    with open(report_path, encoding="utf-8") as f:
        doc = json.load(f)
    g = doc["GDAT"]
    plan = g["chosen_plan"]
    lines = [f"result:      {g['gdat_tuning_result']}",
             f"step time:   {g['model_baseline_performance(ms)']:.1f} ms (your DDP configuration) -> "
             f"{g['model_result_performance(ms)']:.1f} ms (AOE improvement {g['model_performance_improvement']})",
             f"plan:        {plan['label']}, {plan['buckets']} buckets, bucket_cap_mb_list="
             f"{[round(c, 3) for c in plan['bucket_cap_mb_list']] if isinstance(plan['bucket_cap_mb_list'], list) else plan['bucket_cap_mb_list']}"]
    for c in g.get("candidates", []):
        lines.append(f"  candidate {c['label']:<26} predicted {c['predicted_step_ms']:8.1f} ms   "
                     f"measured {c['measured_step_ms']:8.1f} ms")
    if g.get("lower_bound_ms") is not None:
        lines.append(f"lower bound: {g['lower_bound_ms']:.1f} ms (no plan can beat this under the model)")
    lines.append(f"report:      {report_path}")
    png = report_path[:-5] + ".png"
    if os.path.exists(png):
        lines.append(f"chart:       {png}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gdat demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mlp", choices=("mlp", "transformer", "conv"))
    parser.add_argument("--size", default="small", choices=("tiny", "small", "large"))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rate", default="2gbit", help="emulated link rate (tc units)")
    parser.add_argument("--work-path", default="gdat_demo", help="where reports go (default ./gdat_demo)")
    args = parser.parse_args(argv)
    try:
        parse_rate(args.rate)
    except GdatError as e:
        print(f"gdat demo: error: {e}", file=sys.stderr)
        return 2
    work = os.path.abspath(args.work_path)
    cmd = [sys.executable, "-m", "gdat.run", "--gdat-work-path", work, "--nproc-per-node", "2",
           "-m", "gdat.demo.train", "--model", args.model, "--size", args.size, "--batch", str(args.batch),
           "--steps", str(args.steps)]
    before = set(glob.glob(os.path.join(work, "aoe_result_gdat_*.json")))
    reason = namespace_unavailable_reason()
    if reason:
        print(f"gdat demo: emulated network unavailable ({reason}); running over plain loopback, "
              f"where communication is cheap and there is little to gain", file=sys.stderr)
        network = contextlib.nullcontext(None)
    else:
        print(f"gdat demo: 2 ranks, gloo, loopback limited to {args.rate}; model {args.model} ({args.size}), "
              f"batch {args.batch}, {args.steps} steps", file=sys.stderr)
        network = emulated_network(args.rate)
    with network as net:
        status = subprocess.run(net.wrap(cmd) if net else cmd).returncode
    if status != 0:
        print(f"gdat demo: the training job failed (status {status})", file=sys.stderr)
        return status
    new = sorted(set(glob.glob(os.path.join(work, "aoe_result_gdat_*.json"))) - before)
    if not new:
        print("gdat demo: no result file was written", file=sys.stderr)
        return 1
    print("\n".join(["", "gdat demo summary", *_summary(new[-1])]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
