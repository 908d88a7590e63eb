"""gdat-run's closed loop on real 2-rank gloo jobs: equivalence, knowledge base, re-tuning."""
from __future__ import annotations

import glob
import json
import os
import sys

import pytest

from gdat.core.plan import BucketPlan
from launch.testbed import namespace_unavailable_reason
from tests.helpers import BIN, REPO, run_cmd

UNAVAILABLE = namespace_unavailable_reason()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"testbed unavailable: {UNAVAILABLE}")

STEPS = 110
TRAIN = ["-m", "gdat.demo.train", "--model", "transformer", "--size", "tiny", "--batch", "8", "--steps", str(STEPS)]
RATE = "2gbit"


def _launch(tmp, name, port, env=None, gdat=True, extra=(), gdat_extra=()):
    out = tmp / f"{name}.json"
    runner = [os.path.join(BIN, "gdat-run"), "--gdat-work-path", str(tmp / name), "--gdat-comm-budget-s", "1",
              *gdat_extra] if gdat else [sys.executable, "-m", "torch.distributed.run"]
    cmd = ["gdat-testbed", "--rate", RATE, "--", *runner, "--nproc-per-node", "2", "--master-port", str(port),
           *TRAIN, "--out", str(out), *extra]
    done = run_cmd(cmd, cwd=REPO, env={"TUNE_BANK_PATH": str(tmp / "bank"), **(env or {})})
    assert done.returncode == 0, done.stderr[-4000:]
    reports = sorted(glob.glob(str(tmp / name / "aoe_result_gdat_*.json")))
    report = json.loads(open(reports[-1]).read()) if reports else None
    return json.loads(out.read_text()), report, done.stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("online")
    first = _launch(tmp, "first", 29561)
    caps = first[1]["GDAT"]["chosen_plan"]["bucket_cap_mb_list"]
    reference = _launch(tmp, "reference", 29562, gdat=False,
                        extra=("--bucket-cap-mb-list", ",".join(repr(c) for c in caps)))
    plan_file = tmp / "chosen_plan.json"
    BucketPlan.from_dict(first[1]["GDAT"]["chosen_plan"]["plan"]).save(str(plan_file))
    given = _launch(tmp, "given", 29566, env={"TUNE_BANK_PATH": str(tmp / "unused_bank")},
                    gdat_extra=("--gdat-plan", str(plan_file)))
    second = _launch(tmp, "second", 29563)
    repeat = _launch(tmp, "repeat", 29564, env={"REPEAT_TUNE": "True"})
    entry = first[1]["GDAT"]["knowledge_base_entry"]
    assert entry and os.path.exists(entry)
    with open(entry, "r+") as f:
        text = f.read()
        f.seek(0)
        f.truncate()
        f.write(text[: len(text) // 2])
    truncated = _launch(tmp, "truncated", 29565)
    return {"first": first, "reference": reference, "given": given, "second": second, "repeat": repeat,
            "truncated": truncated, "bank": entry}


def test_tuned_run_trains_exactly_like_stock_ddp_with_the_chosen_plan(runs):
    tuned, report, stderr = runs["first"]
    stock, _, _ = runs["reference"]
    g = report["GDAT"]
    assert g["tuning_steps"] <= 30
    assert len(g["candidates"]) >= 1  # the run switched plans while training
    assert "tune: candidate 1/" in stderr
    assert len(tuned["losses"]) == len(stock["losses"]) == STEPS >= 100
    for a, b in zip(tuned["losses"], stock["losses"]):
        assert a == pytest.approx(b, rel=1e-6)
    assert len(tuned["checksum"]) == len(stock["checksum"]) > 0
    for a, b in zip(tuned["checksum"], stock["checksum"]):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-9)
    # after the steady-state confirmation the DDP runs the chosen plan (the adopted one, switched
    # back in after the user's configuration's block, or the user's), as stock DDP's logging data says
    assert tuned["bucket_sizes"] and tuned["bucket_sizes"] == stock["bucket_sizes"]


def test_report_has_aoe_keys_and_the_evidence(runs):
    _, report, _ = runs["first"]
    assert set(report["basic"]) == {"tuning_name", "tuning_time(s)"}
    g = report["GDAT"]
    for key in ("model_baseline_performance(ms)", "model_result_performance(ms)", "model_performance_improvement",
                "gdat_tuning_result", "repo_summary", "chosen_plan", "candidates", "lower_bound_ms",
                "model_prediction_error"):
        assert key in g
    assert g["gdat_tuning_result"] in ("tuning successful", "tuning unsatisfied")
    assert g["repo_summary"]["total_num"] == 1
    assert g["repo_summary"]["repo_add_num" if g["gdat_tuning_result"] == "tuning successful"
                             else "repo_unsatisfied_num"] == 1
    for c in g["candidates"]:
        assert c["predicted_step_ms"] > 0 and c["measured_step_ms"] > 0 and c["blocks"] >= 1
        assert c["corrected_predicted_step_ms"] > 0 and c["plan"]["buckets"]
    # per-block evidence: the baseline's blocks and every candidate's, and the steady state after tuning
    assert [w["label"] for w in g["windows"]].count("baseline") >= 1
    assert sum(c["blocks"] for c in g["candidates"]) == sum(w["label"] != "baseline" for w in g["windows"])
    assert g["steady_state"]["status"] in ("confirmed", "reverted to the user configuration")
    if g["gdat_tuning_result"] == "tuning successful":
        assert g["model_result_performance(ms)"] == pytest.approx(g["steady_state"]["median_ms"], abs=1e-3)
    assert g["model_prediction_error_corrected"] is not None
    assert g["lower_bound_ms"] <= min(c["predicted_step_ms"] for c in g["candidates"]) + 1e-6
    pngs = glob.glob(os.path.join(os.path.dirname(runs["bank"]), "..", "..", "first", "*.png"))
    assert pngs, "a before/after chart next to the report"


def test_second_launch_hits_the_bank_and_runs_no_tuning_step(runs):
    _, report, stderr = runs["second"]
    assert "knowledge base hit" in stderr
    assert "tune: candidate" not in stderr and "tune: baseline" not in stderr
    g = report["GDAT"]
    assert g["gdat_tuning_result"] == "bank hit" and g["tuning_steps"] == 0
    assert g["repo_summary"]["repo_hit_num"] == 1 and g["repo_summary"]["total_num"] == 1
    assert g["chosen_plan"]["bucket_cap_mb_list"] == runs["first"][1]["GDAT"]["chosen_plan"]["bucket_cap_mb_list"]
    # same plan from the first rebuild: training identical to stock DDP with those caps
    assert len(runs["second"][0]["losses"]) == len(runs["reference"][0]["losses"]) == STEPS
    for a, b in zip(runs["second"][0]["losses"], runs["reference"][0]["losses"]):
        assert a == pytest.approx(b, rel=1e-6)


def test_repeat_tune_tunes_again_and_keeps_or_replaces_the_entry(runs):
    _, report, stderr = runs["repeat"]
    assert "re-tune (REPEAT_TUNE)" in stderr and "tune: candidate 1/" in stderr
    summary = report["GDAT"]["repo_summary"]
    assert summary["total_num"] == 1
    assert summary["repo_reserved_num"] + summary["repo_update_num"] == 1
    # the plan the first run stored was measured again: as the baseline (a verdict of the user's
    # configuration), a ranked candidate or appended as "stored"; never twice
    def groups(plan):
        return sorted(sorted(b["params"]) for b in plan["buckets"])

    stored = groups(runs["first"][1]["GDAT"]["chosen_plan"]["plan"])
    measured = [groups(report["GDAT"]["baseline_plan"]["plan"])] + \
        [groups(c["plan"]) for c in report["GDAT"]["candidates"]]
    assert measured.count(stored) == 1


def test_truncated_bank_entry_is_warned_about_and_tuned_afresh(runs):
    data, report, stderr = runs["truncated"]
    assert "ignoring unusable knowledge-base entry" in stderr
    assert "knowledge base miss" in stderr and len(data["losses"]) == STEPS
    assert report["GDAT"]["gdat_tuning_result"] in ("tuning successful", "tuning unsatisfied")
    saved = report["GDAT"]["knowledge_base_entry"]
    assert saved and json.loads(open(saved).read())["payload"]["plan"]  # a whole new entry
    # (it replaces the corrupt file, or sits beside it when this run measured a neighbouring link class)


def test_a_plan_file_is_applied_without_tuning(runs):
    data, report, stderr = runs["given"]
    assert "applying plan" in stderr and "tune:" not in stderr and report is None
    assert len(data["losses"]) == len(runs["reference"][0]["losses"]) == STEPS
    for a, b in zip(data["losses"], runs["reference"][0]["losses"]):
        assert a == pytest.approx(b, rel=1e-6)


def test_every_launch_ends_with_one_line_saying_what_gdat_did(runs):
    said = {"first": "tuned (", "repeat": "tuned (", "second": "applied the knowledge base's plan",
            "given": "applied plan file"}
    for name, start in said.items():
        last = [line for line in runs[name][2].splitlines() if line.startswith("gdat: ")][-1]
        assert last.startswith(f"gdat: done: {start}") and last.endswith(f"/{name}"), (name, last)
