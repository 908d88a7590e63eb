"""``gdat profile`` / ``gdat-run --gdat-mode profile`` on an unmodified script, and bad input."""
from __future__ import annotations

import json
import os

import pytest

from gdat.cli import main as gdat_main
from gdat.core.profile import Profile
from tests.helpers import REPO, run_cmd, run_in_process

TRAIN = ["-m", "gdat.demo.train", "--model", "transformer", "--size", "tiny", "--steps", "12"]


def test_profile_writes_profile_trace_and_chart(tmp_path, capsys):
    work = tmp_path / "work"
    done = run_cmd(["gdat", "profile", "--gdat-work-path", str(work), "--gdat-comm-budget-s", "0.5",
                    "--nproc-per-node", "2", *TRAIN], cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    files = sorted(os.listdir(work))
    kinds = {f.split("_")[1] for f in files}
    assert kinds == {"profile", "trace", "overlap"}, files
    profile = Profile.load(str(work / next(f for f in files if f.startswith("gdat_profile_"))))
    assert profile.world_size == 2 and len(profile.params) == 37
    trace = json.loads((work / next(f for f in files if f.startswith("gdat_trace_"))).read_text())
    assert {e["pid"] for e in trace["traceEvents"] if e["ph"] == "X"} == {0, 1}
    assert "gdat: profile: step 6/6 (overlap)" in done.stderr
    assert "exposed allreduce" in done.stderr
    capsys.readouterr()
    assert gdat_main(["show", str(work / next(f for f in files if f.startswith("gdat_profile_")))]) == 0
    assert "37 gradients" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["gdat-run", "--nproc-per-node", "2", "no_such_script.py"], "training script 'no_such_script.py' does not exist"),
    (["gdat", "profile", "--nproc-per-node", "2", "missing.py"], "training script 'missing.py' does not exist"),
    (["gdat-run", "--gdat-comm-budget-s", "-1", "-m", "gdat.demo.train"], "--gdat-comm-budget-s must be a positive"),
    (["gdat-run", "--gdat-mode", "fast", "-m", "gdat.demo.train"], "--gdat-mode must be one of"),
    (["gdat-run", "--gdat-compress", "int8", "-m", "gdat.demo.train"], "--gdat-compress must be one of bf16, fp16"),
    (["gdat-run", "--gdat-max-tune-steps", "0", "-m", "gdat.demo.train"], "--gdat-max-tune-steps must be a positive"),
    (["gdat-run", "-m", "no.such.module"], "training module 'no.such.module' cannot be found"),
    (["gdat-run", "--no-python", "-m", "gdat.demo.train"], "--no-python is not supported"),
    (["gdat", "show", "/nonexistent/profile.json"], "no such file"),
    (["gdat", "simulate", "/nonexistent/profile.json"], "no such file"),
])
def test_bad_input_is_one_line_with_status_2_and_writes_nothing(tmp_path, monkeypatch, capsys, args, message):
    work = tmp_path / "work"
    monkeypatch.chdir(tmp_path)
    code = run_in_process([*args[:1], *(["--gdat-work-path", str(work)] if args[0] == "gdat-run" else []), *args[1:]])
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], stderr
    assert not work.exists()
    assert os.listdir(tmp_path) == []
