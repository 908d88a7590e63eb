"""OPAT and SGAT end to end on real models, the bank decisions, and the
tuned-model file."""
from __future__ import annotations

import os
import shutil

import pytest
import torch

from aoe_full import TuneConfig, load_tuned, tune_operators, tune_subgraphs
from aoe_full.bank import decide
from aoe_full.choices import Choices, SubgraphChoice
from aoe_full.errors import TunedModelError
from aoe_full.graph_capture import capture
from aoe_full.inputs import InputSpec
from aoe_full.measure import MeasureConfig, make_step, relative_error
from aoe_full.model_source import parse_model_spec
from aoe_full.partition import partition, structure_hash
from aoe_full.sample_models import explicit_attention_transformer, small_convnet
from aoe_full.signature import call_signature
from aoe_full.tuned_model import save_tuned
from gdat.bank.store import KnowledgeBase

FAST = MeasureConfig(warmup=2, rounds=5, sample_s=0.001)


def _cfg(bank, scene, candidates, repeat=False):
    return TuneConfig(scene=scene, bank_root=bank, repeat=repeat,
                      candidates=frozenset(candidates), measure=FAST)


def _grads(model, x):
    return make_step(model, (x,), {}, [p for p in model.parameters()], "train")()


def test_opat_explicit_attention_train_then_all_hits(tmp_path):
    bank = str(tmp_path / "bank")
    x = torch.randn(2, 8, 64)
    model = explicit_attention_transformer()
    cfg = _cfg(bank, "train", {"threads1", "no_mkldnn"})
    first = tune_operators(model, [x], ["x"], cfg)
    kinds = {i.label.split()[0] for i in first.items}
    assert {"matmul", "softmax", "linear", "norm"} <= kinds
    s = first.summary
    assert s.total_num == len(first.items) == first.measured_items
    assert s.repo_add_num + s.repo_unsatisfied_num == s.total_num
    assert first.comparison.relative_error <= 1.0
    second = tune_operators(model, [x], ["x"], cfg)
    assert second.summary.repo_hit_num == second.summary.total_num == s.total_num
    assert second.measured_items == 0
    assert second.candidate_choices == first.candidate_choices
    assert [i.strategy for i in second.items] == [i.strategy for i in first.items]
    plain = explicit_attention_transformer().train()
    assert relative_error(_grads(plain, x), _grads(second.tuned, x)) <= 1.0


def test_sgat_convnet_then_all_hits(tmp_path):
    bank = str(tmp_path / "bank")
    x = torch.randn(2, 3, 16, 16)
    model = small_convnet()
    cfg = _cfg(bank, "train", {"channels_last"})
    first = tune_subgraphs(model, [x], ["x"], cfg)
    # the whole model first, then the seven subgraphs of the partition
    assert first.summary.total_num == len(first.items) == 8
    assert first.items[0].label.startswith("subgraph <whole model>")
    # every subgraph with a 4-D input (all but the linear head) tried channels_last
    assert ["channels_last" in i.candidates for i in first.items] == [True] * 7 + [False]
    assert set(first.configurations) <= {"whole model", "subgraphs", "tuned"}
    second = tune_subgraphs(model, [x], ["x"], cfg)
    assert second.summary.repo_hit_num == 8 and second.measured_items == 0
    assert second.candidate_choices == first.candidate_choices


def test_decide_outcomes(tmp_path):
    kb = KnowledgeBase(str(tmp_path), "opat")
    key = {"item": 1}
    assert decide(kb, key, "eager", {"strategy": "eager"}, lambda s: False).outcome == "unsatisfied"
    assert kb.get(key) == {"strategy": "eager"}
    d = decide(kb, key, "compiled", {"strategy": "compiled"}, lambda s: s == "eager")
    assert (d.outcome, d.written) == ("update", True)
    d = decide(kb, key, "threads1", {"strategy": "threads1"}, lambda s: False)
    assert (d.outcome, d.strategy, d.written) == ("reserved", "compiled", False)
    assert kb.get(key) == {"strategy": "compiled"}
    key2 = {"item": 2}
    assert decide(kb, key2, "compiled", {"strategy": "compiled"}, lambda s: True).outcome == "add"


def test_tuned_model_file_round_trip_and_errors(tmp_path):
    src_file = tmp_path / "models.py"
    shutil.copy(os.path.join(os.path.dirname(__file__), "..", "aoe_full", "sample_models.py"),
                src_file)
    spec = f"{src_file}:small_convnet"
    source = parse_model_spec(spec, "pytorch")
    x = torch.randn(2, 3, 16, 16)
    run = tune_subgraphs(small_convnet(), [x], ["x"],
                         _cfg(str(tmp_path / "bank"), "train", {"channels_last"}))
    first = run.items[1].instances[0]
    # record a real strategy choice for the first block, so the file carries one
    work = small_convnet().train()
    cap = capture(work, [x], ["x"], grad=True)
    s0 = partition(cap.graph, work)[0]
    with torch.enable_grad():
        sig = call_signature(tuple(cap.values[n.name] for n in s0.inputs), {})
    run.choices = Choices(subgraphs=[SubgraphChoice(first, structure_hash(s0, work), sig,
                                                    "channels_last")])
    model = small_convnet()
    with torch.no_grad():
        model.head.bias.fill_(0.5)
    path = str(tmp_path / "out" / "m_tune.pt")
    save_tuned(path, run, source, "fx", [InputSpec("x", (2, 3, 16, 16))], model)
    loaded = load_tuned(path, source=spec)
    assert loaded.__dict__["_aoe_tuning"].applied["subgraphs"] == [first]
    assert relative_error(_grads(model.train(), x), _grads(loaded, x)) <= 1.0

    with pytest.raises(TunedModelError, match="pass that file"):
        load_tuned(path)
    src_file.write_text(src_file.read_text() + "\n# edited\n")
    with pytest.raises(TunedModelError, match="does not match"):
        load_tuned(path, source=spec)
    os.remove(src_file)
    with pytest.raises(TunedModelError, match="does not exist"):
        load_tuned(path, source=spec)
    with pytest.raises(TunedModelError):
        load_tuned(str(tmp_path / "missing.pt"), source=spec)
