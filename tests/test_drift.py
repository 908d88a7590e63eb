"""The link slows mid-run (the testbed's tbf rate changed from 2 Gbit/s to 500 Mbit/s
at step 45 of 110): the drift watch notices, measures the link again, re-tunes for the
new link class from the kept profile and banks an entry for it, and the job trains
exactly like stock DDP (real 2-rank jobs in a network namespace)."""
from __future__ import annotations

import glob
import json
import os
import sys

import pytest

from launch.testbed import namespace_unavailable_reason
from tests.distributed import free_port
from tests.helpers import BIN, REPO, run_cmd

UNAVAILABLE = namespace_unavailable_reason()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"testbed unavailable: {UNAVAILABLE}")

SCRIPT = os.path.join(REPO, "tests", "scripts", "train_faults.py")
STEPS = 110
ARGS = [SCRIPT, "--steps", str(STEPS), "--width", "256"]


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("drift")
    env = {"TUNE_BANK_PATH": str(tmp / "bank")}
    gdat = run_cmd(["gdat-testbed", "--rate", "2gbit", "--", os.path.join(BIN, "gdat-run"), "--gdat-work-path",
                    str(tmp / "work"), "--nproc-per-node", "2", "--master-port", str(free_port()), *ARGS,
                    "--link-rate", "45:500mbit", "--out", str(tmp / "gdat.json")], cwd=str(tmp), env=env)
    # the same training on an unshaped loopback: what stock DDP computes does not depend on the link
    stock = run_cmd([sys.executable, "-m", "torch.distributed.run",
                     "--nproc-per-node", "2", "--master-port", str(free_port()), *ARGS, "--out", str(tmp / "stock.json")],
                    cwd=str(tmp), env=env)
    reports = [json.loads(open(p).read())["GDAT"] for p in sorted(glob.glob(str(tmp / "work" / "aoe_result_gdat_*.json")))]
    entries = [json.loads(open(p).read()) for p in glob.glob(str(tmp / "bank" / "gdat" / "*.json"))]
    return gdat, stock, reports, entries, tmp


def test_a_link_slowing_mid_run_is_noticed_and_tuned_for(jobs):
    gdat, _, reports, entries, _ = jobs
    assert gdat.returncode == 0, gdat.stderr[-4000:]
    drift = [line for line in gdat.stderr.splitlines() if line.startswith("gdat: warning: drift:")]
    assert drift and "re-tuning for the new rate" in drift[0], gdat.stderr[-4000:]
    assert len(reports) == 2, "one decision at each rate"
    classes = {e["key"]["link_class"] for e in entries}
    assert len(classes) == 2 and max(classes) - min(classes) >= 1, "the bank gains an entry for the new class"
    rates = sorted(e["payload"]["bandwidth_bytes_per_s"] for e in entries)
    assert rates[1] / rates[0] > 2


def test_the_job_trains_exactly_like_stock_ddp_through_the_re_tune(jobs):
    gdat, stock, _, _, tmp = jobs
    assert stock.returncode == 0, stock.stderr[-3000:]
    a, b = json.loads((tmp / "gdat.json").read_text()), json.loads((tmp / "stock.json").read_text())
    assert len(a["losses"]) == len(b["losses"]) == STEPS
    assert a["losses"] == pytest.approx(b["losses"], rel=1e-6)
    assert a["checksum"] == pytest.approx(b["checksum"], rel=1e-6, abs=1e-9)
