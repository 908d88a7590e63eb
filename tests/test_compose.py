"""``--gdat-aoe-bank``: aoe_full's operator bank applied before DDP wraps the model."""
from __future__ import annotations

import json
import os

from tests.helpers import REPO, run_cmd

FACTORY = """
from gdat.demo_models import build_model


def build():
    return build_model("conv", "tiny")
"""


def test_operator_bank_then_gradient_tuning(tmp_path):
    source = tmp_path / "convnet.py"
    source.write_text(FACTORY)
    env = {"TUNE_BANK_PATH": str(tmp_path / "bank"), "PYTHONPATH": REPO}
    aoe = run_cmd(["aoe", "--job_type", "2", "--scene", "train", "--model", f"{source}:build",
                   "--input_shape", "x:4,3,32,32", "--candidates", "channels_last,no_mkldnn",
                   "--rounds", "5", "--output", str(tmp_path / "aoe")], cwd=str(tmp_path), env=env)
    assert aoe.returncode == 0, aoe.stderr[-2000:]
    assert "Aoe process finished" in aoe.stdout + aoe.stderr
    assert os.listdir(tmp_path / "bank" / "opat")
    out = tmp_path / "run.json"
    run = run_cmd(["gdat-run", "--gdat-aoe-bank", "--gdat-work-path", str(tmp_path / "w"), "--gdat-comm-budget-s",
                   "0.3", "--nproc-per-node", "2", "-m", "gdat.demo_train", "--model", "conv", "--size", "tiny",
                   "--batch", "4", "--steps", "35", "--out", str(out)], cwd=str(tmp_path), env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    losses = json.loads(out.read_text())["losses"]
    assert len(losses) == 35 and all(x == x for x in losses)
