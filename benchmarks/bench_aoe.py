"""Benchmark of aoe_full: tuned vs untuned eager, side by side, on this machine.

For each model and scene, with a fresh knowledge base:

1. OPAT, then SGAT (so SGAT's ``opat`` candidate can use the operator bank);
   each run measures the untuned and the tuned model side by side (median of
   per-step latencies over interleaved rounds; a step is a forward, plus backward
   in scene train) and checks the tuned model's outputs (and gradients) against
   the untuned one;
2. the same two runs again with the same bank: every item must be a hit, nothing
   measured, and the choices identical.

Prints a Markdown table and writes all numbers as JSON (``--json``).

    python benchmarks/bench_aoe.py [--threads 1] [--compile-budget 90] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aoe_full import TuneConfig, tune_operators, tune_subgraphs  # noqa: E402
from aoe_full.inputs import make_inputs  # noqa: E402
from aoe_full.measure import MeasureConfig  # noqa: E402
from aoe_full.report import tuning_result  # noqa: E402
from aoe_full.sample_models import small_convnet, small_transformer  # noqa: E402
from aoe_full.strategies import compile_unavailable_reason  # noqa: E402

MODELS = {
    "small_convnet": (small_convnet, (8, 3, 32, 32)),
    "small_transformer": (small_transformer, (8, 32, 64)),
}


def _row(model: str, scene: str, run, second) -> dict:
    c = run.comparison
    s = run.summary
    return {
        "model": model, "scene": scene, "mode": run.mode,
        "items": s.total_num, "add": s.repo_add_num, "unsatisfied": s.repo_unsatisfied_num,
        "chosen": {i.label: i.strategy for i in run.items if i.strategy != "eager"},
        "baseline_ms": round(c.baseline_ms, 4), "tuned_ms": round(c.tuned_ms, 4),
        "median_ratio": round(c.ratio, 4), "rounds_won": f"{c.comparison.wins}/{c.comparison.rounds}",
        "p_value": round(c.comparison.p_value, 4),
        "rel_error_in_tolerances": c.relative_error,
        "result": tuning_result(run),
        "tuning_time_s": round(run.tuning_time_s, 1), "compile_s": round(run.compile_spent_s, 1),
        "second_hits": f"{second.summary.repo_hit_num}/{second.summary.total_num}",
        "second_measured": second.measured_items,
        "second_same_choices": second.candidate_choices == run.candidate_choices,
        "delivered": "tuned" if run.improved else "untuned",
        "second_ratio": round(second.comparison.ratio, 4),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile-budget", type=float, default=90.0, help="seconds per tuning run")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--scenes", default="infer,train")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    measure = MeasureConfig(rounds=args.rounds)
    rows = []
    t0 = time.perf_counter()
    for name in args.models.split(","):
        factory, shape = MODELS[name]
        x = list(make_inputs({"x": shape}).values())
        for scene in args.scenes.split(","):
            bank = tempfile.mkdtemp(prefix="aoe_bench_bank_")
            cfg = TuneConfig(scene=scene, bank_root=bank, measure=measure,
                             compile_budget_s=args.compile_budget)
            for tune in (tune_operators, tune_subgraphs):
                run = tune(factory(), x, ["x"], cfg)
                second = tune(factory(), x, ["x"], cfg)
                rows.append(_row(name, scene, run, second))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    env = {"torch": torch.__version__, "threads": args.threads, "cpus": os.cpu_count(),
           "machine": platform.processor() or platform.machine(),
           "compile": compile_unavailable_reason() or "available",
           "total_s": round(time.perf_counter() - t0, 1)}
    print(f"torch {env['torch']}, {env['threads']} thread(s), {env['cpus']} CPUs, "
          f"compiled candidates: {env['compile']}, total {env['total_s']} s\n")
    print("| model | scene | mode | items (add/unsat.) | untuned ms | tuned ms | median ratio "
          "| rounds won | rel. error / tol. | result | 2nd run hits, measured, same |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['scene']} | {r['mode'].upper()} | {r['items']} "
              f"({r['add']}/{r['unsatisfied']}) | {r['baseline_ms']:.3f} | {r['tuned_ms']:.3f} | "
              f"{r['median_ratio']:.3f} | {r['rounds_won']} | {r['rel_error_in_tolerances']:.2g} | "
              f"{r['result']} | {r['second_hits']}, {r['second_measured']}, "
              f"{'yes' if r['second_same_choices'] else 'NO'} |")
    print("\nchosen strategies:")
    for r in rows:
        for label, strategy in r["chosen"].items():
            print(f"- {r['model']} {r['scene']} {r['mode'].upper()}: {label} -> {strategy}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"env": env, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
