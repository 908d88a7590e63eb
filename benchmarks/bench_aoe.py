"""Benchmark of aoe_full against what a user would pick instead, side by side.

For each model and scene, in one process:

1. OPAT, then SGAT (same fresh knowledge base, so SGAT's ``opat`` candidate can
   use the operator bank), through the same functions the ``aoe`` command runs;
   each delivers a model (tuned, or the untuned one when nothing beat it);
2. the alternatives, each built the way a user would: eager;
   ``torch.compile(model)`` with the default mode and with
   ``max-autotune-no-cudagraphs``; in scene infer the whole model on each
   installed engine (ONNX Runtime, OpenVINO: :mod:`aoe_full.engines`);
3. all of them timed in one set of interleaved rounds (:func:`aoe_full.measure.measure`:
   a step is a forward, plus backward of all outputs in scene train), each
   checked against eager within the tolerances (a candidate outside them is
   reported, not timed).

Prints a Markdown table (median ms per step, ratio to eager, ratio of aoe_full's
delivered model to the fastest alternative, compile and tuning times) and
writes every number as JSON (``--json``).

    python benchmarks/bench_aoe.py --models bert_encoder,gpt2_decoder,resnet18 \\
        --scenes infer,train --json /tmp/aoe_bench.json
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from typing import Any, Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aoe_full import TuneConfig, tune_operators, tune_subgraphs  # noqa: E402
from aoe_full.engines import engine_strategy_wrap, engine_unavailable_reason  # noqa: E402
from aoe_full.graph_capture import graphable  # noqa: E402
from aoe_full.inputs import make_inputs, parse_inputs  # noqa: E402
from aoe_full.measure import MeasureConfig, make_step, measure, relative_error  # noqa: E402
from aoe_full.pipeline import set_mode  # noqa: E402
from aoe_full.real_models import REAL_MODELS  # noqa: E402
from aoe_full.sample_models import small_convnet, small_transformer  # noqa: E402

MODELS: dict[str, tuple[Callable[[], torch.nn.Module], str, str | None, str | None]] = {
    "small_convnet": (small_convnet, "x:8,3,32,32", None, None),
    "small_transformer": (small_transformer, "x:8,32,64", None, None),
    **REAL_MODELS,
}
ALTERNATIVES = ("eager", "compile", "compile_max_autotune", "onnxrt", "openvino")


def _alternatives(model: torch.nn.Module, scene: str) -> dict[str, Any]:
    """name -> callable model (or the reason it is skipped)."""
    out: dict[str, Any] = {"eager": model,
                           "compile": torch.compile(copy.deepcopy(model)),
                           "compile_max_autotune": torch.compile(
                               copy.deepcopy(model), mode="max-autotune-no-cudagraphs")}
    for engine in ("onnxrt", "openvino"):
        reason = engine_unavailable_reason(engine)
        if scene == "train":
            reason = "inference only"
        if reason is None:
            run = engine_strategy_wrap(engine)(lambda m, *a: m(*a), 1, engine)
            twin = copy.deepcopy(model)
            out[engine] = (lambda r, m: lambda *a: r(m, *a))(run, twin)
        else:
            out[engine] = f"skipped: {reason}"
    return out


def _bench(name: str, scene: str, args: argparse.Namespace) -> dict[str, Any]:
    factory, shape, dtype, value_range = MODELS[name]
    specs = parse_inputs(shape, dtype, value_range)
    names = [s.name for s in specs]
    inputs = list(make_inputs(specs).values())
    model = factory()
    set_mode(model, scene)
    row: dict[str, Any] = {"model": name, "scene": scene, "inputs": shape}
    bank = tempfile.mkdtemp(prefix="aoe_bench_bank_")
    cfg = TuneConfig(scene=scene, bank_root=bank, measure=MeasureConfig(rounds=args.rounds),
                     compile_budget_s=args.compile_budget)
    graph_model, how = graphable(model, inputs, names)
    row["capture"] = how
    delivered: dict[str, torch.nn.Module] = {}
    for mode, tune in (("opat", tune_operators), ("sgat", tune_subgraphs)):
        t0 = time.perf_counter()
        run = tune(graph_model, inputs, names, cfg)
        row[mode] = {"tuning_time_s": round(time.perf_counter() - t0, 1),
                     "compile_s": round(run.compile_spent_s, 1), "delivered": run.delivered,
                     "items": run.summary.total_num,
                     "chosen": {i.label: i.strategy for i in run.items if i.strategy != "eager"},
                     "gate": {n: round(c.ratio, 4) for n, c in run.configurations.items()}}
        delivered[f"aoe_{mode}"] = run.tuned
        print(f"{name} {scene} {mode}: {row[mode]}", file=sys.stderr, flush=True)
    candidates = {**_alternatives(model, scene), **delivered}
    steps, status, compile_s = {}, {}, {}
    reference = None
    for cand, fn in candidates.items():
        if isinstance(fn, str):
            status[cand] = fn
            continue
        diff = [p for p in (fn.parameters() if isinstance(fn, torch.nn.Module) else [])
                if p.requires_grad] if scene == "train" else []
        if scene == "train" and not diff:
            diff = [p for p in model.parameters() if p.requires_grad]
        step = make_step(fn, tuple(inputs), {}, diff, scene)
        t0 = time.perf_counter()
        try:
            result = step()
        except Exception as e:  # an alternative that cannot run is reported, not fatal
            status[cand] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
            continue
        compile_s[cand] = round(time.perf_counter() - t0, 1)
        if reference is None:
            reference = result
        err = relative_error(reference, result)
        if err > 1.0:
            status[cand] = f"not equivalent ({err:.3g} x tolerance)"
            continue
        steps[cand] = step
        status[cand] = "ok"
    timings = measure(steps, "eager", MeasureConfig(rounds=args.rounds))
    row["status"] = status
    row["first_call_s"] = compile_s
    row["median_ms"] = {c: round(t.median_ms, 3) for c, t in timings.items()}
    eager = timings["eager"].samples_ms
    row["ratio_to_eager"] = {c: round(_median_ratio(t.samples_ms, eager), 3)
                             for c, t in timings.items()}
    alts = [c for c in ALTERNATIVES if c in timings]
    for mode in ("aoe_opat", "aoe_sgat"):
        if mode in timings:
            ratios = {a: _median_ratio(timings[mode].samples_ms, timings[a].samples_ms) for a in alts}
            fastest = min(alts, key=lambda a: timings[a].median_ms)
            row[f"{mode}_vs_fastest"] = {"fastest": fastest, "ratio": round(ratios[fastest], 3)}
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def _median_ratio(a: list[float], b: list[float]) -> float:
    r = sorted(x / y for x, y in zip(a, b))
    n = len(r)
    return r[n // 2] if n % 2 else (r[n // 2 - 1] + r[n // 2]) / 2


def _table(rows: list[dict[str, Any]]) -> str:
    cols = list(ALTERNATIVES) + ["aoe_opat", "aoe_sgat"]
    out = ["| model | scene | " + " | ".join(cols) + " | SGAT / fastest alt. | OPAT / fastest alt. "
           "| SGAT delivered | tuning s (OPAT, SGAT) |",
           "|---|---|" + "---|" * (len(cols) + 4)]
    for r in rows:
        cells = []
        for c in cols:
            if c in r["median_ms"]:
                cells.append(f"{r['median_ms'][c]:.2f} ({r['ratio_to_eager'][c]:.2f}x)")
            else:
                cells.append("-")
        sg, op = r.get("aoe_sgat_vs_fastest"), r.get("aoe_opat_vs_fastest")
        out.append(f"| {r['model']} | {r['scene']} | " + " | ".join(cells)
                   + f" | {sg['ratio']:.3f} ({sg['fastest']}) | {op['ratio']:.3f} ({op['fastest']}) "
                   f"| {r['sgat']['delivered']} | {r['opat']['tuning_time_s']}, "
                   f"{r['sgat']['tuning_time_s']} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile-budget", type=float, default=600.0, help="seconds per tuning run")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--models", default="bert_encoder,gpt2_decoder,resnet18")
    ap.add_argument("--scenes", default="infer,train")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    rows = []
    t0 = time.perf_counter()
    for name in args.models.split(","):
        for scene in args.scenes.split(","):
            rows.append(_bench(name, scene, args))
            if args.json:
                with open(args.json, "w", encoding="utf-8") as f:
                    json.dump({"rows": rows}, f, indent=1)
    env = {"torch": torch.__version__, "threads": args.threads, "cpus": os.cpu_count(),
           "machine": platform.processor() or platform.machine(),
           "total_s": round(time.perf_counter() - t0, 1)}
    print(f"torch {env['torch']}, {env['threads']} thread(s), {env['cpus']} CPUs, "
          f"total {env['total_s']} s; median ms per step (ratio to eager)\n")
    print(_table(rows))
    print("\nstatus and first-call (compile) seconds:")
    for r in rows:
        print(f"- {r['model']} {r['scene']}: " + ", ".join(
            f"{c} {s}" + (f" {r['first_call_s'][c]} s" if c in r["first_call_s"] else "")
            for c, s in r["status"].items()))
        for mode in ("opat", "sgat"):
            print(f"  - {mode.upper()}: delivered {r[mode]['delivered']}, gate ratios "
                  f"{r[mode]['gate']}, chosen {r[mode]['chosen']}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"env": env, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
