"""The rewrites of a compiled segment's graph (``aoe_full.segment_rewrites``): a
tanh from exp within a few ulp of torch's, with finite gradients everywhere; dropout
from 15-bit uniforms with the expectation of the input (mixed candidates only);
attention's math as torch's."""
import math

import pytest
import torch
import torch.nn.functional as F

from aoe_full.segment_rewrites import attention_15bit, dropout_15bit, rewrite, tanh_from_exp


def _ulps(got: torch.Tensor, exact: torch.Tensor) -> float:
    """The worst distance of float32 ``got`` from float64 ``exact`` in units of the last place of ``exact``."""
    mag = exact.float().abs()
    ulp = (torch.nextafter(mag, torch.tensor(math.inf)) - mag).double()
    return ((got.double() - exact).abs() / ulp).max().item()


def test_tanh_from_exp_is_within_2_ulp_of_tanh_and_keeps_its_special_values():
    x = torch.linspace(-20, 20, 400_001)
    assert _ulps(tanh_from_exp(x), torch.tanh(x.double())) < 2
    near = torch.linspace(-0.6, 0.6, 200_001)
    assert _ulps(tanh_from_exp(near), torch.tanh(near.double())) < 2
    special = torch.tensor([0.0, -0.0, 1e-30, -1e-30, math.inf, -math.inf, 100.0, -100.0])
    assert torch.equal(tanh_from_exp(special), torch.tanh(special))
    assert torch.signbit(tanh_from_exp(torch.tensor([-0.0]))).item()
    assert tanh_from_exp(torch.tensor([math.nan])).isnan().item()


def test_tanh_from_exp_has_tanh_gradient_and_no_nan_for_large_inputs():
    x = torch.tensor([0.0, 0.1, -0.2, 0.4, -0.6, -1.0, 3.0, 19.0, 50.0, -50.0, 1e5, -1e5, math.inf, -math.inf],
                     requires_grad=True)
    (ours,) = torch.autograd.grad(tanh_from_exp(x).sum(), x)
    (theirs,) = torch.autograd.grad(torch.tanh(x).sum(), x)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)


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
    assert dropout_15bit(odd, 0.5, training=False) is odd
    for p in (1.0, 1 - 1e-6):
        assert torch.equal(dropout_15bit(odd, p), odd * 0)


@pytest.mark.parametrize("mask", ["causal", "causal, longer keys", "bool, broadcast", "float"])
def test_attention_15bit_is_torch_attention_and_drops_weights_with_dropout_15bit(mask):
    gen = torch.Generator().manual_seed(0)
    keys = 24 if "longer" in mask else 16
    q = torch.randn(2, 3, 16, 8, generator=gen)
    k, v = (torch.randn(2, 3, keys, 8, generator=gen) for _ in range(2))
    kw = {"is_causal": True} if mask.startswith("causal") else {
        "attn_mask": torch.rand(1, 1, 16, keys, generator=gen) > 0.3 if mask.startswith("bool") else
        torch.randn(16, keys, generator=gen)}
    torch.testing.assert_close(attention_15bit(q, k, v, **kw, scale=0.3),
                               F.scaled_dot_product_attention(q, k, v, **kw, scale=0.3))
    torch.manual_seed(5)
    dropped = attention_15bit(q, k, v, **kw, dropout_p=0.5, scale=0.3)
    weights = F.scaled_dot_product_attention(q, k, torch.eye(keys).expand(2, 3, keys, keys), **kw, scale=0.3)
    torch.manual_seed(5)
    torch.testing.assert_close(dropped, dropout_15bit(weights, 0.5) @ v)


def _captured(fn, *args):
    """The graph Dynamo captures for ``fn(*args)`` (with its example values), not compiled."""
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    torch.compile(fn, backend=capture, fullgraph=True)(*args)
    (gm,) = graphs
    return gm


def _uses(x):
    y = torch.tanh(x) + F.dropout(x, 0.1, True, False) + F.dropout(x, 0.1, True, True)
    q = x.view(1, 1, 4, 4)
    return y, F.scaled_dot_product_attention(q, q, q, dropout_p=0.1), F.scaled_dot_product_attention(q, q, q)


def test_rewrite_changes_tanh_always_and_random_calls_only_for_mixed_candidates():
    x = torch.randn(16)
    exact, mixed = _captured(_uses, x), _captured(_uses, x)
    assert rewrite(exact, mixed=False) == 1
    assert rewrite(mixed, mixed=True) == 3
    targets = [n.target for n in mixed.graph.nodes if n.op == "call_function"]
    assert tanh_from_exp in targets and dropout_15bit in targets and attention_15bit in targets
    assert F.dropout in targets and F.scaled_dot_product_attention in targets  # inplace; no dropout
    assert torch.tanh not in [n.target for n in exact.graph.nodes] and F.dropout in \
        [n.target for n in exact.graph.nodes]
    torch.manual_seed(0)
    y, a, b = mixed(x.clone())
    assert y.shape == x.shape and a.shape == b.shape == (1, 1, 4, 4)
    assert rewrite(_captured(_uses, x.double()), mixed=False) == 0  # float64 keeps tanh


def test_through_aot_autograd_the_rewritten_tanh_keeps_tanh_gradient():
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    def backend(gm, example_inputs):
        assert rewrite(gm, mixed=False) == 1
        return aot_autograd(fw_compiler=lambda g, _: make_boxed_func(g.forward))(gm, example_inputs)

    torch._dynamo.reset()
    compiled = torch.compile(lambda x: torch.tanh(x) * 3, backend=backend)
    x = torch.tensor([0.0, 0.1, -0.3, 0.7, 2.0, -50.0, 1e5, math.inf], requires_grad=True)
    y = compiled(x)
    (ours,) = torch.autograd.grad(y.sum(), x)
    (theirs,) = torch.autograd.grad((torch.tanh(x) * 3).sum(), x)
    torch.testing.assert_close(y, torch.tanh(x) * 3)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
