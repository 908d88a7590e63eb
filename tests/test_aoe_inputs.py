"""--input_shape parsing and model sources."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aoe_full.inputs import make_inputs, parse_input_shape
from aoe_full.model_source import parse_model_spec
from gdat.errors import UsageError

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True)
shapes = st.lists(st.integers(1, 64), min_size=1, max_size=5).map(tuple)


@given(st.dictionaries(names, shapes, min_size=1, max_size=4))
def test_round_trip(spec):
    text = ";".join(f"{k}:{','.join(map(str, v))}" for k, v in spec.items())
    assert parse_input_shape(text) == spec


@pytest.mark.parametrize("text", ["", "x", "x:", "x:1,,2", "x:1,-2", "1x:3", "x:1;x:2", "x:1.5"])
def test_bad_shapes(text):
    with pytest.raises(UsageError):
        parse_input_shape(text)


def test_inputs_are_seeded():
    a = make_inputs({"x": (2, 3)})["x"]
    b = make_inputs({"x": (2, 3)})["x"]
    assert a.shape == (2, 3) and (a == b).all()


def test_model_spec(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("")
    src = parse_model_spec(f"{f}:build", "pytorch")
    assert src.kind == "factory" and src.factory == "build" and src.name == "m_build"
    for bad in [str(f), f"{f}:", f"{f}:not-an-identifier", f"{tmp_path}/x.py:f"]:
        with pytest.raises(UsageError):
            parse_model_spec(bad, "pytorch")
    with pytest.raises(UsageError, match="ONNX.*not supported.*onnx2torch"):
        parse_model_spec(f"{f}:build", "5")
