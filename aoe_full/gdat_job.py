"""Job type 4: GDAT, handed to gdat's launcher.

``aoe --job_type 4 --model SCRIPT.py --output DIR [--gdat_args "OPTS"] [-- ARGS...]``
runs, with the same environment (``TUNE_BANK_PATH``, ``REPEAT_TUNE``)::

    python -m gdat.run --gdat-mode tune --gdat-work-path <abs DIR> OPTS <abs SCRIPT.py> ARGS...

``OPTS`` (one shell-quoted string, split with ``shlex``) are further ``--gdat-*``
and torchrun options, e.g. ``--nproc-per-node 2``; ``ARGS`` (everything after
``--``) go to the training script.  The exit status is gdat.run's (``128 + n``
when it was killed by signal ``n``).
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys

from gdat.errors import UsageError

__all__ = ["gdat_command", "run_gdat_job"]

_RESERVED = ("--gdat-mode", "--gdat-work-path")


def gdat_command(script: str, output: str, gdat_args: str, script_args: list[str]) -> list[str]:
    """The gdat.run command line for job type 4 (validates, creates nothing)."""
    if not script.endswith(".py"):
        raise UsageError(f"--job_type 4 expects a training script (.py), got {script!r}")
    if not os.path.isfile(script):
        raise UsageError(f"training script {script!r} does not exist")
    try:
        extra = shlex.split(gdat_args)
    except ValueError as e:
        raise UsageError(f"--gdat_args cannot be split: {e}") from None
    for a in extra:
        if a.split("=", 1)[0] in _RESERVED:
            raise UsageError(f"--gdat_args must not set {a.split('=', 1)[0]}: "
                             "aoe sets it (tune mode, --output)")
    return [sys.executable, "-m", "gdat.run", "--gdat-mode", "tune",
            "--gdat-work-path", os.path.abspath(output), *extra,
            os.path.abspath(script), *script_args]


def run_gdat_job(command: list[str]) -> int:
    """Run the command; its exit status (``128 + n`` for signal ``n``)."""
    code = subprocess.call(command)
    return 128 - code if code < 0 else code
