"""The end of a training process under gdat-run: the script's own exit status,
whatever the script left alive, and never a teardown abort (real processes)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.helpers import REPO

SCRIPT = os.path.join(REPO, "tests", "scripts", "exit_leftovers.py")


def _run(tmp_path, status: str, worker: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "TUNE_BANK_PATH": str(tmp_path / "bank"), "GDAT_WORK_PATH": str(tmp_path / "work"),
           "GDAT_COMM_BUDGET_S": "0.1", "PYTHONPATH": REPO}
    head = [sys.executable, "-m", "gdat.worker", "script"] if worker else [sys.executable]
    return subprocess.run([*head, SCRIPT, str(tmp_path), status], env=env, capture_output=True, text=True,
                          timeout=240)


@pytest.mark.parametrize("status, expected", [("none", 0), ("3", 3)])
def test_the_worker_ends_with_the_scripts_status_whatever_it_left_alive(tmp_path, status, expected):
    done = _run(tmp_path, status)
    assert done.returncode == expected, done.stderr[-3000:]
    assert "script done" in done.stdout
    assert "Traceback" not in done.stderr and "ReferenceError" not in done.stderr, done.stderr[-3000:]
    assert (tmp_path / "log.txt").read_text() == "left open, never flushed\n"
    assert (tmp_path / "thread.txt").read_text() == "only a thread holds me\n"
    assert (tmp_path / "late.txt").exists(), "non-daemon threads finish, as under plain python"


def test_plain_python_aborts_in_teardown_on_the_same_script(tmp_path):
    """The abort the worker avoids is real: plain interpreter teardown hits it."""
    done = _run(tmp_path, "none", worker=False)
    assert done.returncode == -signal.SIGABRT, (done.returncode, done.stderr[-3000:])
    assert "script done" in done.stdout
