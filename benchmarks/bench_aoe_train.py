"""Benchmark: operator/subgraph tuning before training, timed in the training job.

``python benchmarks/bench_aoe_train.py --model lm --json out.json`` (needs root for
the emulated network):

1. ``aoe --job_type 1 --scene train`` tunes the model a training script builds, on
   inputs of its training batch's shape (one thread, as each rank runs): first with
   the model's dtypes (the exact subgraph choices and whole-model candidate), which
   is the exact-only bank, then, on a copy of it, with ``--precision_mode
   allow_mix_precision_bf16`` (the subgraphs are bank hits; the whole-model
   candidates include the mixed ones), which is the whole bank.  ``--model lm``: the
   Hugging Face GPT-2 LM of ``benchmarks/hf_lm.py``
   (``gpt2_lm``, 13.8 M parameters; ``--batch`` x ``--size`` token ids);
   ``--model resnet18``: the ResNet-18 of ``benchmarks/resnet_train.py``
   (``resnet18``, torchvision's architecture, 11.7 M parameters; ``--batch`` images
   of ``--size`` squared pixels).  aoe tunes on random inputs of the training
   batch's shape, not on the script's data.
2. Three 2-rank jobs of the unmodified script under ``gdat-run`` at ``--rate``,
   ``--steps`` steps each, in this order: without ``--gdat-aoe-bank`` (the
   reference), with the exact-only bank, with the whole bank.  A job's step is the
   median of rank 0's last ``--last`` step times; its loss is the mean of its last 5
   steps' losses.  ``--compress`` adds a fourth: the whole bank with
   ``--gdat-compress bf16`` (both lossy options a user can opt into).

The printout gives each job's step against the reference, the loss difference
against the reference (with the bound the loss check states: ``BOUND`` x the
reference's first loss) and the line each job's ``--gdat-aoe-bank`` said.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from aoe_full.precision import BOUND, KEEP, MIXED_BF16  # noqa: E402
from benchmarks.bench_steady_state import BIN, launch  # noqa: E402
from launch.testbed import emulated_network  # noqa: E402


def _model(args: argparse.Namespace) -> tuple[str, list[str], list[str]]:
    """The training script, aoe's model and input options, and the script's batch options."""
    b, n = args.batch, args.size
    if args.model == "lm":
        return "hf_lm.py", ["--model", f"{os.path.join(HERE, 'hf_lm.py')}:gpt2_lm", "--input_shape",
                            f"input_ids:{b},{n}", "--input_dtype", "input_ids:int64", "--input_range",
                            "input_ids:0,8192"], ["--batch", str(b), "--seq", str(n)]
    return "resnet_train.py", ["--model", f"{os.path.join(HERE, 'resnet_train.py')}:resnet18", "--input_shape",
                               f"x:{b},3,{n},{n}"], ["--batch", str(b), "--size", str(n)]


def tune(args: argparse.Namespace, bank: str, mode: str, work: str) -> str:
    """Step 1: one aoe run in precision ``mode`` on ``bank``; its printout."""
    cmd = [os.path.join(BIN, "aoe"), "--job_type", "1", "--scene", "train", *_model(args)[1], "--threads", "1",
           "--precision_mode", mode, "--compile_budget", str(args.compile_budget), "--rounds",
           str(args.rounds), "--output", work]
    done = subprocess.run(cmd, env={**os.environ, "TUNE_BANK_PATH": bank}, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"aoe failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def train(args: argparse.Namespace, tmp: str, name: str, tuned: str | None, compress: bool = False) -> dict:
    """Step 2: one job on a fresh copy of the ``tuned`` bank (``None``: without
    ``--gdat-aoe-bank``), so that every job tunes its buckets afresh; its step
    (ms), losses and what ``--gdat-aoe-bank`` said."""
    bank = os.path.join(tmp, f"{name}_bank")
    if tuned is not None:
        shutil.copytree(tuned, bank, ignore=shutil.ignore_patterns("gdat"))  # gdat's plans: tuned afresh
    gdat_args = (*(["--gdat-aoe-bank"] if tuned else []), *(["--gdat-compress", "bf16"] if compress else []))
    script, _, batch = _model(args)
    with emulated_network(args.rate) as net:
        found, stderr = launch(net, tmp, name, [os.path.join(HERE, script), *batch], args.steps, 29650, bank, [],
                               gdat_args)
    return {"step_ms": statistics.median(found["step_times_s"][-args.last:]) * 1e3, "losses": found["losses"],
            "loss": statistics.fmean(found["losses"][-5:]),
            "aoe_bank_said": [line for line in stderr.splitlines() if "--gdat-aoe-bank" in line],
            "gdat_done": [line for line in stderr.splitlines() if line.startswith("gdat: done:")]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["lm", "resnet18"], default="lm")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=None, help="tokens per sequence (lm, default 128) or image side "
                   "(resnet18, default 112)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--last", type=int, default=20)
    p.add_argument("--rate", default="2gbit")
    p.add_argument("--rounds", type=int, default=15, help="aoe's measurement rounds (aoe's default)")
    p.add_argument("--compile_budget", type=float, default=180.0, help="aoe's compile budget (s)")
    p.add_argument("--compress", action="store_true", help="a fourth job: the whole bank under gdat-run "
                   "--gdat-compress bf16 (gdat may allreduce the exposed buckets in bf16)")
    p.add_argument("--bank", default=None, help=f"use the banks BANK/{KEEP} (exact) and BANK/{MIXED_BF16} (whole) "
                   "instead of running aoe")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.size is None:
        args.size = 128 if args.model == "lm" else 112
    if args.model == "lm" and args.size > 128:
        p.error("--size above 128 tokens: gpt2_lm, as aoe calls it, has 128 positions")
    with tempfile.TemporaryDirectory(prefix="gdat_aoe_train_") as tmp:
        exact = os.path.join(args.bank, KEEP) if args.bank else os.path.join(tmp, "exact")
        bank = os.path.join(args.bank, MIXED_BF16) if args.bank else os.path.join(tmp, "bank")
        printout = ""
        if not args.bank:
            printout = tune(args, exact, KEEP, os.path.join(tmp, "aoe"))
            shutil.copytree(exact, bank)
            printout += tune(args, bank, MIXED_BF16, os.path.join(tmp, "aoe"))
        print(printout, end="", flush=True)
        jobs = {"without the bank": train(args, tmp, "reference", None),
                "exact-only bank": train(args, tmp, "exact", exact),
                "bank with mixed precision": train(args, tmp, "mixed", bank)}
        if args.compress:
            jobs["mixed precision, --gdat-compress bf16"] = train(args, tmp, "mixed_compress", bank, compress=True)
    ref = jobs["without the bank"]
    bound = BOUND * ref["losses"][0]
    print(f"\n{args.model}, 2 ranks at {args.rate}, batch {args.batch}, size {args.size}, {args.steps} steps; "
          f"step = median of the last {args.last}; loss = mean of the last 5 (bound {bound:.4f} = {BOUND:g} x first "
          f"loss)")
    print(f"{'job':<28} {'step ms':>9} {'ratio':>7} {'loss':>8} {'loss diff':>10}")
    for name, j in jobs.items():
        j["ratio"] = j["step_ms"] / ref["step_ms"]
        j["loss_difference"] = j["loss"] - ref["loss"]
        print(f"{name:<28} {j['step_ms']:>9.1f} {j['ratio']:>7.3f} {j['loss']:>8.4f} {j['loss_difference']:>+10.4f}")
    for name, j in jobs.items():
        for line in j["aoe_bank_said"] + j["gdat_done"]:
            print(f"  {name}: {line}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "aoe": printout, "loss_bound": bound, "jobs": jobs}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
