"""A gain every job keeps: campaigns of launches on one knowledge base, a link that slows mid-run, and A/A.

    python benchmarks/bench_campaigns.py [--campaigns 3] [--steps 80] [--aa-jobs K] [--drift] [--json out.json]

1. Campaigns (``bench_steady_state.run_model`` on ``hf-lm:2:64``, the Hugging Face
   GPT-2 of ``benchmarks/hf_lm.py``: 13.8 M parameters, a plain DDP loop).  Each
   campaign, as separate 2-rank jobs in a network namespace limited to ``--rate``:
   two DDP-default jobs (their ratio is the noise band), a DDP-default job under the
   malloc thresholds gdat sets on the CPU (``default+malloc``: the allocator's share of
   gdat's gain, :mod:`gdat.reducer.host_allocator`), uniform caps of ``--grid``
   MiB, and two launches of ``gdat-run`` on one fresh knowledge base (``gdat``, then
   ``gdat-bank``, the second launch).  A job's steady state is the median of rank
   0's last ``--last`` step times.  Goals: every second launch <= 0.95 x its
   campaign's default; no first launch slower than default beyond the noise band;
   the median first launch <= 1.00 x its campaign's fastest uniform cap.
2. A/A (:func:`aa_rate`): recorded blocks of one configuration, the user's: the
   baseline blocks of every gdat report of the campaigns, and the steps after the
   first 20 of the campaigns' DDP-default jobs and of ``--aa-jobs`` more such jobs
   (``--campaigns 0 --aa-jobs K`` runs these alone), cut into blocks of 3; each
   block normalised by its job's median; drawn at random as a baseline and two identical candidates, launch after
   launch (at most 6), judged by gdat's sequential test
   (:func:`gdat.decide.judge.judge`): the fraction of campaigns that adopt one.
   Goal: <= 5%.
3. False rejection (:func:`false_rejection`): the same blocks, one candidate's
   scaled by ``1 - g`` (truly ``g`` faster, for ``g`` of 3, 4 and 5%): how often the
   test rejects it after its first paired block, and after its two blocks of one
   launch.  No goal; it says what one unlucky block costs.
4. Drift (``--drift``): ``gdat-run`` on the LM for ``--drift-steps`` steps, the
   link dropping from ``--rate`` to ``--slow-rate`` before step ``--drop-at``
   (``hf_lm.py --link-rate``), against ``gdat-run`` at ``--slow-rate`` from the
   start; each from an empty bank.  Goal: the last 20 steps' median within 3% of the
   run tuned at the slow rate, and stderr says it re-tuned (or why no plan gains).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from benchmarks.bench_steady_state import job, launch, run_model, summarise, workload  # noqa: E402

LM = "hf-lm:2:64"


def campaign_goals(result: dict, grid: list[str]) -> list[str]:
    """Section 1's goals (module docstring)."""
    rows, caps = result["rounds"], [f"cap={c}" for c in grid]
    second = [r["gdat-bank"] / r["default"] for r in rows]
    first = [r["gdat"] / r["default"] for r in rows]
    band = max(max(r["default-2"] / r["default"], r["default"] / r["default-2"]) for r in rows)
    over_best = statistics.median(r["gdat"] / min(r[c] for c in caps) for r in rows)

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    lines = [f"  goal: every second launch <= 0.95 x default: {verdict(max(second) <= 0.95)} "
             f"({', '.join(f'{x:.3f}' for x in second)})",
             f"  goal: no first launch above the noise band {band:.3f}: {verdict(max(first) <= band)} "
             f"({', '.join(f'{x:.3f}' for x in first)})",
             f"  goal: median first launch <= 1.00 x the fastest cap: {verdict(over_best <= 1.0)} ({over_best:.3f})"]
    if all("default+malloc" in r for r in rows):
        lines.append("  the allocator's share: default+malloc / default " + ", ".join(
            f"{r['default+malloc'] / r['default']:.3f}" for r in rows) + "; second launch / default+malloc "
            + ", ".join(f"{r['gdat-bank'] / r['default+malloc']:.3f}" for r in rows))
    return lines


