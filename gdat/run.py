"""``gdat-run``: torchrun with gdat's gradient tuning for an unmodified script.

``gdat-run [--gdat-* options] [torchrun options] SCRIPT [script args]`` accepts
every torchrun option unchanged (it is torchrun's own parser, extended with the
``--gdat-*`` options of :mod:`gdat.options`) and starts the job with torchrun's own
``run()``: rendezvous, process management, restarts and multi-node work exactly as
with torchrun.  Each process runs :mod:`gdat.worker`, which substitutes gdat's DDP
and runs the script.  Options are validated before anything starts: a bad value
prints one line and exits with status 2.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys

from gdat import job_end
from gdat.errors import GdatError, UsageError
from gdat.options import (
    GdatConfig,
    add_arguments,
    bank_root,
    check_usable_dir,
    check_writable_dir,
    config_from_args,
    repeat_tune,
)

__all__ = ["main", "build_parser", "prepare_job", "fresh_store_per_round"]


def build_parser(prog: str = "gdat-run") -> argparse.ArgumentParser:
    """torchrun's parser plus the ``--gdat-*`` options."""
    from torch.distributed.run import get_args_parser

    parser = get_args_parser()
    parser.prog = prog
    parser.description = ("Launch an unmodified DDP training script like torchrun, tuning its "
                          "gradient buckets online. All torchrun options are accepted.")
    add_arguments(parser.add_argument_group("gdat"))
    return parser


def _check_target(args: argparse.Namespace) -> tuple[str, str]:
    if args.no_python:
        raise UsageError("--no-python is not supported: gdat-run needs a Python training script")
    target = args.training_script
    if args.module:
        sys.path.insert(0, os.getcwd())
        try:
            found = importlib.util.find_spec(target) is not None
        except (ImportError, ValueError):
            found = False
        finally:
            sys.path.pop(0)
        if not found:
            raise UsageError(f"training module {target!r} cannot be found")
        return "module", target
    if not os.path.isfile(target):
        raise UsageError(f"training script {target!r} does not exist")
    return "script", target


def prepare_job(
    argv: list[str], prog: str = "gdat-run", mode: str | None = None
) -> tuple[argparse.Namespace, GdatConfig]:
    """Parse and validate ``argv``; returns torchrun's args (pointing at the worker)
    and the configuration (``mode``, when given, overrides ``--gdat-mode``).
    Raises :class:`UsageError` on bad input."""
    args = build_parser(prog).parse_args(argv)
    if mode is not None:
        args.mode = mode
    config = config_from_args(args)
    kind, target = _check_target(args)
    config = GdatConfig(**{**config.__dict__, "work_path": os.path.abspath(config.work_path),
                           "plan": os.path.abspath(config.plan) if config.plan else ""})
    if config.plan:
        from gdat.core.plan import BucketPlan

        BucketPlan.load(config.plan)
    writes = [(config.work_path, "work path (--gdat-work-path)")] if config.mode != "off" else []
    if config.mode in ("tune", "apply"):
        repeat_tune()
        check_usable_dir(bank_root(), "knowledge base (TUNE_BANK_PATH)", writable=config.mode == "tune")
        if config.mode == "tune":
            writes.append((bank_root(), "knowledge base (TUNE_BANK_PATH)"))
    for path, what in writes:
        check_usable_dir(path, what)
    for path, what in writes:
        check_writable_dir(path, what)
    args.training_script_args = [kind, target, *args.training_script_args]
    args.training_script = "gdat.worker"
    args.module = True
    return args, config


def fresh_store_per_round(args: argparse.Namespace) -> None:
    """Under the c10d rendezvous, give every rendezvous round a fresh worker store.

    torchrun 2.13 shares the rendezvous TCPStore with the workers.  When one node's
    ranks die, that node's agent restarts with ``TORCHELASTIC_RESTART_COUNT`` 1
    while the healthy nodes restart theirs as a membership change with count 0, so
    no per-attempt key prefix can agree across nodes, and the failed attempt's keys
    send gloo to dead ports (the restarted job hangs).  torch's own opt-out,
    ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``, makes rank 0's node serve a new store
    on a free port each round; a value the user set is kept.
    """
    if args.rdzv_backend == "c10d" or args.standalone:
        os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")


def main(argv: list[str] | None = None, prog: str = "gdat-run", mode: str | None = None) -> int:
    """Run a job; returns the exit status (2 for bad input, 1 if a worker failed)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        args, config = prepare_job(argv, prog, mode)
    except GdatError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    os.environ.update(config.to_env())
    os.environ["GDAT_SCRIPT"] = args.training_script_args[1]
    if config.launcher == "mpi":
        from gdat.mpi_launch import run_under_mpi

        try:
            return run_under_mpi(args)
        except GdatError as e:
            print(f"{prog}: error: {e}", file=sys.stderr)
            return 2
    return _run_torchrun(args, prog)


def _run_torchrun(args: argparse.Namespace, prog: str) -> int:
    """torchrun's ``run()``; a job that ends through :mod:`gdat.job_end` (bad input,
    Ctrl-C) ends with its one line and status, any other failure as torchrun reports it."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import run

    fresh_store_per_round(args)

    with job_end.end_directory() as directory:
        try:
            run(args)
        except ChildFailedError as e:
            ended = job_end.collect(directory)
            if ended is None:
                print(str(e), file=sys.stderr)
                return 1
            print(ended.message, file=sys.stderr)
            return ended.status
        except (SignalException, KeyboardInterrupt) as e:
            ended = job_end.collect(directory)
            signum = getattr(e, "sigval", signal.SIGINT)
            print(ended.message if ended is not None else
                  f"{prog}: interrupted by {signal.Signals(signum).name}", file=sys.stderr)
            return 128 + int(signum)
    return 0

if __name__ == "__main__":
    sys.exit(main())
