"""Convolutions as one matrix product each (im2col in NHWC), chosen per convolution
by measurement: an operator choice of the mixed channels-last whole-model candidate.

*Model.*  A 2-D convolution (stride ``(sh, sw)``, zero padding ``(ph, pw)``, one group,
no dilation) ``y[n,o,i,j] = b[o] + sum_{c,u,v} w[o,c,u,v] xp[n, sh*i+u, sw*j+v, c]``,
``xp`` the zero-padded input in NHWC order, is one matrix product

    Y[(n,i,j), o] = X[(n,i,j), (u,v,c)] . W[o, (u,v,c)]^T  (+ b[o])

where ``X`` gathers each output position's ``kh*kw*C`` inputs (one strided copy of
the padded input) and ``W`` is the weight read in ``(o,u,v,c)`` order (a free view
of a channels-last weight).  The backward is two more products, ``dW = dY^T X`` and
``dX = dY W``, ``dX`` scattered back onto the padded input by ``kh*kw`` strided adds
(accumulated in float32) and cropped; ``db = sum dY``.  Each product costs the
convolution's ``2*N*Ho*Wo*O*kh*kw*C`` FLOPs; ``X`` holds ``kh*kw/(sh*sw)`` times the
input's elements, so the gathers and scatters cost more the larger the map.  On this
machine's CPU, oneDNN's bf16 convolution backward on small maps (ResNet-18's last
stages, 4 x 4 and 7 x 7) is several times slower than the same FLOPs as products;
on large maps it is faster.  Hence :func:`choose` times, for every distinct
convolution of the model (its input shape, dtype and layout as the candidate runs
it), forward plus backward as built and as a product, in paired rounds with the
sign test of :func:`aoe_full.measure.compare`, after checking that the product
gives the convolution's output and gradients within the autocast dtype's tolerance
(:func:`aoe_full.measure.relative_error`, every tensor in that dtype).

:class:`GemmConvForward` replaces a chosen ``torch.nn.Conv2d``'s ``_conv_forward``
(what its ``forward`` calls).  It computes as a product only under CPU autocast
(where it was measured: the product runs in the autocast dtype, as the convolution
would); otherwise it calls ``F.conv2d`` as the module does.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_map

from aoe_full.measure import MeasureConfig, finite_or_none, make_step, measure, relative_error, timed_fields

__all__ = ["GemmConvForward", "eligible", "use_gemm", "ConvChoice", "choose", "chosen_modules"]


def eligible(module: torch.nn.Module) -> bool:
    """Whether ``module`` is a ``torch.nn.Conv2d`` (forward not overridden) this
    module can compute: one group, no dilation, numeric zero padding."""
    return (isinstance(module, torch.nn.Conv2d) and type(module).forward is torch.nn.Conv2d.forward
            and type(module)._conv_forward is torch.nn.Conv2d._conv_forward and module.groups == 1
            and tuple(module.dilation) == (1, 1) and module.padding_mode == "zeros"
            and not isinstance(module.padding, str))


class _Im2colConv(torch.autograd.Function):
    """The product of the module docstring on ``x`` (N, C, H, W), ``weight`` (O, C,
    kh, kw) and ``bias`` (O or None), all of one dtype; the output is NHWC in memory
    (channels-last strides)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                stride: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
        n, c, h, w = x.shape
        o, _, kh, kw = weight.shape
        (sh, sw), (ph, pw) = stride, padding
        ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, pw, pw, ph, ph)).contiguous()
        s_n, s_h, s_w, s_c = xp.stride()
        cols = xp.as_strided((n, ho, wo, kh, kw, c), (s_n, s_h * sh, s_w * sw, s_h, s_w, s_c)
                             ).reshape(n * ho * wo, kh * kw * c)
        wm = weight.permute(0, 2, 3, 1).reshape(o, kh * kw * c)
        y = cols @ wm.t() if bias is None else torch.addmm(bias, cols, wm.t())
        ctx.save_for_backward(cols, wm)
        ctx.geometry = (n, c, h, w, o, kh, kw, ho, wo, sh, sw, ph, pw)
        ctx.has_bias = bias is not None
        return y.view(n, ho, wo, o).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        cols, wm = ctx.saved_tensors
        n, c, h, w, o, kh, kw, ho, wo, sh, sw, ph, pw = ctx.geometry
        g = gy.permute(0, 2, 3, 1).reshape(n * ho * wo, o)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gcols = (g @ wm).view(n, ho, wo, kh, kw, c)
            gxp = torch.zeros(n, h + 2 * ph, w + 2 * pw, c, dtype=torch.float32, device=g.device)
            for u in range(kh):
                for v in range(kw):
                    gxp[:, u:u + sh * (ho - 1) + 1:sh, v:v + sw * (wo - 1) + 1:sw, :] += gcols[:, :, :, u, v, :]
            gx = gxp[:, ph:ph + h, pw:pw + w, :].to(cols.dtype).permute(0, 3, 1, 2)
        if ctx.needs_input_grad[1]:
            gw = (g.t() @ cols).view(o, kh, kw, c).permute(0, 3, 1, 2)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(0)
        return gx, gw, gb, None, None