def _blocks_of(jobs: list[list[float]]) -> list[list[float]]:
    """Each job's steps after the first 20, cut into blocks of 3, normalised by the job's median."""
    blocks = []
    for steps in jobs:
        steps = steps[20:]
        if steps:
            m = statistics.median(steps)
            blocks += [[x / m for x in steps[k:k + 3]] for k in range(0, len(steps) - 2, 3)]
    return blocks


def recorded_blocks(result: dict) -> list[list[float]]:
    """Sections 2 and 3's pool (module docstring): recorded blocks of the user's
    configuration, each normalised by its job's median."""
    pool = []
    for r in result["rounds"]:
        for said in r.get("gdat_said", {}).values():
            base = [b["steps_ms"] for b in said.get("blocks", []) if b["label"] == "baseline"]
            if base:
                m = statistics.median(x for steps in base for x in steps)
                pool += [[x / m for x in steps] for steps in base]
        pool += _blocks_of([r.get("steps_ms", {}).get(name, []) for name in ("default", "default-2")])
    return pool + _blocks_of(result.get("aa_steps_ms", []))


def _twins() -> tuple[Any, list[Any]]:
    """A user's configuration and two candidate plans (the plans' content is not timed)."""
    from gdat.core.plan import Bucket, BucketPlan

    user = BucketPlan((Bucket((0, 1), 8, "float32"), Bucket((2, 3), 8, "float32")), "user")
    return user, [BucketPlan((Bucket((0,), 4, "float32"), Bucket((1,), 4, "float32"), Bucket((2, 3), 8, "float32")),
                             "a"), BucketPlan((Bucket((0, 1, 2, 3), 16, "float32"),), "b")]


SAME_PREDICTION = (0.0, 0.0)  # the model cannot tell the twins apart (one plan, measured twice)


def aa_rate(result: dict, campaigns: int = 2000, launches: int = 6, seed: int = 1) -> tuple[float, int]:
    """Section 2 (module docstring): the A/A false-adoption rate and the number of
    recorded blocks it drew from."""
    from gdat.decide.judge import judge
    from gdat.decide.verdict import BASELINE, Block
    from gdat.decide.windows import WindowStats

    pool, (user, twins) = recorded_blocks(result), _twins()
    rng, adopted = random.Random(seed), 0
    order = [BASELINE, 0, 1, BASELINE, 1, 0, BASELINE]
    for _ in range(campaigns):
        evidence = None
        for _ in range(launches):
            blocks = [Block(p, 1, WindowStats(tuple(0.5 * x for x in rng.choice(pool)))) for p in order]
            verdict, evidence, _ = judge(blocks, twins, user, [], evidence, SAME_PREDICTION)
            if verdict.confident:
                adopted += verdict.winner is not None
                break
    return adopted / campaigns, len(pool)


def false_rejection(result: dict, gain: float, blocks_of_a: int, trials: int = 4000, seed: int = 1) -> float:
    """Section 3 (module docstring): how often the sequential test rejects a
    candidate that is truly ``gain`` (a fraction) faster, after ``blocks_of_a`` (1 or
    2) of its paired blocks in one launch."""
    from gdat.decide.judge import judge
    from gdat.decide.verdict import BASELINE, Block
    from gdat.decide.windows import WindowStats

    pool, (user, twins) = recorded_blocks(result), _twins()
    order = [BASELINE, 0, BASELINE] if blocks_of_a == 1 else [BASELINE, 0, 1, BASELINE, 1, 0, BASELINE]
    rng, rejected = random.Random(seed), 0
    for _ in range(trials):
        blocks = [Block(p, 1, WindowStats(tuple(0.5 * x * (1 - gain if p == 0 else 1) for x in rng.choice(pool))))
                  for p in order]
        rejected += judge(blocks, twins, user, [], None, SAME_PREDICTION)[2].status[0] == "reject"
    return rejected / trials


