"""PyTorch's own DDP tests (shipped in the torch wheel) pass with gdat's DDP
substituted: the gloo/CPU subset, run by ``tests/torch_ddp_suite.py`` the way
PyTorch's ``test_distributed_spawn.py`` runs it (real gloo ranks, one process each)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO
from tests.torch_ddp_suite import CPU_DDP_TESTS

_outcomes: dict[str, str] = {}


def _run_suite(tmp_path_factory) -> dict[str, str]:
    """Run every test of the subset once (one runner process) and keep the outcomes."""
    if not _outcomes:
        work = tmp_path_factory.mktemp("torch_suite")
        env = {**os.environ, "PYTHONPATH": REPO, "GDAT_TORCH_SUITE_DIR": str(work)}
        env.pop("GDAT_MODE", None)  # gdat's default mode: tune
        done = subprocess.run([sys.executable, "-m", "tests.torch_ddp_suite"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=600)
        for line in done.stdout.splitlines():
            if line.startswith("RESULT "):
                _, name, outcome = line.split()
                _outcomes[name] = outcome
        _outcomes["__stderr__"] = done.stderr[-6000:]
    return _outcomes


@pytest.mark.parametrize("name", CPU_DDP_TESTS)
def test_pytorch_ddp_test_passes_with_gdats_ddp(name, tmp_path_factory):
    outcomes = _run_suite(tmp_path_factory)
    assert outcomes.get(name) == "passed", f"{name}: {outcomes.get(name)}\n{outcomes['__stderr__']}"
