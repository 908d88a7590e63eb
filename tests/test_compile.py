"""torch.compile under gdat-run: ``torch.compile(ddp)`` (Dynamo's DDPOptimizer) and
a module compiled before DDP wraps it both tune to a verdict and the job exits 0
(real 2-rank gloo jobs; the aot_eager backend exercises the same Dynamo and
DDPOptimizer paths as inductor, without minutes of C++ compilation)."""
from __future__ import annotations

import glob
import json
import math
import os

import pytest

from tests.distributed import free_port
from tests.helpers import REPO, run_cmd

SCRIPT = os.path.join(REPO, "tests", "scripts", "compiled_loop.py")


@pytest.mark.parametrize("where", ["ddp", "module"])
def test_a_compiled_script_tunes_and_exits_with_its_own_status(tmp_path, where):
    # a 2-layer LM of 9 MB in 2 MiB buckets, so that Dynamo's DDPOptimizer splits the graph (it logs
    # the split under ddp_graphs)
    done = run_cmd(["gdat-run", "--nproc-per-node", "2", "--master-port", str(free_port()),
                    "--gdat-comm-budget-s", "0.3", SCRIPT, "--compile", where, "--backend", "aot_eager",
                    "--model", "lm", "--layers", "2", "--dim", "128", "--batch", "2", "--seq", "32",
                    "--bucket-cap-mb", "2", "--out", str(tmp_path / "out.json")],
                   cwd=str(tmp_path), env={"TUNE_BANK_PATH": str(tmp_path / "bank"), "PYTHONPATH": REPO,
                                           "TORCH_LOGS": "ddp_graphs"})
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Traceback" not in done.stderr and "gdat: error" not in done.stderr, done.stderr[-4000:]
    assert "[__ddp_graphs]" in done.stderr, "Dynamo's DDPOptimizer splits the graph under gdat's DDP too"
    reports = glob.glob(str(tmp_path / "gdat_work" / "aoe_result_gdat_*.json"))
    assert len(reports) == 1, done.stderr[-4000:]
    report = json.load(open(reports[0]))["GDAT"]
    assert report["gdat_tuning_result"] in ("tuning successful", "tuning unsatisfied")
    assert report["candidates"], "candidate plans were measured on compiled steps"
    losses = json.load(open(tmp_path / "out.json"))["losses"]
    assert len(losses) == 40 and all(math.isfinite(x) for x in losses)
