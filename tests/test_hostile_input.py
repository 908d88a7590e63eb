"""Hostile and careless input: documents that are too deep, too big or not files,
options that used to pass validation and fail later, and Ctrl-C.  (Hostile
knowledge-base entries in a real job: ``tests/test_gdat_run.py``.)"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gdat import cli, run
from gdat.bank.store import BankWarning, KnowledgeBase
from gdat.core.jsonio import MAX_NESTING, read_json
from gdat.core.plan import BucketPlan
from gdat.core.profile import Profile
from gdat.errors import BankError, PlanError, ProfileError, UsageError
from tests.helpers import BIN, REPO

READERS = [
    ("plan", lambda p: BucketPlan.load(p), PlanError),
    ("profile", lambda p: Profile.load(p), ProfileError),
    ("show", lambda p: cli._show(p), UsageError),
]


def _nested(depth: int, open_: str = "[", close: str = "]") -> str:
    return open_ * depth + close * depth


@pytest.mark.parametrize("name, load, error", READERS)
def test_deep_nesting_is_the_readers_error_not_a_recursion_error(tmp_path, name, load, error):
    for text in (_nested(1000), _nested(100_000), '{"a":' * 5000 + "1" + "}" * 5000,
                 json.dumps({"schema": "gdat.plan", "version": 1, "label": json.loads(_nested(MAX_NESTING + 1))})):
        path = tmp_path / f"{name}.json"
        path.write_text(text)
        with pytest.raises(error, match="nested deeper than"):
            load(str(path))


@pytest.mark.parametrize("name, load, error", READERS)
def test_a_fifo_a_directory_and_a_symlink_loop_are_refused_at_once(tmp_path, name, load, error):
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.json"
    os.symlink(loop, loop)
    began = time.monotonic()
    for path, message in ((fifo, "not a regular file"), (tmp_path, "not a regular file"),
                          (loop, "cannot read")):
        with pytest.raises(error, match=message):
            load(str(path))
    assert time.monotonic() - began < 5, "a reader waited on a FIFO"


def test_a_document_over_the_size_limit_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "big.json"
    path.write_text("[" + "0," * 1000 + "0]")
    with pytest.raises(PlanError, match="larger than the 100-byte limit"):
        read_json(str(path), PlanError, max_bytes=100)
    assert read_json(str(path), PlanError) == [0] * 1001


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(depth=st.integers(1, 3000), kinds=st.text(alphabet="[{", min_size=1, max_size=3),
       truncate=st.booleans())
def test_any_nesting_gives_a_value_or_the_callers_error(tmp_path, depth, kinds, truncate):
    opens = [kinds[i % len(kinds)] for i in range(depth)]
    text = "".join(o if o == "[" else '{"k":' for o in opens) + "1" + \
        "".join("]" if o == "[" else "}" for o in reversed(opens))
    if truncate:
        text = text[: len(text) // 2]
    path = tmp_path / "doc.json"
    path.write_text(text)
    try:
        value = read_json(str(path), BankError)
    except BankError:
        return
    assert depth <= MAX_NESTING and not truncate and value is not None


def test_hostile_bank_entries_are_warned_about_and_ignored(tmp_path):
    bank = KnowledgeBase(str(tmp_path), "gdat")
    bank.put({"m": 1}, {"x": 1})
    entry = bank.path_for({"m": 1})
    os.unlink(entry)
    os.mkfifo(entry)
    with pytest.warns(BankWarning, match="not a regular file"):
        assert bank.get({"m": 1}) is None
    os.unlink(entry)
    with open(entry, "w") as f:
        f.write(_nested(1000))
    with pytest.warns(BankWarning, match="nested deeper than"):
        assert bank.get({"m": 1}) is None
    with pytest.warns(BankWarning, match="nested deeper than"):
        bank.put({"m": 1}, {"x": 2})
    assert bank.get({"m": 1}) == {"x": 2}


def _gdat_run(argv: list[str], capsys, **env: str) -> tuple[int, list[str]]:
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        status = run.main(argv)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return status, capsys.readouterr().err.strip().splitlines()


SCRIPT = os.path.join(REPO, "tests", "scripts", "train_faults.py")


@pytest.mark.parametrize("setup, env, message", [
    (lambda t: (t / "afile").write_text(""), {"TUNE_BANK_PATH": "afile"}, "afile' is not a directory"),
    (lambda t: os.symlink(t / "loop", t / "loop"), {"TUNE_BANK_PATH": "loop"},
     "loop' cannot be used (Too many levels of symbolic links)"),
    (lambda t: None, {"REPEAT_TUNE": "maybe"}, "REPEAT_TUNE must be True or False, got 'maybe'"),
])
@pytest.mark.parametrize("mode", ["tune", "apply"])
def test_bad_settings_fail_before_anything_is_created(tmp_path, monkeypatch, capsys, setup, env, message, mode):
    monkeypatch.chdir(tmp_path)
    setup(tmp_path)
    env = {"TUNE_BANK_PATH": str(tmp_path / "bank"), **{k: v for k, v in env.items()}}
    before = set(os.listdir(tmp_path))
    status, lines = _gdat_run(["--gdat-mode", mode, "--gdat-work-path", "work", "--nproc-per-node", "2", SCRIPT],
                              capsys, **env)
    assert status == 2 and len(lines) == 1 and message in lines[0], lines
    assert set(os.listdir(tmp_path)) == before


def _launch(tmp_path, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([os.path.join(BIN, "gdat-run"), "--gdat-work-path", str(tmp_path / "work"),
                             "--nproc-per-node", "2", *args], cwd=str(tmp_path), stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            env={**os.environ, "TUNE_BANK_PATH": str(tmp_path / "bank")}, **kwargs)


def _job_lines(stderr: str) -> list[str]:
    """stderr without torchrun's start-up banner about OMP_NUM_THREADS (printed by
    stock torchrun on every launch)."""
    return [line for line in stderr.splitlines() if line.strip() and "run.py:" not in line]


def test_models_that_differ_between_ranks_end_the_job_with_one_line(tmp_path):
    job = _launch(tmp_path, SCRIPT, "--mismatch-rank", "1", "--steps", "3")
    _, err = job.communicate(timeout=120)
    assert job.returncode == 2
    assert _job_lines(err) == ["gdat: error: ranks built different models: parameter #0 is 0.weight "
                               "[256, 256] float32 on rank 0 but 0.weight [512, 512] float32 on rank 1"], err


def test_ctrl_c_while_tuning_is_one_line_and_status_130(tmp_path):
    job = _launch(tmp_path, "--gdat-comm-budget-s", "0.3", SCRIPT, "--steps", "100000")
    lines = []
    for line in job.stderr:
        lines.append(line)
        if "tune: baseline" in line:
            break
    else:
        pytest.fail("".join(lines))
    os.killpg(job.pid, signal.SIGINT)
    _, err = job.communicate(timeout=120)
    out = _job_lines("".join(lines) + err)
    assert job.returncode == 130, out
    assert not any("Traceback" in line or "KeyboardInterrupt" in line for line in out), out
    last = out[-1]
    assert last.startswith("gdat: interrupted at step ") and last.endswith("nothing was saved"), out
    assert sum("interrupted" in line for line in out) == 1, out
    assert not os.path.exists(tmp_path / "bank" / "gdat") or not os.listdir(tmp_path / "bank" / "gdat")
