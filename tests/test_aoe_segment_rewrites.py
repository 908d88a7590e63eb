"""The rewrites of a compiled segment's graph (``aoe_full.segment_rewrites``): a
tanh from exp within a few ulp of torch's, dropout from 15-bit uniforms with the
expectation of the input (mixed candidates only), attention's math as torch's."""
import math

import pytest
import torch
import torch.nn.functional as F

from aoe_full.segment_rewrites import attention_15bit, dropout_15bit, rewrite, tanh_from_exp


def test_tanh_from_exp_is_within_a_few_ulp_of_tanh_and_keeps_its_special_values():
    x = torch.linspace(-20, 20, 400_001)
    exact = torch.tanh(x.double())
    ulps = (tanh_from_exp(x).double() - exact).abs() / (torch.finfo(torch.float32).eps * exact.abs().clamp(min=1e-38))
    assert ulps.max().item() < 3
    special = torch.tensor([0.0, -0.0, 1e-30, -1e-30, math.inf, -math.inf, 100.0, -100.0])
    assert torch.equal(tanh_from_exp(special), torch.tanh(special))
    assert torch.signbit(tanh_from_exp(torch.tensor([-0.0]))).item()
    assert tanh_from_exp(torch.tensor([math.nan])).isnan().item()


def test_dropout_15bit_keeps_one_minus_p_in_expectation_and_follows_the_seed():
    x = torch.ones(1_000_000)
    torch.manual_seed(3)
    y = dropout_15bit(x, 0.1)
    kept = (y != 0).float().mean().item()
    assert abs(kept - 0.9) < 5 * math.sqrt(0.09 / x.numel())
    assert abs(y.mean().item() - 1.0) < 5 * math.sqrt(0.1 / 0.9 / x.numel())
    torch.manual_seed(3)
    assert torch.equal(dropout_15bit(x, 0.1), y)
    assert not torch.equal(dropout_15bit(x, 0.1), y)
    odd = torch.randn(3, 5, 7)
    assert dropout_15bit(odd, 0.5).shape == odd.shape
    assert dropout_15bit(odd, 0.5, training=False) is odd and torch.equal(dropout_15bit(odd, 1.0), odd * 0)


@pytest.mark.parametrize("mask", ["causal", "bool", "float"])
def test_attention_15bit_without_dropout_is_torch_attention(mask):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 16, 8, generator=gen) for _ in range(3))
    kw = {"is_causal": True} if mask == "causal" else {
        "attn_mask": torch.rand(16, 16, generator=gen) > 0.3 if mask == "bool" else torch.randn(16, 16, generator=gen)}
    torch.testing.assert_close(attention_15bit(q, k, v, **kw, scale=0.3), F.scaled_dot_product_attention(
        q, k, v, **kw, scale=0.3))


def _graph(fn):
    return torch.fx.symbolic_trace(fn)


def _uses(x):
    y = torch.tanh(x) + F.dropout(x, 0.1, True, False) + F.dropout(x, 0.1, True, True)
    q = x.view(1, 1, 4, 4)
    return y, F.scaled_dot_product_attention(q, q, q, dropout_p=0.1), F.scaled_dot_product_attention(q, q, q)


def test_rewrite_changes_tanh_always_and_random_calls_only_for_mixed_candidates():
    exact, mixed = _graph(_uses), _graph(_uses)
    assert rewrite(exact, mixed=False) == 1
    assert rewrite(mixed, mixed=True) == 3
    targets = [n.target for n in mixed.graph.nodes if n.op == "call_function"]
    assert tanh_from_exp in targets and dropout_15bit in targets and attention_15bit in targets
    assert F.dropout in targets and F.scaled_dot_product_attention in targets  # inplace; no dropout
    assert torch.tanh not in [n.target for n in exact.graph.nodes] and F.dropout in \
        [n.target for n in exact.graph.nodes]
    x = torch.randn(16)
    torch.manual_seed(0)
    y, a, b = mixed(x.clone())
    assert y.shape == x.shape and a.shape == b.shape == (1, 1, 4, 4)
