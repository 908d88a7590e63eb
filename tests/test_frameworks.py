"""gdat where DDP users train: the real HF Trainer, accelerate and Lightning.

Each framework script (``tests/scripts``, unmodified, no gdat in it) runs once
under ``gdat-run`` with 2 gloo ranks on CPU, and once under plain ``torchrun``
with stock DDP built with the plan gdat finally chose (its report's
``bucket_cap_mb_list``).  From those two jobs every test below checks one thing:
the job finished, gdat's DDP was the one the framework built, it tuned to a
verdict, and training equals stock DDP's (losses and final parameters).
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import sys
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from tests.distributed import free_port
from tests.helpers import REPO, run_cmd

SCRIPTS = os.path.join(REPO, "tests", "scripts")
STEPS = 32  # gdat's default schedule decides at step 28; the rest runs the chosen plan
FRAMEWORKS = {
    "hf_trainer": "hf_trainer.py",        # find_unused_parameters=True, clipping, accumulation 2 (no_sync)
    "accelerate": "accelerate_loop.py",
    "lightning": "lightning_ddp.py",      # Trainer(strategy="ddp", accelerator="cpu", devices=2)
}


@dataclass
class Jobs:
    gdat: Any
    stock: Any
    report: dict[str, Any] | None
    gdat_result: dict[str, Any]
    stock_result: dict[str, Any]
    gdat_params: dict[str, torch.Tensor]
    stock_params: dict[str, torch.Tensor]


def _torchrun(tool: str, *args: str, cwd: str, env: dict[str, str]) -> Any:
    return run_cmd([tool, "--nproc-per-node", "2", "--master-port", str(free_port()), *args], cwd=cwd, env=env,
                   timeout=420)


def _load(out: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    with open(os.path.join(out, "result.json")) as f:
        result = json.load(f)
    return result, torch.load(os.path.join(out, "params.pt"))


_ran: dict[str, Jobs] = {}


def _jobs(name: str, tmp_path_factory) -> Jobs:
    """The two jobs of framework ``name``, run once for the whole module."""
    if name not in _ran:
        _ran[name] = _run_jobs(name, tmp_path_factory.mktemp(name))
    return _ran[name]


def _run_jobs(name: str, root) -> Jobs:
    script = os.path.join(SCRIPTS, FRAMEWORKS[name])
    env = {"TUNE_BANK_PATH": str(root / "bank"), "PYTHONPATH": REPO, "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    gdat_out, stock_out = root / "gdat", root / "stock"
    gdat_out.mkdir()
    stock_out.mkdir()
    gdat = _torchrun("gdat-run", "--gdat-comm-budget-s", "0.3", script, "--out", str(gdat_out), "--steps", str(STEPS),
                     cwd=str(gdat_out), env=env)
    assert gdat.returncode == 0, gdat.stderr[-4000:]
    reports = glob.glob(str(gdat_out / "gdat_work" / "aoe_result_gdat_*.json"))
    report = json.load(open(reports[0]))["GDAT"] if len(reports) == 1 else None
    caps = "default"
    if report is not None:
        caps = ",".join(repr(c) for c in report["chosen_plan"]["bucket_cap_mb_list"])
    stock = _torchrun(shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun",
                      os.path.join(SCRIPTS, "stock_ddp_caps.py"), caps, script, "--out", str(stock_out),
                      "--steps", str(STEPS), cwd=str(stock_out), env=env)
    assert stock.returncode == 0, stock.stderr[-4000:]
    (g_res, g_par), (s_res, s_par) = _load(str(gdat_out)), _load(str(stock_out))
    return Jobs(gdat, stock, report, g_res, s_res, g_par, s_par)


@pytest.fixture(params=list(FRAMEWORKS))
def jobs(request, tmp_path_factory) -> Jobs:
    return _jobs(request.param, tmp_path_factory)


def test_the_framework_built_gdats_ddp_and_the_job_finished(jobs):
    assert jobs.gdat_result["ddp"] == jobs.stock_result["ddp"] == "DistributedDataParallel"
    assert "gdat: error" not in jobs.gdat.stderr and "Traceback" not in jobs.gdat.stderr


def test_training_equals_stock_ddp_with_the_chosen_plan(jobs):
    assert len(jobs.gdat_result["losses"]) == len(jobs.stock_result["losses"]) > 0
    assert jobs.gdat_result["losses"] == pytest.approx(jobs.stock_result["losses"], rel=1e-6)
    assert list(jobs.gdat_params) == list(jobs.stock_params)
    for key, value in jobs.stock_params.items():
        torch.testing.assert_close(jobs.gdat_params[key], value, rtol=1e-6, atol=1e-7, msg=key)


def _tuned(jobs: Jobs) -> None:
    assert jobs.report is not None, "one report in the work path"
    assert jobs.report["gdat_tuning_result"] in ("tuning successful", "tuning unsatisfied")
    assert jobs.report["candidates"], "candidate plans were measured"
    assert "gdat: tune: baseline" in jobs.gdat.stderr


@pytest.mark.parametrize("jobs", ["accelerate", "lightning"], indirect=True)
def test_tunes_to_a_verdict(jobs):
    _tuned(jobs)


@pytest.mark.parametrize("jobs", ["hf_trainer"], indirect=True)
def test_hf_trainer_default_tunes_to_a_verdict(jobs):
    assert jobs.gdat_result["find_unused_parameters"] is True
    _tuned(jobs)
    # its GPT-2 uses every parameter: gdat says what find_unused_parameters=True costs, measured
    assert "find_unused_parameters=True found no unused parameter" in jobs.gdat.stderr
    cost = jobs.report["find_unused_parameters_cost"]
    assert cost["graph_search_ms"] > 0 and cost["per_step_ms"] >= cost["graph_search_ms"]
