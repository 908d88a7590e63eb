"""Whole launches side by side: stock ``torchrun`` against ``gdat-run`` on unmodified scripts.

    python benchmarks/bench_launchers.py [--rate 2gbit] [--rounds 2] [--only hf,compiled]

Workloads (the scripts in ``tests/scripts``, 2 ranks, gloo, 1 thread each, inside a
network namespace whose loopback is limited to ``--rate``):

* ``hf``: the HF ``Trainer`` with default ``TrainingArguments`` (find_unused_parameters
  on, clipping on, 2 accumulated micro-batches of 4 x 128 tokens) on a GPT-2 built
  from a config: vocabulary 8192, width 384, 6 layers (13.8 M parameters);
* ``compiled``: a plain loop over ``torch.compile(DDP(model))`` (inductor,
  Dynamo's DDPOptimizer) on a transformer LM of the same size, batch 4 x 128.

Each round launches, in this order: stock ``torchrun``; ``gdat-run`` with an empty
knowledge base (it tunes in steps 0..29 and keeps the winner); ``gdat-run`` again
on that knowledge base (the plan applies from DDP's construction).  Every launch
runs ``--steps`` steps; the step time of a launch is the median over steps
``--from-step`` onward (after tuning), measured on rank 0, whose step includes
waiting for the slowest rank.  Prints one table per workload with medians over
rounds and the gdat / stock ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SCRIPTS = os.path.join(REPO, "tests", "scripts")
BIN = os.path.dirname(sys.executable)

WORKLOADS = {
    "hf": ("hf_trainer.py", ["--vocab", "8192", "--width", "384", "--layers", "6", "--heads", "6", "--seq", "128",
                             "--batch", "4"]),
    "compiled": ("compiled_loop.py", ["--compile", "ddp", "--backend", "inductor", "--model", "lm", "--batch", "4",
                                      "--seq", "128"]),
}


def _launch(net, tool: str, workload: str, steps: int, out: str, port: int, bank: str) -> tuple[dict, str]:
    script, extra = WORKLOADS[workload]
    os.makedirs(out, exist_ok=True)
    result = os.path.join(out, "result.json")
    dest = ["--out", out] if workload == "hf" else ["--out", result]
    cmd = [os.path.join(BIN, tool), "--nproc-per-node", "2", "--master-port", str(port),
           os.path.join(SCRIPTS, script), *extra, *dest, "--steps", str(steps)]
    env = {**os.environ, "TUNE_BANK_PATH": bank, "PYTHONPATH": REPO, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(net.wrap(cmd), cwd=out, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{tool} {workload} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    verdict = next((line for line in done.stderr.splitlines()
                    if "tuning successful" in line or "tuning unsatisfied" in line or "knowledge base hit" in line
                    or "does not tune" in line), "")
    with open(result) as f:
        return json.load(f), verdict


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", default="2gbit")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--from-step", type=int, default=32)
    p.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated: " + ", ".join(WORKLOADS))
    p.add_argument("--json", default=None)
    args = p.parse_args()
    unknown = [w for w in args.only.split(",") if w not in WORKLOADS]
    if unknown:
        p.error(f"--only: unknown workload {unknown[0]!r} (known: {', '.join(WORKLOADS)})")
    from launch.testbed import emulated_network

    kinds = (("stock torchrun", "torchrun", False), ("gdat-run (tunes)", "gdat-run", False),
             ("gdat-run (bank hit)", "gdat-run", True))
    results: dict[str, dict[str, list[float]]] = {}
    verdicts: dict[str, list[str]] = {}
    port = 29700
    with tempfile.TemporaryDirectory() as tmp, emulated_network(args.rate) as net:
        for workload in args.only.split(","):
            results[workload] = {name: [] for name, _, _ in kinds}
            verdicts[workload] = []
            for r in range(args.rounds):
                bank = os.path.join(tmp, f"bank-{workload}-{r}")
                for name, tool, _ in kinds:
                    port += 1
                    out = os.path.join(tmp, f"{workload}-{r}-{port}")
                    res, verdict = _launch(net, tool, workload, args.steps, out, port, bank)
                    steady = res["step_times_s"][args.from_step:]
                    results[workload][name].append(statistics.median(steady) * 1e3)
                    if verdict:
                        verdicts[workload].append(f"{name}: {verdict.strip()}")
                    print(f"{workload} round {r + 1} {name}: {results[workload][name][-1]:.1f} ms", file=sys.stderr,
                          flush=True)
    for workload, rows in results.items():
        stock = statistics.median(rows["stock torchrun"])
        print(f"\n{workload} ({args.rate}, {args.rounds} rounds, median of steps {args.from_step}..{args.steps - 1})")
        print("| launch | step ms (median over rounds) | / stock |")
        print("|---|---:|---:|")
        for name, values in rows.items():
            ms = statistics.median(values)
            print(f"| {name} | {ms:.1f} | {ms / stock:.3f} |")
        for v in verdicts[workload]:
            print(f"  {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "verdicts": verdicts, "rate": args.rate, "rounds": args.rounds}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
