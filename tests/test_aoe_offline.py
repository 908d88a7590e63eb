"""The offline AOTInductor package: written, checked, and loaded in a fresh
process without the model's source file or aoe_full's model code."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

import aoe_full
from aoe_full.choices import Choices, SubgraphChoice
from aoe_full.errors import TunedModelError
from aoe_full.model_source import load_model, parse_model_spec
from aoe_full.offline import package_strategy, write_package
from aoe_full.pipeline import TuningRun
from aoe_full.strategies import compile_unavailable_reason
from gdat.bank.store import RepoSummary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LOADER = """
import sys, torch, aoe_full
model = aoe_full.load_tuned(sys.argv[1])
data = torch.load(sys.argv[2])
with torch.no_grad():
    y = model(data["x"])
assert not any(m.startswith("aoe_user_model") for m in sys.modules), "the source was imported"
err = ((y - data["y"]).abs().max() / data["y"].abs().max()).item()
print("max relative error", err)
assert err <= 1e-4, err
"""


@pytest.mark.skipif(compile_unavailable_reason() is not None,
                    reason=f"AOTInductor: {compile_unavailable_reason()}")
def test_package_loads_in_a_fresh_process_without_the_source(tmp_path):
    src = tmp_path / "models.py"
    shutil.copy(os.path.join(ROOT, "aoe_full", "sample_models.py"), src)
    model = load_model(parse_model_spec(f"{src}:small_convnet", "pytorch")).eval()
    x = torch.randn(1, 3, 8, 8)
    path = str(tmp_path / "result" / "m_tune.pt2")
    result = write_package(model, [x], "compiled_freezing", path)
    assert result.path == path and os.path.isfile(path) and result.relative_error <= 1.0
    assert not os.path.exists(path + ".tmp.pt2")
    with torch.no_grad():
        torch.save({"x": x, "y": model(x)}, tmp_path / "io.pt")
    os.remove(src)
    env = {**os.environ, "PYTHONPATH": ROOT}
    done = subprocess.run([sys.executable, "-c", LOADER, path, str(tmp_path / "io.pt")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "max relative error" in done.stdout


def test_load_tuned_refuses_a_file_that_is_not_a_package(tmp_path):
    bogus = tmp_path / "m_tune.pt2"
    bogus.write_bytes(b"not a zip")
    with pytest.raises(TunedModelError, match="not an AOTInductor package"):
        aoe_full.load_tuned(str(bogus))
    with pytest.raises(TunedModelError, match="takes no source"):
        aoe_full.load_tuned(str(bogus), source="m.py:f")


def _run(scene, delivered, strategy):
    choices = Choices(subgraphs=[SubgraphChoice("x", "s", (), strategy)]) if strategy else Choices()
    return TuningRun("sgat", scene, [], RepoSummary(), choices, choices, torch.nn.Identity(),
                     None, 0.0, 0.0, {}, delivered)


@pytest.mark.parametrize("scene,delivered,strategy,expected", [
    ("infer", "whole model", "compiled_freezing", "compiled_freezing"),
    ("infer", "whole model", "compiled_max_autotune", "compiled_max_autotune"),
    ("infer", "whole model", "onnxrt", None),
    ("infer", "subgraphs", "compiled", None),
    ("infer", "untuned", None, None),
    ("train", "whole model", "compiled", None),
])
def test_a_package_is_written_only_for_a_whole_model_inductor_configuration(
        scene, delivered, strategy, expected):
    got, reason = package_strategy(_run(scene, delivered, strategy))
    assert got == expected
    assert (reason is None) == (expected is not None)
