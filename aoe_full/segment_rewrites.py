"""Rewrites of a compiled segment's graph (the torch-level graph Dynamo captured,
before Inductor) into calls that compute the same on the CPU in less time.

* ``torch.tanh`` on float32, bfloat16 and float16 tensors (every compiled segment):
  Inductor's vectorized ``tanh`` (SLEEF, 1 ulp) costs four times its ``exp``;
  :func:`tanh_from_exp` computes ``tanh(x) = sign(x) (1 - 2 / (exp(2|x|) + 1))`` for
  ``|x| >= 1/2`` and the Taylor polynomial of ``tanh`` to the 15th power below
  (truncation below 1e-8 relative), within 1.6 ulp of ``tanh`` over [-20, 20] in
  float32 (torch's own: 0.56); its gradient is ``tanh``'s, ``g (1 - y^2)`` from the
  value ``y`` (an autograd function, so the backward neither differentiates the
  formula nor meets its overflow).  Float64 graphs keep ``tanh``: 1e-8 is not
  float64 rounding.  On the GPT-2
  LM's MLP (1024 x 1536 activations, one thread) it halves the compiled forward and
  backward of the tanh GELU (4.1 ms against 7.3 ms).  The exact check of
  :mod:`aoe_full.whole_model` judges the whole model with it.
* dropout (mixed-precision candidates only, :func:`dropout_15bit`): aten's
  ``bernoulli_`` draws one Mersenne-Twister number per element (5.7 ns each here,
  10 % of the LM's bf16 training step); the rewrite draws one 31-bit number per two
  elements (``random_`` on int32) and keeps an element when its 15 bits are at least
  ``round(p * 2**15)``, scaling kept elements by ``2**15 / (2**15 - threshold)`` so
  every output's expectation is its input's.  Different random numbers from the model
  as built, hence mixed candidates only: their loss check compares training losses.
  ``scaled_dot_product_attention`` with ``dropout_p > 0`` becomes the same math
  (scores, causal or given mask, softmax that gives zero rows for fully masked ones,
  dropout, weighted sum), so its dropout is rewritten too (torch runs that math on
  the CPU when dropout is on).

A call the rewrite cannot express as it is (``inplace=True``, grouped-query
attention) is left.  The rewritten graph goes to Inductor as any other, so its
caches key on what is compiled.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["tanh_from_exp", "dropout_15bit", "attention_15bit", "rewrite"]

#: Taylor coefficients of tanh(x) / x in powers of x**2.
_TANH_SERIES = (1.0, -1 / 3, 2 / 15, -17 / 315, 62 / 2835, -1382 / 155925, 21844 / 6081075, -929569 / 638512875)
_SERIES_BELOW = 0.5
_BITS = 15


def _tanh_value(x: torch.Tensor) -> torch.Tensor:
    series = torch.full_like(x, _TANH_SERIES[-1])
    x2 = x * x
    for c in reversed(_TANH_SERIES[:-1]):
        series = c + x2 * series
    a = x.abs()
    y = torch.where(a < _SERIES_BELOW, x * series, torch.sign(x) * (1 - 2 / (torch.exp(2 * a) + 1)))
    return y.to(x.dtype)  # as tanh's (an autocast that computes exp in float32 would promote)


class _TanhFromExp(torch.autograd.Function):
    """The value from exp, the gradient ``tanh``'s: ``g (1 - y^2)``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        y = _tanh_value(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return grad * (1 - y * y)


def tanh_from_exp(input: torch.Tensor) -> torch.Tensor:
    """``tanh(input)`` from ``exp``, with ``tanh``'s gradient (module docstring)."""
    return _TanhFromExp.apply(input)


def dropout_15bit(input: torch.Tensor, p: float = 0.5, training: bool = True,
                  inplace: bool = False) -> torch.Tensor:
    """Dropout with masks from 15-bit uniforms (module docstring), ``F.dropout``'s
    signature; ``inplace`` is refused by :func:`rewrite` before it gets here."""
    if not training or p == 0:
        return input
    threshold = round(p * 2 ** _BITS)
    if threshold >= 2 ** _BITS:
        return input * 0
    n = input.numel()
    bits = torch.empty((n + 1) // 2, dtype=torch.int32, device=input.device).random_()
    uniform = bits.view(torch.int16)[:n].reshape(input.shape) & (2 ** _BITS - 1)
    return input * (uniform >= threshold) * (2 ** _BITS / (2 ** _BITS - threshold))


def attention_15bit(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0, is_causal: bool = False,
                    scale: float | None = None, enable_gqa: bool = False) -> torch.Tensor:
    """``scaled_dot_product_attention``'s math with :func:`dropout_15bit` (module
    docstring), its signature; ``enable_gqa`` is refused by :func:`rewrite` before
    it gets here."""
    scores = query @ key.transpose(-2, -1) * (1 / math.sqrt(query.size(-1)) if scale is None else scale)
    if is_causal:
        causal = torch.ones(query.size(-2), key.size(-2), dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~causal, -math.inf)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, -math.inf) if attn_mask.dtype == torch.bool else scores + attn_mask
    weights = torch.ops.aten._safe_softmax(scores, -1)
    return dropout_15bit(weights, dropout_p) @ value


def _constant(node: torch.fx.Node, index: int, name: str, default: Any) -> Any:
    """A call's argument by position or name, or ``default``."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _low_precision(node: torch.fx.Node) -> bool:
    """Whether Dynamo recorded ``node``'s value as a float32, bfloat16 or float16 tensor."""
    value = node.meta.get("example_value")
    return isinstance(value, torch.Tensor) and value.dtype in (torch.float32, torch.bfloat16, torch.float16)


def _attention_drops(node: torch.fx.Node) -> bool:
    """Whether a ``scaled_dot_product_attention`` call applies dropout (a constant
    ``dropout_p > 0``) and :func:`attention_15bit` can take it (no grouped-query attention)."""
    p = _constant(node, 4, "dropout_p", 0.0)
    return isinstance(p, (int, float)) and p > 0 and not _constant(node, 7, "enable_gqa", False)


def rewrite(gm: torch.fx.GraphModule, mixed: bool) -> int:
    """Rewrite ``gm``'s graph (as Dynamo captured it, with each node's example
    value) in place (module docstring; the dropout rewrites only when ``mixed``);
    returns how many calls were rewritten."""
    done = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is torch.tanh and not node.kwargs and _low_precision(node):
            node.target = tanh_from_exp
        elif mixed and node.target is F.dropout and _constant(node, 3, "inplace", False) is False:
            node.target = dropout_15bit
        elif mixed and node.target is F.scaled_dot_product_attention and _attention_drops(node):
            node.target = attention_15bit
        else:
            continue
        done += 1
    if done:
        gm.recompile()
    return done
