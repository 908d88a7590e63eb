"""Entry point of each training process started by ``gdat-run``.

``python -m gdat.worker script PATH ARGS...`` (or ``module NAME ARGS...``) replaces
stock ``torch.nn.parallel.DistributedDataParallel`` with
:class:`gdat.ddp.DistributedDataParallel` and runs the user's script as
``__main__``, with ``sys.argv`` and ``sys.path[0]`` as plain ``python PATH`` would
set them.  The script is not modified: ``DistributedDataParallel(...)`` and
``from torch.nn.parallel import DistributedDataParallel as DDP`` both give gdat's
subclass, which is an instance of stock DDP.
"""
from __future__ import annotations

import ctypes
import functools
import io
import os
import runpy
import signal
import sys
import weakref
from typing import Any

__all__ = ["install", "main"]


def install() -> None:
    """Make ``torch.nn.parallel.DistributedDataParallel`` gdat's subclass (where the
    package, its ``distributed`` module and Dynamo name it,
    :func:`gdat.reducer.torch_internals.substitute_ddp_class`)."""
    from gdat.ddp import DistributedDataParallel
    from gdat.reducer.torch_internals import substitute_ddp_class

    substitute_ddp_class(DistributedDataParallel)


def isolate_restart_store() -> None:
    """Give each elastic restart its own keys in torchelastic's agent store.

    torchrun's agent keeps one TCPStore across restarts, while the ``env://``
    rendezvous assumes a fresh store per attempt (torch 2.13); the failed
    attempt's keys then send gloo's connection setup to dead ports and the
    restarted job fails or hangs.  On a restart (``TORCHELASTIC_RESTART_COUNT`` >
    0, agent store in use) the store the rendezvous creates is wrapped in a
    ``PrefixStore`` named after the attempt
    (:func:`gdat.reducer.torch_internals.per_attempt_store`).
    """
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if attempt != "0":
        from gdat.reducer.torch_internals import per_attempt_store

        per_attempt_store(f"/gdat/attempt_{attempt}")


_open_files: "weakref.WeakSet[io.IOBase]" = weakref.WeakSet()


def track_open_files() -> None:
    """Make ``open()`` (``builtins.open`` and ``io.open``, the same function) remember
    each file it returns, by weak reference, so that :func:`end_process` can flush
    the files a script leaves open without looking at any other object."""
    import builtins

    original = io.open

    @functools.wraps(original)
    def open(*args: Any, **kwargs: Any) -> Any:  # noqa: A001  (replaces the builtin)
        f = original(*args, **kwargs)
        _open_files.add(f)
        return f

    builtins.open = io.open = open


def _flush(f: Any) -> None:
    try:
        if not f.closed:
            f.flush()
    except (OSError, ValueError, AttributeError):
        pass


def end_process(code: int) -> None:
    """End this training process after its script with exit status ``code``.

    It does what the interpreter does at exit, in the same order, while the
    interpreter is still whole, and then skips the interpreter's teardown:

    1. wait for the script's non-daemon threads (and run ``threading``'s own exit
       callbacks, which stop ``concurrent.futures`` workers), as Python does;
    2. run the ``atexit`` handlers (logging's flush, multiprocessing's clean-up, ...);
    3. flush every file ``open()`` returned that is still open, ``sys.stdout``,
       ``sys.stderr`` and C stdio buffers;
    4. ``os._exit(code)``.

    The teardown is skipped because torch 2.13's gloo process groups can abort a
    process that has finished its work during interpreter finalization ("terminate
    called without an active exception": gloo's threads release tensors that need
    the interpreter being torn down; seen here in a few percent of runs under load,
    with stock torchrun too), which would make torchrun report a finished job as
    failed.  No object but the files ``open()`` returned is looked at, so whatever
    the script left alive (weak proxies to dead objects, compiled graphs, threads,
    process groups) cannot make this step fail.
    """
    import atexit
    import threading

    try:
        if threading.current_thread() is threading.main_thread():
            threading._shutdown()  # what Py_FinalizeEx calls first: joins non-daemon threads
        atexit._run_exitfuncs()
        for f in list(_open_files):
            _flush(f)
        for f in (sys.stdout, sys.stderr):
            _flush(f)
        ctypes.CDLL(None).fflush(None)
    finally:
        os._exit(code)


def main(argv: list[str] | None = None) -> None:
    """Run the script.  A :class:`~gdat.errors.GdatError` it raises (bad plan, models
    differing between ranks) ends the process with one line and status 2, Ctrl-C
    with one line (rank 0) and status 130, both through :mod:`gdat.job_end`.  A
    script that finishes, or calls ``sys.exit``, ends through :func:`end_process`
    with its own status, after gdat's done line (:mod:`gdat.report.outcome`)."""
    from gdat import job_end
    from gdat.core import log
    from gdat.errors import GdatError
    from gdat.report import outcome

    argv = sys.argv[1:] if argv is None else argv
    kind, target, *rest = argv
    install()
    isolate_restart_store()
    log.show_warnings_as_lines()
    track_open_files()
    outcome.expect()
    sys.argv = [target, *rest]
    try:
        if kind == "script":
            sys.path[0] = os.path.dirname(os.path.abspath(target))
            runpy.run_path(target, run_name="__main__")
        else:
            runpy.run_module(target, run_name="__main__", alter_sys=True)
    except GdatError as e:
        outcome.silence()
        job_end.report(2, f"gdat: error: {e}")
        end_process(2)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        summary = outcome.interrupted_summary()
        if log.rank() == 0:
            job_end.report(130, f"gdat: {summary}")
        end_process(130)
    except SystemExit as e:
        code = e.code
        if code is not None and not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
        end_process(code or 0)
    except BaseException:
        outcome.script_failed()
        raise
    end_process(0)


if __name__ == "__main__":
    main()