class GemmConvForward:
    """A ``Conv2d._conv_forward`` computing the convolution as one product
    (module docstring) under CPU autocast, in the autocast dtype; ``F.conv2d``
    otherwise.  Holds only the geometry, so a module carrying it copies and
    pickles like any other."""

    def __init__(self, stride: tuple[int, int], padding: tuple[int, int]) -> None:
        self.stride = (int(stride[0]), int(stride[1]))
        self.padding = (int(padding[0]), int(padding[1]))

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if x.dim() != 4 or x.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
            return F.conv2d(x, weight, bias, self.stride, self.padding)
        dtype = torch.get_autocast_dtype("cpu")
        with torch.autocast("cpu", enabled=False):
            return _Im2colConv.apply(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype),
                                     self.stride, self.padding)


def use_gemm(module: torch.nn.Module, names: tuple[str, ...]) -> int:
    """Compute the eligible convolutions of ``module`` named ``names`` as products,
    in place; how many there were (names that do not name one are skipped: bank
    entries are read, never trusted)."""
    wanted, count = set(names), 0
    for name, m in module.named_modules():
        if name in wanted and eligible(m):
            m._conv_forward = GemmConvForward(m.stride, m.padding)
            count += 1
    return count


@dataclass(frozen=True)
class ConvChoice:
    """One distinct convolution of the model (``modules`` share its geometry and
    input): forward + backward as built (``built_ms``) and as a product
    (``gemm_ms``), ms per call, medians of paired rounds, with the sign test's
    verdict; ``error``: the product's worst relative error on the output and
    gradients against the convolution's, all in the autocast dtype, in units of its
    tolerance (<= 1 passes)."""

    modules: tuple[str, ...]
    input_shape: tuple[int, ...]
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    error: float
    built_ms: float
    gemm_ms: float
    median_ratio: float
    wins: int
    rounds: int
    faster: bool

    @property
    def chosen(self) -> bool:
        return self.error <= 1.0 and self.faster

    def to_dict(self) -> dict[str, Any]:
        return {"modules": list(self.modules), "input_shape": list(self.input_shape),
                "out_channels": self.out_channels, "kernel": list(self.kernel), "stride": list(self.stride),
                "error_in_tolerance_units": finite_or_none(self.error), "conv_ms": finite_or_none(self.built_ms),
                "matrix_product_ms": finite_or_none(self.gemm_ms), "median_ratio": finite_or_none(self.median_ratio),
                "rounds_faster": f"{self.wins}/{self.rounds}",
                "chosen": self.chosen}

    def describe(self) -> str:
        more = f" (+{len(self.modules) - 1} alike)" if len(self.modules) > 1 else ""
        shape = "x".join(map(str, self.input_shape))
        verdict = "matrix product" if self.chosen else (
            f"as built: product off by {self.error:.2g} x the tolerance" if self.error > 1.0
            else "as built: not faster by the sign test")
        return (f"{self.modules[0]}{more} {shape} -> {self.out_channels}, {self.kernel[0]}x{self.kernel[1]}/"
                f"{self.stride[0]}: {self.built_ms:.2f} -> {self.gemm_ms:.2f} ms (median ratio "
                f"{self.median_ratio:.3f}, {self.wins}/{self.rounds} rounds faster): {verdict}")


