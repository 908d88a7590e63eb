"""Every operator strategy gives the default's outputs and gradients (scene
train) within the stated tolerance, on real operators."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from aoe_full.measure import make_step, relative_error
from aoe_full.operators import invoke_module
from aoe_full.strategies import DEFAULT, OP_STRATEGIES, compile_unavailable_reason, op_strategies
from aoe_full.tuner import diff_tensors


def _leaf(*shape):
    return torch.randn(*shape).requires_grad_()


CASES = {
    "conv": (invoke_module, lambda: (nn.Conv2d(4, 8, 3, padding=1), _leaf(2, 4, 8, 8)), True),
    "batch_norm": (invoke_module, lambda: (nn.BatchNorm2d(4), _leaf(2, 4, 8, 8)), True),
    "linear": (invoke_module, lambda: (nn.Linear(16, 8), _leaf(4, 16)), True),
    "matmul": (torch.matmul, lambda: (_leaf(2, 4, 8, 16), _leaf(2, 4, 16, 8)), False),
    "bmm": (torch.bmm, lambda: (_leaf(3, 8, 16), _leaf(3, 16, 4)), False),
    "softmax": (F.softmax, lambda: (_leaf(4, 32), -1), False),
    "layer_norm": (invoke_module, lambda: (nn.LayerNorm(16), _leaf(4, 16)), True),
    "sdpa": (F.scaled_dot_product_attention, lambda: (_leaf(2, 4, 8, 16), _leaf(2, 4, 8, 16),
                                                       _leaf(2, 4, 8, 16)), False),
}
KIND = {"conv": "conv", "batch_norm": "norm", "linear": "linear", "matmul": "matmul",
        "bmm": "bmm", "softmax": "softmax", "layer_norm": "norm", "sdpa": "attention"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_eager_strategies_are_equivalent(case):
    base, make, module_op = CASES[case]
    torch.manual_seed(0)
    args = make()
    skip = 1 if module_op else 0
    diff = diff_tensors(args[skip:], [args[0]] if module_op else [])
    strategies = [s for s in op_strategies(KIND[case], args[skip:], module_op, None)
                  if not s.compiled]
    assert strategies[0].name == DEFAULT and len(strategies) >= 2
    ref = make_step(base, args, {}, diff, "train")()
    assert ref[1], "the train step must produce gradients"
    for s in strategies[1:]:
        got = make_step(s.build(base, skip, f"t_{case}"), args, {}, diff, "train")()
        assert relative_error(ref, got) <= 1.0, s.name


def test_channels_last_changes_the_layout_it_claims():
    conv = nn.Conv2d(4, 8, 3)
    seen = []
    conv.register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous(
        memory_format=torch.channels_last)))
    impl = OP_STRATEGIES["channels_last"].build(invoke_module, 1, "cl")
    out = impl(conv, torch.randn(2, 4, 8, 8))
    assert seen == [True] and out.is_contiguous()


def test_threads1_restores_the_thread_count():
    n = torch.get_num_threads()
    impl = OP_STRATEGIES["threads1"].build(lambda x: torch.get_num_threads(), 0, "t")
    assert impl(None) == 1 and torch.get_num_threads() == n


@pytest.mark.skipif(compile_unavailable_reason() is not None,
                    reason=str(compile_unavailable_reason()))
def test_compiled_linear_is_equivalent_with_gradients():
    torch.manual_seed(0)
    lin, x = nn.Linear(16, 8), _leaf(4, 16)
    diff = diff_tensors((x,), [lin])
    ref = make_step(invoke_module, (lin, x), {}, diff, "train")()
    impl = OP_STRATEGIES["compiled"].build(invoke_module, 1, "test_compiled_linear")
    got = make_step(impl, (lin, x), {}, diff, "train")()
    assert relative_error(ref, got) <= 1.0
