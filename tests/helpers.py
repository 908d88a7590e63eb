"""Running gdat's commands as a user would."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
GLIBC = platform.libc_ver()[0] == "glibc"  # os.confstr's glibc name is unknown elsewhere


def run_cmd(args: list[str], cwd: str | None = None, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a console script of this environment (``gdat``, ``gdat-run``, ...)."""
    full_env = {**os.environ, **(env or {})}
    exe = os.path.join(BIN, args[0]) if os.path.exists(os.path.join(BIN, args[0])) else args[0]
    return subprocess.run([exe, *args[1:]], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def run_in_process(args: list[str]) -> int:
    """Run ``gdat-run ...`` or ``gdat ...`` in this process (for input errors caught
    before any process starts); returns the exit status."""
    from gdat import cli, run

    if args[0] == "gdat-run":
        return run.main(args[1:])
    if args[0] == "gdat":
        return cli.main(args[1:])
    raise ValueError(f"not a gdat command: {args[0]}")


def error_lines(stderr: str) -> list[str]:
    """stderr lines that are not torch's own launcher chatter."""
    return [line for line in stderr.splitlines() if line.strip()]
