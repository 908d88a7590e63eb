"""What gdat says and writes at the end of every run under gdat-run (real 2-rank jobs)."""
from __future__ import annotations

import glob
import json
import os

import pytest

from tests.distributed import free_port
from tests.helpers import REPO, run_cmd

_ran: dict[str, object] = {}


def _job(name: str, tmp_path_factory, *args: str):
    """Each job runs once for the module: (completed process, work path)."""
    if name not in _ran:
        work = tmp_path_factory.mktemp(name)
        done = run_cmd(["gdat-run", "--nproc-per-node", "2", "--master-port", str(free_port()),
                        "--gdat-comm-budget-s", "0.3", *args],
                       cwd=str(work), env={"TUNE_BANK_PATH": str(work / "bank"), "PYTHONPATH": REPO})
        _ran[name] = (done, work)
    return _ran[name]


def _short_profile(tmp_path_factory):
    """6 training steps where the profile needs 9; the script drops its DDP before it ends."""
    return _job("short", tmp_path_factory, "--gdat-mode", "profile", "-m", "gdat.demo.train", "--model", "mlp",
                "--size", "tiny", "--steps", "6")


def _hooked(tmp_path_factory):
    return _job("hooked", tmp_path_factory, os.path.join(REPO, "tests", "scripts", "comm_hook_loop.py"))


def test_a_short_run_says_what_it_lacked(tmp_path_factory):
    done, _ = _short_profile(tmp_path_factory)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "gdat: warning: profile incomplete: the script ran 6 training steps, the profile needs 9" in done.stderr


def test_a_short_run_writes_what_it_has(tmp_path_factory):
    done, work = _short_profile(tmp_path_factory)
    assert glob.glob(str(work / "gdat_work" / "gdat_profile_*.json")), done.stderr[-3000:]


def test_a_model_gdat_cannot_tune_gets_a_report_with_the_reason(tmp_path_factory):
    done, work = _hooked(tmp_path_factory)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = glob.glob(str(work / "gdat_work" / "aoe_result_gdat_*.json"))
    assert len(reports) == 1, done.stderr[-3000:]
    report = json.load(open(reports[0]))["GDAT"]
    assert report["gdat_tuning_result"] == "tuning unsatisfied"
    assert "comm hook" in report["reason"]


@pytest.mark.parametrize("job", [_short_profile, _hooked])
def test_every_run_ends_with_one_line_saying_what_gdat_did(tmp_path_factory, job):
    done, work = job(tmp_path_factory)
    last = [line for line in done.stderr.splitlines() if line.startswith("gdat: ")][-1]
    assert last.startswith("gdat: done: ") and str(work / "gdat_work") in last, last


def test_the_done_line_counts_repeated_outcomes_and_caps_the_clauses():
    from gdat.report.outcome import Outcome, done_line

    many = [Outcome("not tuned (x)", "w")] * 3 + [Outcome(f"tuned ({k})", "w", f"/abs/w/r{k}.json") for k in range(4)]
    line = done_line(many, "unused")
    assert line.startswith("done: not tuned (x) (3 models); tuned (0), r0.json; tuned (1), r1.json; and 2 more;")
    assert line.endswith(f"; outputs in {os.path.abspath('w')}")
    assert done_line([], "gw") == \
        f"done: the script built no DistributedDataParallel; nothing to tune; outputs in {os.path.abspath('gw')}"
