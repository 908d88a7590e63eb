"""gdat-run's closed loop on real 2-rank gloo jobs in a 2 Gbit/s testbed, one knowledge
base through six launches beside a stock job: a tuned run trains exactly like stock DDP
with the plan it chose; a bank hit on a link measured badly; inconclusive evidence
resumed; REPEAT_TUNE; hostile and corrupt entries in a 30-step run under the
defaults; an entry tuned at another rate.  (A plan file, ``--gdat-plan``, is applied
in-process: tests/test_ddp_dropin.py.)"""
from __future__ import annotations

import glob
import json
import os
import shutil
import sys

import pytest

from gdat.bank.store import KnowledgeBase
from gdat.reducer.host_allocator import user_settings
from launch.testbed import namespace_unavailable_reason
from tests.distributed import free_port
from tests.helpers import BIN, GLIBC, REPO, run_cmd

UNAVAILABLE = namespace_unavailable_reason()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"testbed unavailable: {UNAVAILABLE}")

STEPS = 60  # room after the steady-state check: the last plan switch rebuilds buckets before the end
TRAIN = ["-m", "gdat.demo.train", "--model", "transformer", "--size", "tiny", "--batch", "8"]
RATE = "2gbit"


def _launch(tmp, name, steps=STEPS, env=None, gdat=True, extra=(), gdat_extra=()):
    """One launch in the testbed; gdat-run's defaults unless ``gdat_extra``: the
    launches that look the link up measure it for the default 2 s (a short ladder
    on a busy machine measures tbf's burst, up to 2x the link's rate)."""
    out = tmp / f"{name}.json"
    runner = [os.path.join(BIN, "gdat-run"), "--gdat-work-path", str(tmp / name), *gdat_extra] if gdat else \
        [sys.executable, "-m", "torch.distributed.run"]
    cmd = ["gdat-testbed", "--rate", RATE, "--", *runner, "--nproc-per-node", "2", "--master-port", str(free_port()),
           *TRAIN, "--steps", str(steps), "--out", str(out), *extra]
    done = run_cmd(cmd, cwd=REPO, env={"TUNE_BANK_PATH": str(tmp / "bank"), **(env or {})})
    assert done.returncode == 0, done.stderr[-4000:]
    if gdat:  # gdat's warnings are its own one-line ones
        assert not any("Traceback" in line or "Warning:" in line for line in done.stderr.splitlines()), done.stderr
    reports = sorted(glob.glob(str(tmp / name / "aoe_result_gdat_*.json")))
    report = json.loads(open(reports[-1]).read()) if reports else None
    return json.loads(out.read_text()), report, done.stderr


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _settled(kb: KnowledgeBase, path: str, confident: bool) -> dict:
    """The entry at ``path`` marked settled (a hit) or inconclusive (resumed); returns it."""
    doc = json.loads(open(path).read())
    kb.put(doc["key"], {**doc["payload"], "confident": confident})
    return doc


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gdat_run")
    kb = KnowledgeBase(str(tmp / "bank"), "gdat")
    first = _launch(tmp, "first")
    caps = first[1]["GDAT"]["chosen_plan"]["bucket_cap_mb_list"]
    reference = _launch(tmp, "reference", gdat=False,
                        extra=("--bucket-cap-mb-list", ",".join(repr(c) for c in caps)))
    entry = first[1]["GDAT"]["knowledge_base_entry"]
    assert entry and os.path.exists(entry)
    shutil.copy(entry, tmp / "first_entry.json")
    # settled evidence is a hit: a 0.01 s allreduce budget measures the link badly (only
    # messages tbf's burst lets through), yet the launch finds the first one's entry
    _settled(kb, entry, True)
    second = _launch(tmp, "second", gdat_extra=("--gdat-comm-budget-s", "0.01"))
    # inconclusive evidence is resumed: measured again with the kept profile, and pooled
    _settled(kb, entry, False)
    resumed = _launch(tmp, "resumed")
    _settled(kb, entry, True)
    repeat = _launch(tmp, "repeat", env={"REPEAT_TUNE": "True"})
    # the entry a FIFO, its neighbouring link classes a truncated copy and deeply nested JSON;
    # a 30-step script under the defaults tunes afresh and saves
    doc = json.loads((tmp / "first_entry.json").read_text())
    os.unlink(entry)
    os.mkfifo(entry)
    neighbours = [kb.path_for({**doc["key"], "link_class": doc["key"]["link_class"] + d}) for d in (-1, 1)]
    text = (tmp / "first_entry.json").read_text()
    with open(neighbours[0], "w") as f:
        f.write(text[: len(text) // 2])
    with open(neighbours[1], "w") as f:
        f.write(_nested(5000))
    hostile = _launch(tmp, "hostile", steps=30)
    saved = hostile[1]["GDAT"]["knowledge_base_entry"]
    hostile_entry = json.loads(open(saved).read()) if saved else None
    # the first entry again, as if tuned at 2.2 x this link's bandwidth, one link class up
    for path in glob.glob(str(tmp / "bank" / "gdat" / "*.json")):
        os.unlink(path)
    kb.put({**doc["key"], "link_class": doc["key"]["link_class"] + 1},
           {**doc["payload"], "bandwidth_bytes_per_s": doc["payload"]["bandwidth_bytes_per_s"] * 2.2})
    shifted = _launch(tmp, "shifted")
    return {"first": first, "reference": reference, "second": second, "resumed": resumed,
            "repeat": repeat,
            "hostile": hostile, "hostile_entry": hostile_entry, "shifted": shifted, "stored": doc, "bank": entry}


def test_tuned_run_trains_exactly_like_stock_ddp_with_the_chosen_plan(runs):
    tuned, report, stderr = runs["first"]
    stock, _, _ = runs["reference"]
    g = report["GDAT"]
    assert g["tuning_steps"] <= 30
    assert len(g["candidates"]) >= 1  # the run switched plans while training
    assert "tune: candidate 1/" in stderr
    assert len(tuned["losses"]) == len(stock["losses"]) == STEPS
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
    assert g["steady_state"]["status"] in ("confirmed", "reverted to the user configuration", "running on trial")
    if g["gdat_tuning_result"] == "tuning successful":
        assert g["model_result_performance(ms)"] == pytest.approx(g["steady_state"]["median_ms"], abs=1e-3)
    steady = g["steady_state"]  # the measured plan's steady state as predicted, and the error
    assert steady["prediction_error"] == pytest.approx(steady["predicted_step_ms"] / steady["median_ms"] - 1, abs=1e-3)
    assert g["model_prediction_error_corrected"] is not None
    assert g["lower_bound_ms"] <= min(c["predicted_step_ms"] for c in g["candidates"]) + 1e-6
    pngs = glob.glob(os.path.join(os.path.dirname(runs["bank"]), "..", "..", "first", "*.png"))
    assert pngs, "a before/after chart next to the report"


def test_a_second_launch_on_a_badly_measured_link_hits_the_bank_and_runs_no_tuning_step(runs):
    _, report, stderr = runs["second"]
    assert "knowledge base hit" in stderr
    if GLIBC and not user_settings():
        assert "gdat: host allocator: glibc" in stderr  # a plan applied at construction, as it was measured
    assert "tune: candidate" not in stderr and "tune: baseline" not in stderr
    g = report["GDAT"]
    assert g["gdat_tuning_result"] == "bank hit" and g["tuning_steps"] == 0
    assert g["repo_summary"]["repo_hit_num"] == 1 and g["repo_summary"]["total_num"] == 1
    assert g["chosen_plan"]["bucket_cap_mb_list"] == runs["first"][1]["GDAT"]["chosen_plan"]["bucket_cap_mb_list"]
    # same plan from the first rebuild: training identical to stock DDP with those caps
    assert len(runs["second"][0]["losses"]) == len(runs["reference"][0]["losses"]) == STEPS
    for a, b in zip(runs["second"][0]["losses"], runs["reference"][0]["losses"]):
        assert a == pytest.approx(b, rel=1e-6)


def test_inconclusive_evidence_is_resumed_without_profiling_and_pooled(runs):
    data, report, stderr = runs["resumed"]
    first = runs["first"][1]["GDAT"]
    assert "inconclusive evidence of 1 launch(es)" in stderr and "resuming the evidence of 1 launch(es)" in stderr
    assert len(data["losses"]) == STEPS
    g = report["GDAT"]
    assert g["evidence"]["launches"] == 2 and g["evidence"]["paired_blocks"] > first["evidence"]["paired_blocks"]
    # no profile steps: the first block starts right after the warm-up
    assert g["windows"][0]["label"] == "baseline" and len(g["windows"]) >= len(first["windows"])
    assert g["repo_summary"]["total_num"] == 1


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


def test_hostile_entries_are_warned_about_and_a_thirty_step_run_tunes_afresh_and_saves(runs):
    data, report, stderr = runs["hostile"]
    warned = [line for line in stderr.splitlines() if "ignoring unusable knowledge-base entry" in line]
    assert len(warned) >= 1 and all(line.startswith("gdat: warning: ") for line in warned), stderr
    assert "knowledge base miss" in stderr and "tuning incomplete" not in stderr and len(data["losses"]) == 30
    g = report["GDAT"]
    assert g["gdat_tuning_result"] in ("tuning successful", "tuning unsatisfied")
    assert g["tuning_steps"] <= 30 and g["repo_summary"]["total_num"] == 1
    assert runs["hostile_entry"]["payload"]["plan"]  # a whole new entry (read before the next launch)
    # (it replaces the FIFO, or a corrupt neighbour when this run measured a neighbouring link class)


def test_an_entry_tuned_at_another_rate_is_measured_again_and_tuning_starts_from_its_plan(runs):
    _, report, stderr = runs["shifted"]
    g = report["GDAT"]
    assert "measuring it again" in stderr and g["gdat_tuning_result"] != "bank hit", stderr[-3000:]
    plans = [c["plan"]["buckets"] for c in g["candidates"]] + [g["baseline_plan"]["plan"]["buckets"]]
    stored = runs["stored"]["payload"]["plan"]["buckets"]
    assert [b["params"] for b in stored] in [[b["params"] for b in p] for p in plans]


def test_every_launch_ends_with_one_line_saying_what_gdat_did(runs):
    said = {"first": "tuned (", "repeat": "tuned (", "resumed": "tuned (",
            "second": "applied the knowledge base's plan",
"hostile": "tuned (", "shifted": "tuned ("}
    for name, start in said.items():
        last = [line for line in runs[name][2].splitlines() if line.startswith("gdat: ")][-1]
        assert last.startswith(f"gdat: done: {start}") and last.endswith(f"/{name}"), (name, last)
