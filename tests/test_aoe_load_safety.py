"""What a tuned-model file received from someone else can and cannot do: it
never chooses what is imported, a mismatch is refused before anything runs, and
its JSON header goes through the bounded document reader."""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aoe_full import TuneConfig, load_tuned, tune_subgraphs
from aoe_full.errors import TunedModelError
from aoe_full.inputs import InputSpec
from aoe_full.measure import MeasureConfig
from aoe_full.model_source import parse_model_spec
from aoe_full.sample_models import small_convnet
from aoe_full.tuned_model import header_path, read_header, save_tuned

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EVIL = """
import pathlib
pathlib.Path({marker!r}).write_text("imported")
from torch import nn
def small_convnet():
    pathlib.Path({marker!r}).write_text("called")
    return nn.Identity()
"""


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tuned")
    src = tmp / "models.py"
    shutil.copy(os.path.join(ROOT, "aoe_full", "sample_models.py"), src)
    spec = f"{src}:small_convnet"
    x = torch.randn(1, 3, 8, 8)
    cfg = TuneConfig(scene="infer", bank_root=str(tmp / "bank"), candidates=frozenset({"channels_last"}),
                     measure=MeasureConfig(warmup=1, rounds=3, sample_s=0.001))
    run = tune_subgraphs(small_convnet(), [x], ["x"], cfg)
    path = str(tmp / "result" / "m_tune.pt")
    save_tuned(path, run, parse_model_spec(spec, "pytorch"), "fx", [InputSpec("x", (1, 3, 8, 8))],
               small_convnet())
    return path, spec, tmp


def _copy(tuned, tmp_path):
    path, spec, _ = tuned
    dst = tmp_path / "m_tune.pt"
    shutil.copy(path, dst)
    shutil.copy(header_path(path), header_path(str(dst)))
    return str(dst), spec


def test_round_trip(tuned, tmp_path):
    path, spec = _copy(tuned, tmp_path)
    model = load_tuned(path, source=spec)
    x = torch.randn(1, 3, 8, 8)
    assert torch.allclose(model(x), small_convnet().eval()(x), rtol=1e-4, atol=1e-5)


def test_a_tampered_header_is_refused_without_executing_anything(tuned, tmp_path):
    path, spec = _copy(tuned, tmp_path)
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.py"
    evil.write_text(EVIL.format(marker=str(marker)))
    header = json.loads(open(header_path(path)).read())
    header["source"]["path"] = str(evil)
    header["source"]["sha256"] = hashlib.sha256(evil.read_bytes()).hexdigest()
    with open(header_path(path), "w") as f:
        json.dump(header, f)
    with pytest.raises(TunedModelError, match="pass that file"):
        load_tuned(path)  # the file's own path is never followed
    with pytest.raises(TunedModelError, match="does not match"):
        load_tuned(path, source=spec)  # the receiver's own model file: refused, not imported
    with pytest.raises(TunedModelError, match="is not what"):
        load_tuned(path, source=f"{spec.rpartition(':')[0]}:explicit_attention_transformer")
    assert not marker.exists()


def test_a_changed_source_or_weights_file_is_refused(tuned, tmp_path):
    path, spec = _copy(tuned, tmp_path)
    src = tmp_path / "models.py"
    shutil.copy(spec.rpartition(":")[0], src)
    src.write_text(src.read_text() + "\nraise SystemExit('must not run')\n")
    with pytest.raises(TunedModelError, match="does not match"):
        load_tuned(path, source=f"{src}:small_convnet")
    state = torch.load(path, weights_only=True)
    state["state_dict"]["head.bias"] += 1
    torch.save(state, path)
    with pytest.raises(TunedModelError, match="weights do not match"):
        load_tuned(path, source=spec)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["mode", "scene", "source", "capture", "inputs", "choices",
                              "weights_sha256", "schema", "version"]), value=json_values)
def test_fuzzed_headers_give_a_tuned_model_error_or_a_valid_header(tuned, tmp_path, field, value):
    path, _, _ = tuned
    doc = json.loads(open(header_path(path)).read())
    doc[field] = value
    target = str(tmp_path / "fuzz_tune.pt")
    with open(header_path(target), "w") as f:
        json.dump(doc, f)
    try:
        header = read_header(target)
    except TunedModelError:
        return
    assert header["mode"] in ("opat", "sgat") and isinstance(header["inputs"], list)


@pytest.mark.parametrize("content", ["[" * 100000 + "]" * 100000, "{", "", "\xff"])
def test_nested_truncated_and_binary_headers_are_refused(tmp_path, content):
    target = str(tmp_path / "m_tune.pt")
    with open(header_path(target), "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write(content)
    with pytest.raises(TunedModelError):
        read_header(target)


def test_a_fifo_header_is_refused_not_waited_on(tmp_path):
    target = str(tmp_path / "m_tune.pt")
    os.mkfifo(header_path(target))
    with pytest.raises(TunedModelError, match="not a regular file"):
        load_tuned(target, source="x.py:f")
