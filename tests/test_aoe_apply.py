"""apply_bank: bank entries applied in place before DDP, with scene-train
semantics (same outputs and gradients as the untouched model)."""
from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

from aoe_full import apply_bank
from aoe_full.apply import AoeApplyWarning, bank_transform
from aoe_full.bank import OPAT, SGAT, BankContext
from aoe_full.graph_capture import capture
from aoe_full.measure import make_step, relative_error
from aoe_full.operators import find_operators
from aoe_full.partition import partition, structure_hash
from aoe_full.rewrite import is_tuned
from aoe_full.sample_models import small_convnet, small_transformer
from aoe_full.signature import call_signature, to_json
from aoe_full.strategies import compile_unavailable_reason
from gdat.bank.store import KnowledgeBase


def _store_ops(bank, model, x, scene, strategy_for_kind):
    """Write OPAT entries for the model's operators (as a tuning run would)."""
    work = copy.deepcopy(model).train(scene == "train")
    cap = capture(work, [x], ["x"], grad=scene == "train")
    ctx = BankContext(scene, "cpu")
    kb = KnowledgeBase(bank, OPAT)
    for op in find_operators(cap.graph, work, cap.values, scene == "train"):
        if op.kind in strategy_for_kind:
            kb.put(ctx.key(OPAT, op.signature), {"strategy": strategy_for_kind[op.kind]})


def _store_subgraphs(bank, model, x, strategy_for_owner):
    work = copy.deepcopy(model).train()
    cap = capture(work, [x], ["x"], grad=True)
    ctx = BankContext("train", "cpu")
    kb = KnowledgeBase(bank, SGAT)
    for sub in partition(cap.graph, work):
        if sub.owner in strategy_for_owner:
            with torch.enable_grad():
                sig = call_signature(tuple(cap.values[n.name] for n in sub.inputs), {})
            item = {"structure": structure_hash(sub, work), "inputs": to_json(sig)}
            kb.put(ctx.key(SGAT, item), {"strategy": strategy_for_owner[sub.owner]})


def _train_result(model, x):
    diff = [p for p in model.parameters() if p.requires_grad]
    return make_step(model, (x,), {}, diff, "train")()


def test_empty_bank_leaves_the_module_untouched(tmp_path):
    model = small_convnet()
    assert apply_bank(model, str(tmp_path / "bank")) is model
    assert not is_tuned(model) and "forward" not in model.__dict__


def test_operator_entries_apply_with_equal_outputs_and_gradients(tmp_path):
    bank = str(tmp_path / "bank")
    x = torch.randn(2, 3, 16, 16)
    _store_ops(bank, small_convnet(), x, "train",
               {"conv": "channels_last", "norm": "no_mkldnn", "linear": "threads1"})
    model, plain = small_convnet().train(), small_convnet().train()
    keys = list(model.state_dict())
    assert apply_bank(model, bank) is model
    assert is_tuned(model) and list(model.state_dict()) == keys
    applied = model.__dict__["_aoe_tuning"].applied["ops"]
    assert len(applied) == 7  # three convs, three batch norms, the head
    assert relative_error(_train_result(plain, x), _train_result(model, x)) <= 1.0
    model.eval()
    plain.eval()
    assert torch.allclose(model(x), plain(x), rtol=1e-4, atol=1e-5)  # falls back to eager


def test_infer_entries_are_not_applied_for_training(tmp_path):
    bank = str(tmp_path / "bank")
    x = torch.randn(2, 3, 16, 16)
    _store_ops(bank, small_convnet(), x, "infer", {"conv": "channels_last"})
    model = small_convnet()
    apply_bank(model, bank)
    assert not is_tuned(model)


def test_unseen_shapes_run_the_default(tmp_path):
    bank = str(tmp_path / "bank")
    _store_ops(bank, small_convnet(), torch.randn(2, 3, 16, 16), "train", {"conv": "channels_last"})
    model, plain = small_convnet(), small_convnet()
    apply_bank(model, bank)
    x = torch.randn(3, 3, 8, 8)
    assert relative_error(_train_result(plain, x), _train_result(model, x)) <= 1.0


