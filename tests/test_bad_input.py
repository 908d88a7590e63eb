"""Bad input everywhere: fuzzed plan/bank/profile files, environment variables, plan files."""
from __future__ import annotations

import json
import os
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gdat.bank.plans import BankedPlan
from gdat.bank.store import BankWarning, KnowledgeBase
from gdat.core.plan import BucketPlan
from gdat.core.profile import Profile
from gdat.errors import BankError, PlanError, ProfileError
from tests.distributed import one_rank_group
from tests.helpers import REPO, run_in_process

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10 ** 9) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20)

VALID_PLAN = {"schema": "gdat.plan", "version": 1, "label": "x",
              "buckets": [{"params": [3, 2], "nbytes": 8, "dtype": "float32"},
                          {"params": [1, 0], "nbytes": 8, "dtype": "float32"}]}


def _mutations(doc):
    """Documents one edit away from ``doc``: a key dropped or a value replaced."""
    keys = st.sampled_from(sorted(doc)) if doc else st.nothing()
    dropped = keys.map(lambda k: {kk: v for kk, v in doc.items() if kk != k})
    replaced = st.tuples(keys, json_values).map(lambda kv: {**doc, kv[0]: kv[1]})
    return dropped | replaced


@settings(max_examples=400, deadline=None)
@given(json_values | _mutations(VALID_PLAN))
def test_plan_loader_raises_only_plan_error(doc):
    try:
        BucketPlan.from_document(doc, "fuzz")
    except PlanError:
        pass


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_plan_file_loader_raises_only_plan_error(tmp_path, raw):
    path = tmp_path / "plan.json"
    path.write_bytes(raw)
    try:
        BucketPlan.load(str(path))
    except PlanError:
        pass


def test_truncated_plan_file_is_a_plan_error(tmp_path):
    text = json.dumps(VALID_PLAN)
    for cut in range(len(text)):
        (tmp_path / "p.json").write_text(text[:cut])
        with pytest.raises(PlanError):
            BucketPlan.load(str(tmp_path / "p.json"))


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_bank_payload_loader_raises_only_bank_error(payload):
    try:
        BankedPlan.from_payload(payload if isinstance(payload, dict) else {"plan": payload}, "fuzz")
    except BankError:
        pass


@settings(max_examples=300, deadline=None)
@given(json_values | _mutations({"schema": "gdat.profile", "version": 1, "world_size": 2, "backend": "gloo",
                                 "device_type": "cpu", "torch_version": "2.13.0", "params": [], "ranks": []}))
def test_profile_loader_raises_only_profile_error(doc):
    try:
        Profile.from_dict(doc, "fuzz")
    except ProfileError:
        pass


BANK_KEY = {"model": 1}
VALID_ENTRY = json.dumps({"schema": "gdat.bank.gdat", "version": 1, "key": BANK_KEY, "payload": {"x": 1}}).encode()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400) | st.just(VALID_ENTRY) | st.integers(0, len(VALID_ENTRY) - 1).map(
    lambda cut: VALID_ENTRY[:cut]))
def test_a_corrupt_bank_entry_never_raises(tmp_path, raw):
    bank = KnowledgeBase(str(tmp_path), "gdat")
    os.makedirs(bank.directory, exist_ok=True)
    with open(bank.path_for(BANK_KEY), "wb") as f:
        f.write(raw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = bank.get(BANK_KEY)
    if raw == VALID_ENTRY:
        assert got == {"x": 1} and not caught
    else:  # anything else is warned about and treated as absent
        assert got is None
        assert [w.category for w in caught] == [BankWarning]


def test_bank_entry_of_another_version_is_warned_about_and_ignored(tmp_path):
    bank = KnowledgeBase(str(tmp_path), "gdat")
    bank.put({"m": 1}, {"x": 1})
    path = bank.path_for({"m": 1})
    doc = json.loads(open(path).read())
    doc["version"] = 7
    open(path, "w").write(json.dumps(doc))
    with pytest.warns(BankWarning, match="version 7 is not supported"):
        assert bank.get({"m": 1}) is None


SCRIPT = os.path.join(REPO, "tests", "scripts", "train_faults.py")


@pytest.mark.parametrize("env, message", [
    ({"REPEAT_TUNE": "maybe"}, "REPEAT_TUNE must be True or False, got 'maybe'"),
    ({"TUNE_BANK_PATH": "/dev/null/bank"}, "knowledge base (TUNE_BANK_PATH) '/dev/null/bank' cannot be created"),
    ({"TUNE_BANK_PATH": ""}, "TUNE_BANK_PATH is set but empty"),
])
def test_bad_environment_is_one_line_with_status_2(tmp_path, monkeypatch, capsys, env, message):
    monkeypatch.chdir(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = run_in_process(["gdat-run", "--gdat-work-path", str(tmp_path / "w"), "--nproc-per-node", "2", SCRIPT])
    stderr = capsys.readouterr().err
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], stderr


def test_bad_plan_files_on_the_command_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    truncated = tmp_path / "truncated.json"
    truncated.write_text(json.dumps(VALID_PLAN)[:30])
    code = run_in_process(["gdat-run", "--gdat-plan", str(truncated), "--nproc-per-node", "2", SCRIPT])
    stderr = capsys.readouterr().err
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    assert "not valid JSON" in stderr and not (tmp_path / "gdat_work").exists()
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({**VALID_PLAN, "version": 3}))
    code = run_in_process(["gdat-run", "--gdat-plan", str(wrong), "--nproc-per-node", "2", SCRIPT])
    assert code == 2 and "gdat.plan schema version 3 is not supported" in capsys.readouterr().err


def test_a_plan_for_another_model_is_refused_at_construction_with_a_clear_error(tmp_path, monkeypatch):
    """The plan file is checked against the model DDP wraps; the error is a
    GdatError, which a job under gdat-run ends with as its one line and status 2
    (the job-level path: tests/test_hostile_input.py)."""
    import torch

    from gdat.ddp import DistributedDataParallel
    from gdat.options import GdatConfig

    other = tmp_path / "other.json"
    BucketPlan.from_document(VALID_PLAN, "x").save(str(other))
    monkeypatch.setenv("TUNE_BANK_PATH", str(tmp_path / "bank"))
    model = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(8)])
    with one_rank_group(), pytest.raises(PlanError, match="plan bucket 0 claims 8 bytes|does not cover parameter"):
        DistributedDataParallel(model, gdat_config=GdatConfig(plan=str(other), work_path=str(tmp_path / "w")))