def _drift_job(rate: str, tmp: str, name: str, steps: int, link_rate: str) -> tuple[list[float], str]:
    from launch.testbed import emulated_network

    with emulated_network(rate) as net:
        found, stderr = launch(net, tmp, name, [os.path.join(HERE, "hf_lm.py"), "--batch", "2", "--seq", "64"], steps,
                               29660, os.path.join(tmp, f"{name}_bank"),
                               ["--link-rate", link_rate] if link_rate else [])
    return found["step_times_s"], stderr


def drift(args: argparse.Namespace, tmp: str) -> dict:
    """Section 4 (module docstring)."""
    dropped, said = _drift_job(args.rate, tmp, "dropped", args.drift_steps, f"{args.drop_at}:{args.slow_rate}")
    slow, _ = _drift_job(args.slow_rate, tmp, "slow", args.drift_steps, "")
    a, b = statistics.median(dropped[-20:]) * 1e3, statistics.median(slow[-20:]) * 1e3
    lines = [line for line in said.splitlines() if line.startswith("gdat:") and ("drift" in line or "re-tun" in line)]
    return {"dropped_last20_ms": a, "slow_last20_ms": b, "ratio": a / b, "said": lines}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", default="2gbit")
    p.add_argument("--slow-rate", default="500mbit")
    p.add_argument("--campaigns", type=int, default=3)
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--last", type=int, default=15)
    p.add_argument("--grid", default="2,5,10,25")
    p.add_argument("--aa-jobs", type=int, default=0, help="DDP-default jobs run for the A/A pool alone")
    p.add_argument("--drift", action="store_true", help="also the run whose link slows mid-run")
    p.add_argument("--drift-steps", type=int, default=120)
    p.add_argument("--drop-at", type=int, default=40)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    args.grid = args.grid.split(",")
    args.rounds, args.first_round, args.malloc_reference = args.campaigns, 0, True
    from launch.testbed import emulated_network

    with tempfile.TemporaryDirectory() as tmp:
        with emulated_network(args.rate) as net:
            result = run_model(net, tmp, LM, args) if args.campaigns else {"rounds": []}
            result["aa_steps_ms"] = [[t * 1e3 for t in job(net, tmp, f"aa{k}", workload(LM), args.steps, 29800 + k,
                                                          None, [])] for k in range(args.aa_jobs)]
        _save(args.json, {"campaigns": result})  # the jobs' results, whatever happens after them
        if args.campaigns:
            print("\n".join(summarise(result, args.grid)))
            print("\n".join(campaign_goals(result, args.grid)))
        rate, blocks = aa_rate(result)
        print(f"  A/A from {blocks} recorded blocks of the user's configuration: false adoption {rate:.3%} "
              f"({'met' if rate <= 0.05 else 'NOT met'}: goal <= 5%)")
        rejection = {f"{g:g}": [false_rejection(result, g, n) for n in (1, 2)] for g in (0.03, 0.04, 0.05)}
        print("  a candidate truly faster, rejected after 1 / 2 of its blocks: " + "; ".join(
            f"{float(g):.0%} faster {a:.1%} / {b:.1%}" for g, (a, b) in rejection.items()))
        out = {"campaigns": result, "aa_false_adoption": rate, "aa_blocks": blocks, "false_rejection": rejection}
        if args.drift:
            out["drift"] = d = drift(args, tmp)
            print(f"\ndrift: last 20 steps {d['dropped_last20_ms']:.1f} ms against {d['slow_last20_ms']:.1f} ms tuned "
                  f"at {args.slow_rate} from the start: {d['ratio']:.3f} "
                  f"({'met' if abs(d['ratio'] - 1) <= 0.03 else 'NOT met'}: goal within 3%)")
            print("\n".join(f"  {line}" for line in d["said"]))
    _save(args.json, out)
    return 0


def _save(path: str | None, out: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