def test_subgraph_entries_and_copies(tmp_path):
    bank = str(tmp_path / "bank")
    x = torch.randn(2, 8, 64)
    _store_ops(bank, small_transformer(), x, "train", {"attention": "sdpa_math"})
    _store_subgraphs(bank, small_transformer(), x, {"blocks.0": "opat"})
    model, plain = small_transformer(), small_transformer()
    apply_bank(model, bank)
    applied = model.__dict__["_aoe_tuning"].applied
    # both blocks share the structure, so both dispatch (the second on its own shapes)
    assert len(applied["subgraphs"]) == 2 and applied["ops"]
    assert relative_error(_train_result(plain, x), _train_result(model, x)) <= 1.0
    clone = copy.deepcopy(model)
    with torch.no_grad():
        clone.head.weight.mul_(2.0)
        plain.head.weight.mul_(2.0)
    assert torch.allclose(clone(x), plain(x), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(clone(x), model(x))


@pytest.mark.skipif(compile_unavailable_reason() is not None,
                    reason=str(compile_unavailable_reason()))
def test_compiled_subgraph_entry_keeps_gradients(tmp_path):
    bank = str(tmp_path / "bank")
    x = torch.randn(2, 8, 64)
    _store_subgraphs(bank, small_transformer(), x, {"blocks.1": "compiled"})
    model, plain = small_transformer(), small_transformer()
    apply_bank(model, bank)
    assert relative_error(_train_result(plain, x), _train_result(model, x)) <= 1.0


def test_under_ddp(tmp_path):
    bank = str(tmp_path / "bank")
    x = torch.randn(2, 3, 16, 16)
    _store_ops(bank, small_convnet(), x, "train", {"conv": "channels_last"})
    dist.init_process_group("gloo", store=dist.FileStore(os.path.join(tmp_path, "store"), 1),
                            rank=0, world_size=1)
    try:
        tuned = nn.parallel.DistributedDataParallel(apply_bank(small_convnet(), bank))
        plain = nn.parallel.DistributedDataParallel(small_convnet())
        for m in (tuned, plain):
            m(x).square().sum().backward()
        for (n, a), (_, b) in zip(tuned.module.named_parameters(), plain.module.named_parameters()):
            assert relative_error(b.grad, a.grad) <= 1.0, n
    finally:
        dist.destroy_process_group()


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return self.lin(x)
        return x


def test_untraceable_module_is_returned_unchanged_with_a_warning(tmp_path):
    bank = str(tmp_path / "bank")
    _store_ops(bank, small_convnet(), torch.randn(2, 3, 16, 16), "train", {"conv": "channels_last"})
    model = Untraceable()
    with pytest.warns(AoeApplyWarning):
        assert apply_bank(model, bank) is model
    assert not is_tuned(model)


def test_under_gdat_run_one_line_says_what_was_applied_or_why_nothing(tmp_path, monkeypatch, capfd):
    """``gdat-run --gdat-aoe-bank`` (the ``gdat.model_transforms`` entry point):
    nothing matching, a module torch.fx cannot trace, and entries applied, each
    one line on stderr."""
    monkeypatch.setenv("TUNE_BANK_PATH", str(tmp_path / "bank"))
    model = small_convnet().train()
    assert bank_transform(model) is model and not is_tuned(model)
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "no scene-train entry under" in lines[0] and "used as built" in lines[0]
    _store_ops(str(tmp_path / "bank"), small_convnet(), torch.randn(2, 3, 16, 16), "train", {"conv": "channels_last"})
    untraceable = Untraceable()
    assert bank_transform(untraceable) is untraceable and not is_tuned(untraceable)
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gdat: warning: --gdat-aoe-bank: the operator/subgraph bank "
                                                   "is not applied (") and "cannot be traced" in lines[0]
    assert bank_transform(model) is model and is_tuned(model)
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--gdat-aoe-bank: applied" in lines[0] and "operator" in lines[0]
