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

import os
import runpy
import signal
import sys

__all__ = ["install", "main"]


def install() -> None:
    """Make ``torch.nn.parallel.DistributedDataParallel`` gdat's subclass."""
    import torch.nn.parallel
    import torch.nn.parallel.distributed

    from gdat.ddp import DistributedDataParallel

    torch.nn.parallel.DistributedDataParallel = DistributedDataParallel
    torch.nn.parallel.distributed.DistributedDataParallel = DistributedDataParallel


def isolate_restart_store() -> None:
    """Give each elastic restart its own keys in torchelastic's agent store.

    torchrun's agent keeps one TCPStore across restarts, while the ``env://``
    rendezvous assumes a fresh store per attempt (torch 2.13); the failed
    attempt's keys then send gloo's connection setup to dead ports and the
    restarted job fails or hangs.  On a restart (``TORCHELASTIC_RESTART_COUNT`` >
    0, agent store in use) the store the rendezvous creates is wrapped in a
    ``PrefixStore`` named after the attempt.
    """
    import importlib

    import torch.distributed as dist

    rendezvous = importlib.import_module("torch.distributed.rendezvous")  # the name is shadowed by a function

    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if attempt == "0" or not rendezvous._torchelastic_use_agent_store():
        return
    create = rendezvous._create_c10d_store

    def per_attempt(*args, **kwargs):
        return dist.PrefixStore(f"/gdat/attempt_{attempt}", create(*args, **kwargs))

    rendezvous._create_c10d_store = per_attempt


def end_process(code: int) -> None:
    """End this training process after its script: run the ``atexit`` handlers, flush
    every open file, then exit without interpreter teardown.

    torch 2.13's gloo process groups can abort a process that has finished its work
    during C++ teardown at interpreter exit ("terminate called without an active
    exception", seen here in a few percent of runs under load, with stock torchrun
    too), which would make torchrun report a finished job as failed.
    """
    import atexit
    import gc
    import io
    import warnings

    atexit._run_exitfuncs()
    with warnings.catch_warnings():  # isinstance() on some torch objects warns of deprecations
        warnings.simplefilter("ignore")
        files = [obj for obj in gc.get_objects() if isinstance(obj, io.IOBase)]
    for f in files:
        try:
            if not f.closed:
                f.flush()
        except (OSError, ValueError):
            pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> None:
    """Run the script.  A :class:`~gdat.errors.GdatError` it raises (bad plan, models
    differing between ranks) ends the process with one line and status 2, Ctrl-C
    with one line (rank 0) and status 130, both through :mod:`gdat.job_end`.  A
    script that finishes, or calls ``sys.exit``, ends through :func:`end_process`
    with its own status."""
    from gdat import job_end, log
    from gdat.errors import GdatError

    argv = sys.argv[1:] if argv is None else argv
    kind, target, *rest = argv
    install()
    isolate_restart_store()
    log.show_warnings_as_lines()
    sys.argv = [target, *rest]
    try:
        if kind == "script":
            sys.path[0] = os.path.dirname(os.path.abspath(target))
            runpy.run_path(target, run_name="__main__")
        else:
            runpy.run_module(target, run_name="__main__", alter_sys=True)
    except GdatError as e:
        job_end.report(2, f"gdat: error: {e}")
        end_process(2)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if log.rank() == 0:
            job_end.report(130, f"gdat: {log.interrupted_summary()}")
        end_process(130)
    except SystemExit as e:
        code = e.code
        if code is not None and not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
        end_process(code or 0)
    end_process(0)

if __name__ == "__main__":
    main()
