"""Job type 4: the mapping from aoe's options to the gdat.run command line."""
from __future__ import annotations

import os
import sys

import pytest

from aoe_full.gdat_job import gdat_command
from gdat.errors import UsageError


def test_mapping(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("print('hi')\n")
    cmd = gdat_command(str(script), str(tmp_path / "out"), "--nproc-per-node 2 --gdat-aoe-bank",
                       ["--epochs", "3"])
    assert cmd == [sys.executable, "-m", "gdat.run", "--gdat-mode", "tune", "--gdat-work-path",
                   os.path.abspath(tmp_path / "out"), "--nproc-per-node", "2", "--gdat-aoe-bank",
                   os.path.abspath(script), "--epochs", "3"]


def test_no_extra_arguments(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("")
    cmd = gdat_command(str(script), "w", "", [])
    assert cmd[-1] == os.path.abspath(script) and cmd[-2] == os.path.abspath("w")


@pytest.mark.parametrize("gdat_args,match", [
    ("--gdat-work-path elsewhere", "must not set"),
    ("--gdat-mode=off", "must not set"),
    ("'unbalanced", "cannot be split"),
])
def test_bad_gdat_args(tmp_path, gdat_args, match):
    script = tmp_path / "train.py"
    script.write_text("")
    with pytest.raises(UsageError, match=match):
        gdat_command(str(script), "w", gdat_args, [])


def test_script_must_be_an_existing_python_file(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        gdat_command(str(tmp_path / "none.py"), "w", "", [])
    with pytest.raises(UsageError, match=r"\.py"):
        gdat_command(str(tmp_path / "model.pt2"), "w", "", [])
