"""The ``aoe`` command.

``aoe --job_type {1,2,4} --model M [options]``: 1 = SGAT (subgraph tuning),
2 = OPAT (operator tuning), 4 = GDAT (gradient tuning of a training script,
handed to gdat.run: see :mod:`aoe_full.gdat_job`).

Every input is checked before anything is written; a bad one prints one line
``aoe: error: <message>`` on stderr and exits with status 2.  Every other
failure is one line too: Ctrl-C exits 130 (``aoe: interrupted; ...``), an
unexpected error 1 (``aoe: internal error: ...``).  A finished run prints where
each artefact is and ``Aoe process finished``.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import math
import os
import sys
from dataclasses import dataclass
from typing import NoReturn

import torch

from aoe_full.errors import CandidateError
from aoe_full.gdat_job import gdat_command, run_gdat_job
from aoe_full.graph_capture import check_input_names, graphable, trace
from aoe_full.inputs import InputSpec, make_inputs, parse_inputs
from aoe_full.measure import MeasureConfig
from aoe_full.model_source import FRAMEWORKS, ModelSource, load_model, parse_model_spec
from aoe_full.offline import OfflineResult, package_strategy, write_package
from aoe_full.opat import tune_operators
from aoe_full.operators import KINDS, tunable_nodes
from aoe_full.pipeline import SCENES, TuneConfig, TuningRun, set_mode
from aoe_full.precision import KEEP, check_precision_mode
from aoe_full.progress import ProgressBar
from aoe_full.report import result_section, tuning_result
from aoe_full.sgat import tune_subgraphs
from aoe_full.strategies import strategy_names
from aoe_full.tuned_model import header_path, save_tuned
from aoe_full.optimizer_step import (CANDIDATE_NAMES, OPTIMIZER_STEP, OptimizerCheck, implementations_allowed,
                                     tune_optimizer_steps)
from aoe_full.whole_model import (CANDIDATES, COMPILED, WHOLE_MODEL, WholeModelCheck, candidates_for,
                                  measured_words, tune_whole_model)
from gdat import options
from gdat.core.jsonio import read_json
from gdat.errors import GdatError, UsageError
from gdat.report.aoe_file import write_result

__all__ = ["main", "build_parser", "JOB_TYPES"]

JOB_TYPES = {"1": "sgat", "2": "opat", "4": "gdat"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="aoe", description="Operator (OPAT), subgraph (SGAT) and gradient (GDAT) "
                "tuning for PyTorch models, AOE-style.")
    p.add_argument("--model", help="path/to/file.py:factory or model.pt2 (job types 1, 2); "
                   "the training script (job type 4)")
    p.add_argument("--framework", default="pytorch",
                   help=f"{', '.join(FRAMEWORKS)} (the default and only one: ONNX, AOE's 5, "
                   "is refused with the reason)")
    p.add_argument("--input_shape", help='e.g. "x:8,3,64,64" or "x:8,16,64;mask:8,16"')
    p.add_argument("--input_dtype", help='per input, default float32: e.g. "input_ids:int64"')
    p.add_argument("--input_range", help='per input, values in [LOW, HIGH): e.g. '
                   '"input_ids:0,30522" (required for integer inputs)')
    p.add_argument("--job_type", required=True, help="1 = SGAT, 2 = OPAT, 4 = GDAT")
    p.add_argument("--scene", default="infer", help="infer (default) or train")
    p.add_argument("--tune_ops_file", help='JSON {"tune_ops_name": [...], "tune_ops_type": [...]} (OPAT)')
    p.add_argument("--output", default=".", help="work directory for results (default: .)")
    p.add_argument("--candidates", help="comma-separated strategies to try besides the default "
                   f"(default: all that apply): {', '.join(strategy_names())}; whole model in scene train: "
                   f"{', '.join(CANDIDATES)}; the optimizer's step in scene train: {', '.join(CANDIDATE_NAMES)}")
    p.add_argument("--compile_budget", type=float, default=600.0,
                   help="seconds of torch.compile time the run may spend (default 600)")
    p.add_argument("--threads", type=int, help="intra-op threads (torch.set_num_threads)")
    p.add_argument("--precision_mode", default=KEEP,
                   help="must_keep_origin_dtype (default) or allow_mix_precision_bf16 (scene train: a bf16 "
                        "autocast candidate, kept only when a loss check against fp32 passes and it is faster)")
    p.add_argument("--rounds", type=int, default=15, help="measurement rounds (default 15)")
    p.add_argument("--gdat_args", default="",
                   help="job type 4: gdat.run/torchrun options before the script, one string")
    return p


@dataclass
class _TuneJob:
    mode: str
    source: ModelSource
    specs: list[InputSpec]
    inputs: list[torch.Tensor]
    cfg: TuneConfig
    output: str
    model: torch.nn.Module
    capture: str
    built: torch.nn.Module  # the model as the factory built it (``model`` may be its export)
    precision: str


def _tune_ops(path: str | None) -> tuple[frozenset[str] | None, frozenset[str] | None]:
    if path is None:
        return None, None
    try:
        doc = read_json(path, UsageError, max_bytes=1 << 20)
    except UsageError as e:
        raise UsageError(f"--tune_ops_file {e}") from None
    allowed = {"tune_ops_name", "tune_ops_type"}
    if not isinstance(doc, dict) or not doc or set(doc) - allowed:
        raise UsageError(f"--tune_ops_file {path!r} must be an object with tune_ops_name "
                         "and/or tune_ops_type")
    lists = []
    for k in ("tune_ops_name", "tune_ops_type"):
        v = doc.get(k)
        if v is not None and (not isinstance(v, list) or not all(isinstance(x, str) for x in v)):
            raise UsageError(f"--tune_ops_file {path!r}: {k} must be a list of strings")
        lists.append(frozenset(v) if v is not None else None)
    return lists[0], lists[1]


def _check_selection(model: torch.nn.Module, arg_names: list[str], cfg: TuneConfig) -> None:
    graph, _ = trace(model, arg_names)
    nodes = tunable_nodes(graph, model)
    names = {n for n, _, _, _ in nodes} | {p for _, p, _, _ in nodes if p}
    types = set(KINDS) | {t.lower() for _, _, _, t in nodes}
    bad = sorted((cfg.select_names or frozenset()) - names)
    if bad:
        raise UsageError(f"tune_ops_name {', '.join(bad)} not among the model's tunable operators")
    bad = sorted(t for t in (cfg.select_types or frozenset()) if t.lower() not in types)
    if bad:
        raise UsageError(f"tune_ops_type {', '.join(bad)} unknown; kinds are {', '.join(KINDS)}")


def _validate_tuning(args: argparse.Namespace, mode: str, bank: str, repeat: bool) -> _TuneJob:
    if args.gdat_args:
        raise UsageError("--gdat_args is only for --job_type 4")
    if not args.model:
        raise UsageError("--model is required")
    if args.scene not in SCENES:
        raise UsageError(f"unknown --scene {args.scene!r}; expected infer or train")
    if mode == "sgat" and args.tune_ops_file:
        raise UsageError("--tune_ops_file is only for --job_type 2 (OPAT)")
    if not args.input_shape:
        raise UsageError("--input_shape is required for job types 1 and 2")
    if args.threads is not None and not 1 <= args.threads <= 1024:
        raise UsageError(f"--threads must be between 1 and 1024, got {args.threads}")
    precision = check_precision_mode(args.precision_mode, args.scene)
    if not 3 <= args.rounds <= 10000:
        raise UsageError(f"--rounds must be between 3 and 10000, got {args.rounds}")
    if not math.isfinite(args.compile_budget) or args.compile_budget < 0:
        raise UsageError("--compile_budget must be a non-negative number of seconds")
    candidates = None
    if args.candidates is not None:
        candidates = frozenset(c.strip() for c in args.candidates.split(",") if c.strip())
        known = sorted(set(strategy_names()) | set(CANDIDATES) | set(CANDIDATE_NAMES))
        unknown = sorted(candidates - set(known))
        if unknown:
            raise UsageError(f"unknown --candidates {', '.join(unknown)}; known: {', '.join(known)}")
    output = os.path.abspath(args.output)
    if os.path.exists(output) and not os.path.isdir(output):
        raise UsageError(f"--output {args.output!r} exists and is not a directory")
    specs = parse_inputs(args.input_shape, args.input_dtype, args.input_range)
    source = parse_model_spec(args.model, args.framework)
    names, types = _tune_ops(args.tune_ops_file)
    cfg = TuneConfig(scene=args.scene, bank_root=bank, repeat=repeat, candidates=candidates,
                     measure=MeasureConfig(rounds=args.rounds),
                     compile_budget_s=args.compile_budget, select_names=names, select_types=types)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model = load_model(source)
    arg_names = [s.name for s in specs]
    check_input_names(model, arg_names)
    set_mode(model, args.scene)
    inputs = list(make_inputs(specs).values())
    built = model
    model, how = graphable(model, inputs, arg_names)
    _check_selection(model, arg_names, cfg)
    return _TuneJob(mode, source, specs, inputs, cfg, output, model, how, built, precision)


def _offline(job: _TuneJob, run: TuningRun, path: str) -> OfflineResult:
    strategy, reason = package_strategy(run)
    if strategy is None:
        return OfflineResult(None, reason=reason)
    untuned = copy.deepcopy(job.model)
    set_mode(untuned, job.cfg.scene)
    try:
        return write_package(untuned, job.inputs, strategy, path)
    except CandidateError as e:
        return OfflineResult(None, strategy, reason=str(e))


def _run_tuning(job: _TuneJob) -> None:
    options.check_writable_dir(job.output, "--output")
    options.check_writable_dir(job.cfg.bank_root, "knowledge base (TUNE_BANK_PATH)")
    now = datetime.datetime.now()
    stamp = now.strftime("%Y%m%d%H%M%S") + f"{now.microsecond // 1000:03d}"
    name = f"{job.source.name}_{stamp}"
    bar = ProgressBar(1, job.mode.upper())
    tune = tune_operators if job.mode == "opat" else tune_subgraphs
    arg_names = [s.name for s in job.specs]
    run = tune(job.model, job.inputs, arg_names, job.cfg, bar)
    whole, steps = None, []
    if job.cfg.scene == "train":
        allowed = job.cfg.candidates
        if run.compile_spent_s >= job.cfg.compile_budget_s:
            allowed = frozenset(n for n in (allowed or CANDIDATES) if COMPILED not in n)
            print(f"[{job.mode.upper()}] whole model in training: compiled candidates skipped (--compile_budget "
                  f"{job.cfg.compile_budget_s:g} s spent)", file=sys.stderr, flush=True)
        names = candidates_for(job.precision, allowed, job.built)
        if names:
            print(f"[{job.mode.upper()}] whole model in training: checking {', '.join(names)} and timing "
                  f"{job.cfg.measure.rounds} rounds...", file=sys.stderr, flush=True)
        whole = tune_whole_model(job.built, job.inputs, job.precision, job.cfg.bank_root, job.cfg.repeat,
                                   job.cfg.measure, allowed)
        steps = tune_optimizer_steps(
            job.built, job.cfg.bank_root, job.cfg.repeat, job.cfg.measure, implementations_allowed(job.cfg.candidates),
            lambda name: print(f"[{job.mode.upper()}] optimizer step: checking {name}'s implementations and timing "
                               f"{job.cfg.measure.rounds} rounds...", file=sys.stderr, flush=True))
    result_dir = os.path.join(job.output, "aoe_workspace", name, "tunespace", "result")
    tuned_path = os.path.join(result_dir, f"{name}_tune.pt")
    save_tuned(tuned_path, run, job.source, job.capture, job.specs, job.model)
    offline = _offline(job, run, os.path.join(result_dir, f"{name}_tune.pt2"))
    section = result_section(run, tuned_path, offline)
    section["whole_model_train"] = None if whole is None else whole.to_dict()
    section["optimizer_step_train"] = [c.to_dict() for c in steps]
    result = write_result(job.output, job.mode, name, run.tuning_time_s, section)
    _print_summary(job, run, tuned_path, offline, result, whole, steps)


def _print_summary(job: _TuneJob, run: TuningRun, tuned_path: str, offline: OfflineResult,
                   result: str, whole: WholeModelCheck | None, steps: list[OptimizerCheck]) -> None:
    s = run.summary
    what = "operators" if job.mode == "opat" else "subgraphs"
    tag = f"[{job.mode.upper()}]"
    print(f"{tag} {s.total_num} {what}: add {s.repo_add_num}, hit {s.repo_hit_num}, "
          f"reserved {s.repo_reserved_num}, unsatisfied {s.repo_unsatisfied_num}, "
          f"update {s.repo_update_num}; measured {run.measured_items}")
    for config, c in run.configurations.items():
        print(f"{tag} {config}: {c.baseline_ms:.4f} ms untuned, {c.tuned_ms:.4f} ms tuned "
              f"(median ratio {c.ratio:.3f}, {c.comparison.wins}/{c.comparison.rounds} rounds "
              f"faster, error {c.relative_error:.2g} x tolerance)")
    delivered = "untuned model" if run.delivered == "untuned" else f"tuned model ({run.delivered})"
    print(f"{tag} {tuning_result(run)}: {delivered} delivered")
    print(f"tuned model: {tuned_path} (header {os.path.basename(header_path(tuned_path))})")
    print(f"  load with: aoe_full.load_tuned({tuned_path!r}, source={job.source.spec!r})")
    if offline.path is not None:
        print(f"offline model: {offline.path} ({offline.strategy}, compiled in "
              f"{offline.compile_s:.1f} s)")
        print(f"  load with: aoe_full.load_tuned({offline.path!r})")
    elif job.cfg.scene == "infer":
        print(f"offline model: none ({offline.reason})")
    if whole is not None and not whole.accepted and whole.candidates:
        print(f"aoe: whole model in training: no candidate both correct and faster than the model as built "
              f"({measured_words(whole.to_dict())})", file=sys.stderr)
    if whole is not None:
        print(f"{tag} {whole.describe()}; bank: {whole.outcome} "
              f"({os.path.join(job.cfg.bank_root, WHOLE_MODEL)})")
    for c in steps:
        print(f"{tag} {c.describe()}; bank: {c.outcome} ({os.path.join(job.cfg.bank_root, OPTIMIZER_STEP)})")
    print(f"result file: {result}")
    print(f"knowledge base: {os.path.join(job.cfg.bank_root, job.mode)}")
    print("Aoe process finished")


def _split_passthrough(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def _run(argv: list[str]) -> int:
    own, passthrough = _split_passthrough(argv)
    args = build_parser().parse_args(own)
    repeat = options.repeat_tune()
    bank = options.bank_root()
    mode = JOB_TYPES.get(args.job_type)
    if mode is None:
        raise UsageError(f"unknown --job_type {args.job_type!r}; expected 1 (SGAT), "
                         "2 (OPAT) or 4 (GDAT)")
    if mode != "gdat":
        if passthrough:
            raise UsageError("arguments after -- are only for --job_type 4")
        _run_tuning(_validate_tuning(args, mode, bank, repeat))
        return 0
    if args.precision_mode != KEEP:
        raise UsageError("--precision_mode is for --job_type 1 and 2 (--scene train); in a training script, "
                         "mixed precision is the script's torch.autocast")
    if not args.model:
        raise UsageError("--model (the training script) is required")
    command = gdat_command(args.model, args.output, args.gdat_args, passthrough)
    options.check_writable_dir(os.path.abspath(args.output), "--output")
    code = run_gdat_job(command)
    print(f"gdat work path: {os.path.abspath(args.output)}")
    print("Aoe process finished")
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``aoe``; returns the exit status: 0 done, 2 bad input,
    130 interrupted, 1 an unexpected failure (each failure one line on stderr)."""
    try:
        return _run(sys.argv[1:] if argv is None else argv)
    except GdatError as e:
        print(f"aoe: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aoe: interrupted; nothing more was written (bank entries "
              "already recorded are kept)", file=sys.stderr)
        return 130
    except Exception as e:  # the boundary: anything else is one line too
        text = str(e).strip().splitlines()
        print(f"aoe: internal error: {type(e).__name__}: {text[0][:300] if text else ''}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