def _inputs_seen(model: torch.nn.Module, inputs: list[torch.Tensor]) -> dict[str, tuple[Any, ...]]:
    """Per eligible convolution of ``model``, what its first call of one forward of
    ``model(*inputs)`` received: shape, dtype, memory format, whether it requires
    grad, and the autocast dtype (``None`` outside autocast)."""
    seen: dict[str, tuple[Any, ...]] = {}

    def record(name: str) -> Any:
        def hook(_: torch.nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0] if args else None
            if name in seen or not isinstance(x, torch.Tensor) or x.dim() != 4 or x.device.type != "cpu":
                return
            layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not \
                x.is_contiguous() else torch.contiguous_format
            autocast = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
            seen[name] = (tuple(x.shape), x.dtype, layout, x.requires_grad, autocast)
        return hook

    handles = [m.register_forward_pre_hook(record(n)) for n, m in model.named_modules() if eligible(m)]
    try:
        model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return seen


def _steps(conv: torch.nn.Module, seen: tuple[Any, ...]) -> tuple[Any, Any]:
    """Forward + backward steps of ``conv`` as built and as a product, on one
    random input as the model gave it, under the autocast the model ran it in."""
    shape, dtype, layout, requires_grad, autocast = seen
    gemm = copy.deepcopy(conv)
    gemm._conv_forward = GemmConvForward(conv.stride, conv.padding)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).to(dtype).contiguous(memory_format=layout).requires_grad_(requires_grad)

    def step_of(m: torch.nn.Module) -> Any:
        def fn(t: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cpu", dtype=autocast):
                return m(t)
        diff = ([x] if requires_grad else []) + [p for p in m.parameters() if p.requires_grad]
        return make_step(fn, (x,), {}, diff, "train")
    return step_of(conv), step_of(gemm)


def _in_dtype(result: Any, dtype: torch.dtype) -> Any:
    """``result`` with its floating tensors in ``dtype``, so that
    :func:`aoe_full.measure.relative_error` judges all of them by ``dtype``'s
    tolerance (a product in bf16 gives float32 parameters bf16 gradients)."""
    return tree_map(lambda t: t.detach().to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t,
                    result)


def choose(model: torch.nn.Module, inputs: list[torch.Tensor], cfg: MeasureConfig) -> list[ConvChoice]:
    """Every distinct eligible convolution ``model`` runs under CPU autocast in one
    forward of ``model(*inputs)`` (``model`` as the candidate runs it: its layout,
    autocast on), checked and timed as built and as a product (module docstring)."""
    seen = _inputs_seen(model, inputs)
    modules = dict(model.named_modules())
    groups: dict[tuple[Any, ...], list[str]] = {}
    for name, s in seen.items():
        if s[4] is None:
            continue
        m = modules[name]
        key = (*s, m.in_channels, m.out_channels, tuple(m.kernel_size), tuple(m.stride), tuple(m.padding),
               m.bias is not None, m.weight.is_contiguous(memory_format=torch.channels_last))
        groups.setdefault(key, []).append(name)
    found = []
    for key, names in groups.items():
        conv = modules[names[0]]
        built, gemm = _steps(conv, key[:5])
        error = relative_error(_in_dtype(built(), key[4]), _in_dtype(gemm(), key[4]))
        timings = measure({"built": built, "gemm": gemm}, "built", cfg)
        t = timed_fields(timings["gemm"], timings["built"], cfg)
        found.append(ConvChoice(tuple(names), key[0], conv.out_channels, tuple(conv.kernel_size), tuple(conv.stride),
                                error, timings["built"].median_ms, t["median_ms"], t["median_ratio"], t["wins"],
                                t["rounds"], t["faster"]))
    return found


def chosen_modules(found: tuple[ConvChoice, ...]) -> tuple[str, ...]:
    """The module names of the convolutions :func:`choose` found faster as products."""
    return tuple(n for c in found if c.chosen for n in c.modules)
