"""Engines as strategies (ONNX Runtime, OpenVINO, Inductor freezing) and the
whole model as one subgraph."""
from __future__ import annotations

import pytest
import torch

from aoe_full.choices import Choices, SubgraphChoice, apply_choices
from aoe_full.engines import engine_unavailable_reason
from aoe_full.graph_capture import capture
from aoe_full.measure import MeasureConfig, make_step, relative_error
from aoe_full.partition import WHOLE, partition, structure_hash, whole_graph
from aoe_full.rewrite import subgraph_functions
from aoe_full.sample_models import small_convnet
from aoe_full.signature import call_signature
from aoe_full.strategies import SUBGRAPH_STRATEGIES, CompileBudget, subgraph_strategies
from aoe_full.tuner import tune_item

FAST = MeasureConfig(warmup=1, rounds=3, sample_s=0.001)


def _needs(engine):
    reason = engine_unavailable_reason(engine)
    return pytest.mark.skipif(reason is not None, reason=f"{engine}: {reason}")


def _whole(model, x, grad=False):
    cap = capture(model, [x], ["x"], grad=grad)
    subs = partition(cap.graph, model)
    return cap, whole_graph(cap.graph, len(subs))


def test_whole_graph_is_every_call_node_and_reproduces_the_model():
    model = small_convnet().eval()
    x = torch.randn(2, 3, 16, 16)
    cap, whole = _whole(model, x)
    calls = [n for n in cap.graph.nodes if n.op in ("call_module", "call_function", "call_method")]
    assert whole.nodes == calls and whole.owner == WHOLE
    assert [n.op for n in whole.inputs] == ["placeholder"]
    fn = subgraph_functions(whole, {})["plain"]
    refs = tuple(model.get_submodule(p) for p in whole.refs)
    (y,) = fn(*refs, x)
    assert torch.equal(y, model(x))


@pytest.mark.parametrize("engine", [
    pytest.param("onnxrt", marks=_needs("onnxrt")),
    pytest.param("openvino", marks=_needs("openvino")),
    "compiled_freezing",
])
def test_engine_on_the_whole_model_is_verified_and_measured(engine):
    model = small_convnet().eval()
    x = torch.randn(2, 3, 16, 16)
    cap, whole = _whole(model, x)
    refs = tuple(model.get_submodule(p) for p in whole.refs)
    base = subgraph_functions(whole, {})["plain"]
    strategies = [SUBGRAPH_STRATEGIES["eager"], SUBGRAPH_STRATEGIES[engine]]
    result = tune_item(strategies, {"*": base}, refs + (x,), {}, len(refs), [], "infer", False,
                       FAST, CompileBudget(600), "t")
    assert result.status[engine] == "ok", result.status
    assert engine in result.timings and result.compile_s[engine] > 0


def test_inference_engines_are_skipped_with_the_reason_in_train():
    model = small_convnet().train()
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    cap, whole = _whole(model, x, grad=True)
    refs = tuple(model.get_submodule(p) for p in whole.refs)
    base = subgraph_functions(whole, {})["plain"]
    names = ["eager", "onnxrt", "openvino", "compiled_freezing"]
    result = tune_item([SUBGRAPH_STRATEGIES[n] for n in names], {"*": base}, refs + (x,), {},
                       len(refs), [x], "train", False, FAST, CompileBudget(600), "t")
    for n in names[1:]:
        assert result.status[n] == "skipped: inference only (no backward)"


def test_a_missing_engine_is_skipped_with_the_reason(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert engine_unavailable_reason("onnxrt").startswith("onnxruntime, onnx, onnxscript not installed")
    assert SUBGRAPH_STRATEGIES["openvino"].skip_reason("infer") == \
        "openvino not installed (pip install openvino)"


def test_every_subgraph_strategy_applies_to_the_whole_model():
    x = torch.randn(2, 3, 16, 16)
    names = [s.name for s in subgraph_strategies((x,), False, None)]
    assert {"compiled", "compiled_max_autotune", "compiled_freezing", "onnxrt", "openvino",
            "channels_last"} <= set(names)


@_needs("onnxrt")
def test_whole_model_choice_installs_alone_and_copies_get_their_own_engine():
    model = small_convnet().eval()
    x = torch.randn(2, 3, 16, 16)
    cap, whole = _whole(model, x)
    with torch.no_grad():
        sig = call_signature((x,), {})
    sub0 = partition(cap.graph, model)[0]
    choices = Choices(subgraphs=[
        SubgraphChoice(whole.first, structure_hash(whole, model), sig, "onnxrt"),
        SubgraphChoice(sub0.first, structure_hash(sub0, model), sig, "channels_last")])
    tuned = small_convnet().eval()
    applied = apply_choices(tuned, choices, ["x"])
    assert applied["whole_model"] and applied["subgraphs"] == [whole.first]
    step = make_step(tuned, (x,), {}, [], "infer")
    assert relative_error(make_step(model, (x,), {}, [], "infer")(), step()) <= 1.0
    # a copy with other weights runs its own engine, built from its own weights
    other = __import__("copy").deepcopy(tuned)
    with torch.no_grad():
        other.head.bias.add_(1.0)
        assert not torch.allclose(other(x), tuned(x))
        plain = small_convnet().eval()
        plain.load_state_dict(other.state_dict())
        assert relative_error(plain(x), other(x)) <= 1.0
