"""gdat on a torch release other than the pinned one: the compatibility pass.

``./run.sh test`` runs this file, with ``tests/test_torch_ddp_suite.py`` (PyTorch's
own DDP tests with gdat's DDP) and ``tests/test_plan.py`` (DDP's bucketing rule, the
plans it forms and a live switch keeping gradients exact), in one venv per release
of ``COMPAT_TORCH`` in ``run.sh``: the oldest release gdat tunes with and the newest
installable one.  Here: one tuned ``gdat-run`` job in a 2 Gbit/s testbed, then a
launch that hits its knowledge-base entry.
"""
from __future__ import annotations

import glob
import json
import os

import pytest
import torch

from gdat.bank.store import KnowledgeBase
from gdat.reducer.torch_internals import missing_internals
from launch.testbed import namespace_unavailable_reason
from tests.distributed import free_port
from tests.helpers import BIN, REPO, run_cmd

RELEASE = os.environ.get("GDAT_COMPAT_TORCH", "")  # set by run.sh (tests/conftest.py collects this file then)
UNAVAILABLE = namespace_unavailable_reason()
TRAIN = ["-m", "gdat.demo.train", "--model", "transformer", "--size", "tiny", "--batch", "8", "--steps", "40"]


def test_this_venv_runs_the_release_under_test_and_gdat_has_what_tuning_needs():
    assert torch.__version__.split("+")[0] == RELEASE
    assert missing_internals() == []


def _launch(tmp, name):
    cmd = ["gdat-testbed", "--rate", "2gbit", "--", os.path.join(BIN, "gdat-run"), "--gdat-work-path",
           str(tmp / name), "--nproc-per-node", "2", "--master-port", str(free_port()), *TRAIN,
           "--out", str(tmp / f"{name}.json")]
    done = run_cmd(cmd, cwd=REPO, env={"TUNE_BANK_PATH": str(tmp / "bank")})
    assert done.returncode == 0, done.stderr[-4000:]
    reports = sorted(glob.glob(str(tmp / name / "aoe_result_gdat_*.json")))
    last = [line for line in done.stderr.splitlines() if line.startswith("gdat: ")][-1]
    return json.loads(open(reports[-1]).read())["GDAT"], last, done.stderr


@pytest.mark.skipif(UNAVAILABLE is not None, reason=f"testbed unavailable: {UNAVAILABLE}")
def test_a_tuned_job_and_the_launch_after_it_hits_the_bank(tmp_path):
    tuned, last, stderr = _launch(tmp_path, "tuned")
    assert tuned["gdat_tuning_result"] in ("tuning successful", "tuning unsatisfied"), stderr[-3000:]
    assert tuned["candidates"] and last.startswith("gdat: done: tuned (")
    doc = json.loads(open(tuned["knowledge_base_entry"]).read())
    assert doc["key"]["torch"] == torch.__version__
    # the entry as a settled decision (this short job's evidence may still be inconclusive,
    # which the next launch would resume rather than hit)
    KnowledgeBase(str(tmp_path / "bank"), "gdat").put(doc["key"], {**doc["payload"], "confident": True})
    hit, last, stderr = _launch(tmp_path, "hit")
    assert hit["gdat_tuning_result"] == "bank hit" and hit["tuning_steps"] == 0, stderr[-3000:]
    assert last.startswith("gdat: done: applied the knowledge base's plan")
