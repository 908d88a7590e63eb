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
import sys

__all__ = ["install", "main"]


def install() -> None:
    """Make ``torch.nn.parallel.DistributedDataParallel`` gdat's subclass."""
    import torch.nn.parallel
    import torch.nn.parallel.distributed

    from gdat.ddp import DistributedDataParallel

    torch.nn.parallel.DistributedDataParallel = DistributedDataParallel
    torch.nn.parallel.distributed.DistributedDataParallel = DistributedDataParallel


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    kind, target, *rest = argv
    install()
    sys.argv = [target, *rest]
    if kind == "script":
        sys.path[0] = os.path.dirname(os.path.abspath(target))
        runpy.run_path(target, run_name="__main__")
    else:
        runpy.run_module(target, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
