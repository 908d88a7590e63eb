"""The ``aoe`` command.

``aoe --job_type {1,2,4} --model M [options]``: 1 = SGAT (subgraph tuning),
2 = OPAT (operator tuning), 4 = GDAT (gradient tuning of a training script,
handed to gdat.run: see :mod:`aoe_full.gdat_job`).

Every input is checked before anything is written; a bad one prints one line
``aoe: error: <message>`` on stderr and exits with status 2.  A finished run
prints where each artefact is and ``Aoe process finished``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
from dataclasses import dataclass
from typing import NoReturn

import torch

from aoe_full.gdat_job import gdat_command, run_gdat_job
from aoe_full.graph_capture import check_input_names, trace
from aoe_full.inputs import make_inputs, parse_input_shape
from aoe_full.measure import MeasureConfig
from aoe_full.model_source import FRAMEWORKS, ModelSource, load_model, parse_model_spec
from aoe_full.operators import KINDS, tunable_nodes
from aoe_full.opat import tune_operators
from aoe_full.pipeline import SCENES, TuneConfig, set_mode
from aoe_full.progress import ProgressBar
from aoe_full.report import result_section, tuning_result
from aoe_full.sgat import tune_subgraphs
from aoe_full.strategies import strategy_names
from aoe_full.tuned_model import save_tuned
from gdat import settings
from gdat.aoe_result import write_result
from gdat.errors import GdatError, UsageError

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
                   help=f"one of {', '.join(FRAMEWORKS)} (5 = ONNX, needs onnx2torch); default pytorch")
    p.add_argument("--input_shape", help='e.g. "x:8,3,64,64" or "x:8,16,64;mask:8,16"')
    p.add_argument("--job_type", required=True, help="1 = SGAT, 2 = OPAT, 4 = GDAT")
    p.add_argument("--scene", default="infer", help="infer (default) or train")
    p.add_argument("--tune_ops_file", help='JSON {"tune_ops_name": [...], "tune_ops_type": [...]} (OPAT)')
    p.add_argument("--output", default=".", help="work directory for results (default: .)")
    p.add_argument("--candidates", help="comma-separated strategies to try besides the default "
                   f"(default: all that apply): {', '.join(strategy_names())}")
    p.add_argument("--compile_budget", type=float, default=600.0,
                   help="seconds of torch.compile time the run may spend (default 600)")
    p.add_argument("--threads", type=int, help="intra-op threads (torch.set_num_threads)")
    p.add_argument("--rounds", type=int, default=15, help="measurement rounds (default 15)")
    p.add_argument("--gdat_args", default="",
                   help="job type 4: gdat.run/torchrun options before the script, one string")
    return p


@dataclass
class _TuneJob:
    mode: str
    source: ModelSource
    shapes: dict[str, tuple[int, ...]]
    cfg: TuneConfig
    output: str
    model: torch.nn.Module


def _tune_ops(path: str | None) -> tuple[frozenset[str] | None, frozenset[str] | None]:
    if path is None:
        return None, None
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as e:
        raise UsageError(f"--tune_ops_file {path!r} cannot be read: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"--tune_ops_file {path!r} is not JSON ({e.msg} at line {e.lineno})") from None
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
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    if args.rounds < 3:
        raise UsageError(f"--rounds must be at least 3, got {args.rounds}")
    if not math.isfinite(args.compile_budget) or args.compile_budget < 0:
        raise UsageError("--compile_budget must be a non-negative number of seconds")
    candidates = None
    if args.candidates is not None:
        candidates = frozenset(c.strip() for c in args.candidates.split(",") if c.strip())
        unknown = sorted(candidates - set(strategy_names()))
        if unknown:
            raise UsageError(f"unknown --candidates {', '.join(unknown)}; "
                             f"known: {', '.join(strategy_names())}")
    output = os.path.abspath(args.output)
    if os.path.exists(output) and not os.path.isdir(output):
        raise UsageError(f"--output {args.output!r} exists and is not a directory")
    source = parse_model_spec(args.model, args.framework)
    shapes = parse_input_shape(args.input_shape)
    names, types = _tune_ops(args.tune_ops_file)
    cfg = TuneConfig(scene=args.scene, bank_root=bank, repeat=repeat, candidates=candidates,
                     measure=MeasureConfig(rounds=args.rounds),
                     compile_budget_s=args.compile_budget, select_names=names, select_types=types)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model = load_model(source)
    check_input_names(model, list(shapes))
    set_mode(model, args.scene)
    _check_selection(model, list(shapes), cfg)
    return _TuneJob(mode, source, shapes, cfg, output, model)


def _run_tuning(job: _TuneJob) -> None:
    settings.check_writable_dir(job.output, "--output")
    settings.check_writable_dir(job.cfg.bank_root, "knowledge base (TUNE_BANK_PATH)")
    now = datetime.datetime.now()
    stamp = now.strftime("%Y%m%d%H%M%S") + f"{now.microsecond // 1000:03d}"
    name = f"{job.source.name}_{stamp}"
    inputs = list(make_inputs(job.shapes).values())
    bar = ProgressBar(1, job.mode.upper())
    tune = tune_operators if job.mode == "opat" else tune_subgraphs
    run = tune(job.model, inputs, list(job.shapes), job.cfg, bar)
    tuned_path = os.path.join(job.output, "aoe_workspace", name, "tunespace", "result",
                              f"{name}_tune.pt")
    save_tuned(tuned_path, run, job.source, job.shapes, job.model)
    result = write_result(job.output, job.mode, name, run.tuning_time_s,
                          result_section(run, tuned_path))
    s = run.summary
    what = "operators" if job.mode == "opat" else "subgraphs"
    tag = f"[{job.mode.upper()}]"
    print(f"{tag} {s.total_num} {what}: add {s.repo_add_num}, hit {s.repo_hit_num}, "
          f"reserved {s.repo_reserved_num}, unsatisfied {s.repo_unsatisfied_num}, "
          f"update {s.repo_update_num}; measured {run.measured_items}")
    c = run.comparison
    if c is not None:
        kept = "tuned model delivered" if run.improved else "untuned model delivered"
        print(f"{tag} model {c.baseline_ms:.4f} ms untuned, {c.tuned_ms:.4f} ms with "
              f"{len(run.candidate_choices.ops) + len(run.candidate_choices.subgraphs)} choices "
              f"(median ratio {c.ratio:.3f}, {c.comparison.wins}/{c.comparison.rounds} rounds "
              f"faster): {tuning_result(run)}, {kept}")
        if c.relative_error > 1.0:
            print(f"{tag} warning: the tuned model differs from the untuned one by "
                  f"{c.relative_error:.3g} x the tolerance", file=sys.stderr)
    print(f"tuned model: {tuned_path}")
    print(f"  load with: aoe_full.load_tuned({tuned_path!r})")
    print(f"result file: {result}")
    print(f"knowledge base: {os.path.join(job.cfg.bank_root, job.mode)}")
    print("Aoe process finished")


def _split_passthrough(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``aoe``; returns the exit status."""
    own, passthrough = _split_passthrough(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(own)
        repeat = settings.repeat_tune()
        bank = settings.bank_root()
        mode = JOB_TYPES.get(args.job_type)
        if mode is None:
            raise UsageError(f"unknown --job_type {args.job_type!r}; expected 1 (SGAT), "
                             "2 (OPAT) or 4 (GDAT)")
        if mode == "gdat":
            if not args.model:
                raise UsageError("--model (the training script) is required")
            command = gdat_command(args.model, args.output, args.gdat_args, passthrough)
            settings.check_writable_dir(os.path.abspath(args.output), "--output")
        else:
            if passthrough:
                raise UsageError("arguments after -- are only for --job_type 4")
            job = _validate_tuning(args, mode, bank, repeat)
            _run_tuning(job)
            return 0
    except GdatError as e:
        print(f"aoe: error: {e}", file=sys.stderr)
        return 2
    code = run_gdat_job(command)
    print(f"gdat work path: {os.path.abspath(args.output)}")
    print("Aoe process finished")
    return code


if __name__ == "__main__":
    sys.exit(main())
