"""Convolutions as matrix products (im2col in NHWC), chosen per convolution by
measurement: an operator choice of the mixed channels-last whole-model candidate.

*Model.*  A 2-D convolution (stride ``(sh, sw)``, zero padding ``(ph, pw)``, one group,
no dilation) ``y[n,o,i,j] = b[o] + sum_{c,u,v} w[o,c,u,v] xp[n, sh*i+u, sw*j+v, c]``,
``xp`` the zero-padded input in NHWC order, is one matrix product

    Y[(n,i,j), o] = X[(n,i,j), (u,v,c)] . W[o, (u,v,c)]^T  (+ b[o])

where ``X`` gathers each output position's ``kh*kw*C`` inputs (one strided copy of
the padded input) and ``W`` is the weight read in ``(o,u,v,c)`` order (a free view
of a channels-last weight).  Its gradients are two more products, ``dW = dY^T X``
and ``dX = dY W``, ``dX`` scattered back onto the padded input by ``kh*kw`` strided
adds (accumulated in float32 at least) and cropped; ``db = sum dY``.  Each product costs the
convolution's ``2*N*Ho*Wo*O*kh*kw*C`` FLOPs; ``X`` holds ``kh*kw/(sh*sw)`` times the
input's elements, so gathering and scattering cost more the larger the map.

On this machine's CPU, oneDNN's bf16 weight gradient on small maps (ResNet-18's last
stages, 4 x 4 and 7 x 7) runs several times slower than the same FLOPs as a
product, while its forward and input gradient are fast except on the smallest maps.
Two variants (:data:`VARIANTS`): :data:`WEIGHT_GRADIENT`, torch's convolution
forward and input gradient (``torch.nn.grad.conv2d_input``) with the weight
gradient as a product (``X`` gathered in the backward from the saved input), and
:data:`ALL_PRODUCTS`, all three as products (``X`` gathered once, in the forward,
and kept for the backward).  :func:`choose` times, for every distinct convolution
of the model (its input shape, dtype and layout as the candidate runs it), forward
plus backward as built and in both variants, in paired rounds with the sign test
of :func:`aoe_full.measure.compare`, after checking that each variant gives the
convolution's output and gradients within the autocast dtype's tolerance
(:func:`aoe_full.measure.relative_error`, every tensor in that dtype); the fastest
variant that passes both is chosen.

:class:`GemmConvForward` replaces a chosen ``torch.nn.Conv2d``'s ``_conv_forward``
(what its ``forward`` calls).  It computes its variant only under CPU autocast
(where it was measured, in the autocast dtype, as the convolution would run);
otherwise it calls ``F.conv2d`` as the module does.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.utils._pytree import tree_map

from aoe_full.measure import MeasureConfig, finite_or_none, make_step, measure, relative_error, timed_fields

__all__ = ["WEIGHT_GRADIENT", "ALL_PRODUCTS", "VARIANTS", "GemmConvForward", "eligible", "applicable", "use_gemm",
           "Variant", "ConvChoice", "choose", "chosen_variants"]

WEIGHT_GRADIENT = "weight_gradient_product"
ALL_PRODUCTS = "all_products"
VARIANTS = (WEIGHT_GRADIENT, ALL_PRODUCTS)


def eligible(module: torch.nn.Module) -> bool:
    """Whether ``module`` is a ``torch.nn.Conv2d`` (forward not overridden) this
    module can compute: one group, no dilation, numeric zero padding."""
    return (isinstance(module, torch.nn.Conv2d) and type(module).forward is torch.nn.Conv2d.forward
            and type(module)._conv_forward is torch.nn.Conv2d._conv_forward and module.groups == 1
            and tuple(module.dilation) == (1, 1) and module.padding_mode == "zeros"
            and not isinstance(module.padding, str))


def _patches(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
             out: tuple[int, int]) -> torch.Tensor:
    """``X`` of the module docstring: (N*Ho*Wo, kh*kw*C), rows in (n, i, j) order."""
    n, c = x.shape[:2]
    (kh, kw), (sh, sw), (ph, pw), (ho, wo) = kernel, stride, padding, out
    xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, pw, pw, ph, ph)).contiguous()
    s_n, s_h, s_w, s_c = xp.stride()
    return xp.as_strided((n, ho, wo, kh, kw, c), (s_n, s_h * sh, s_w * sw, s_h, s_w, s_c)
                         ).reshape(n * ho * wo, kh * kw * c)


def _weight_gradient(g: torch.Tensor, cols: torch.Tensor, weight_shape: torch.Size) -> torch.Tensor:
    """``dW = dY^T X`` in the weight's (O, C, kh, kw) shape, channels-last strides."""
    o, c, kh, kw = weight_shape
    return (g.t() @ cols).view(o, kh, kw, c).permute(0, 3, 1, 2)


class _AllProducts(torch.autograd.Function):
    """:data:`ALL_PRODUCTS` on ``x`` (N, C, H, W), ``weight`` (O, C, kh, kw) and
    ``bias`` (O or None), all of one dtype; the output is NHWC in memory (a tensor
    of its own, not a view, so that an in-place op may follow).  Differentiable
    once: the backward's products treat the saved patches and weight as constants."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                stride: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
        n, c, h, w = x.shape
        o, _, kh, kw = weight.shape
        (sh, sw), (ph, pw) = stride, padding
        ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        cols = _patches(x, (kh, kw), stride, padding, (ho, wo))
        wm = weight.permute(0, 2, 3, 1).reshape(o, kh * kw * c)
        y = torch.empty((n, o, ho, wo), dtype=cols.dtype, device=cols.device, memory_format=torch.channels_last)
        rows = y.permute(0, 2, 3, 1).view(n * ho * wo, o)
        if bias is None:
            torch.mm(cols, wm.t(), out=rows)
        else:
            torch.addmm(bias, cols, wm.t(), out=rows)
        ctx.save_for_backward(cols, wm)
        ctx.geometry = (x.shape, weight.shape, ho, wo, stride, padding)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        cols, wm = ctx.saved_tensors
        x_shape, w_shape, ho, wo, (sh, sw), (ph, pw) = ctx.geometry
        (n, c, h, w), (o, _, kh, kw) = x_shape, w_shape
        g = gy.permute(0, 2, 3, 1).reshape(n * ho * wo, o)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gcols = (g @ wm).view(n, ho, wo, kh, kw, c)
            acc = torch.promote_types(gcols.dtype, torch.float32)
            gxp = torch.zeros(n, h + 2 * ph, w + 2 * pw, c, dtype=acc, device=g.device)
            for u in range(kh):
                for v in range(kw):
                    gxp[:, u:u + sh * (ho - 1) + 1:sh, v:v + sw * (wo - 1) + 1:sw, :] += gcols[:, :, :, u, v, :]
            gx = gxp[:, ph:ph + h, pw:pw + w, :].to(cols.dtype).permute(0, 3, 1, 2)
        if ctx.needs_input_grad[1]:
            gw = _weight_gradient(g, cols, w_shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(0)
        return gx, gw, gb, None, None


class _WeightGradientProduct(torch.autograd.Function):
    """:data:`WEIGHT_GRADIENT`: torch's convolution and input gradient, the weight
    gradient as a product; arguments and differentiability as :class:`_AllProducts`."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                stride: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        stride, padding = ctx.geometry
        n, o, ho, wo = gy.shape
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.nn.grad.conv2d_input(x.shape, weight, gy, stride, padding)
        if ctx.needs_input_grad[1]:
            cols = _patches(x, tuple(weight.shape[2:]), stride, padding, (ho, wo))
            gw = _weight_gradient(gy.permute(0, 2, 3, 1).reshape(n * ho * wo, o), cols, weight.shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = gy.sum((0, 2, 3))
        return gx, gw, gb, None, None


_FUNCTIONS = {WEIGHT_GRADIENT: _WeightGradientProduct, ALL_PRODUCTS: _AllProducts}


class GemmConvForward:
    """A ``Conv2d._conv_forward`` computing the convolution as ``variant`` (module
    docstring) under CPU autocast, in the autocast dtype; ``F.conv2d`` otherwise
    (and for float64 tensors, which autocast leaves alone).  Holds only the
    geometry, copied from the module when it is installed (a later change of the
    module's ``stride`` or ``padding`` is not seen), so a module carrying it copies
    and pickles like any other (loading a pickled module needs aoe_full)."""

    def __init__(self, stride: tuple[int, int], padding: tuple[int, int], variant: str) -> None:
        if variant not in _FUNCTIONS:
            raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
        self.stride = (int(stride[0]), int(stride[1]))
        self.padding = (int(padding[0]), int(padding[1]))
        self.variant = variant

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if x.dim() != 4 or x.device.type != "cpu" or not torch.is_autocast_enabled("cpu") or \
                torch.float64 in (x.dtype, weight.dtype):  # autocast leaves float64 alone
            return F.conv2d(x, weight, bias, self.stride, self.padding)
        dtype = torch.get_autocast_dtype("cpu")
        with torch.autocast("cpu", enabled=False):
            return _FUNCTIONS[self.variant].apply(x.to(dtype), weight.to(dtype),
                                                  None if bias is None else bias.to(dtype), self.stride, self.padding)


def applicable(module: torch.nn.Module, convs: Mapping[Any, Any]) -> dict[str, str]:
    """The entries of ``convs`` (module name -> variant) that name an eligible
    convolution of ``module`` and one of :data:`VARIANTS` (bank entries are read,
    never trusted)."""
    return {name: convs[name] for name, m in module.named_modules()
            if isinstance(convs.get(name), str) and convs[name] in _FUNCTIONS and eligible(m)}


def use_gemm(module: torch.nn.Module, convs: Mapping[Any, Any]) -> int:
    """Compute each convolution of ``module`` that ``convs`` names in its variant
    there, in place (only the :func:`applicable` entries); how many."""
    chosen = applicable(module, convs)
    for name, m in module.named_modules():
        if name in chosen:
            m._conv_forward = GemmConvForward(m.stride, m.padding, chosen[name])
    return len(chosen)


@dataclass(frozen=True)
class Variant:
    """One variant of one convolution: its worst relative error against the
    convolution (output and gradients, all in the autocast dtype, in units of its
    tolerance; <= 1 passes) and its forward + backward time against as built (ms,
    medians of paired rounds, with the sign test's verdict)."""

    name: str
    error: float
    median_ms: float
    median_ratio: float
    wins: int
    rounds: int
    faster: bool

    @property
    def accepted(self) -> bool:
        return self.error <= 1.0 and self.faster

    def to_dict(self) -> dict[str, Any]:
        return {"variant": self.name, "error_in_tolerance_units": finite_or_none(self.error),
                "ms": finite_or_none(self.median_ms), "median_ratio": finite_or_none(self.median_ratio),
                "rounds_faster": f"{self.wins}/{self.rounds}", "accepted": self.accepted}

    def describe(self) -> str:
        off = "" if self.error <= 1.0 else f", off by {self.error:.2g} x the tolerance"
        return (f"{self.name} {self.median_ms:.2f} ms (ratio {self.median_ratio:.3f}, {self.wins}/{self.rounds} "
                f"rounds faster{off})")


@dataclass(frozen=True)
class ConvChoice:
    """One distinct convolution of the model (``modules`` share its geometry and
    input): forward + backward as built (``built_ms``, ms) and each variant."""

    modules: tuple[str, ...]
    input_shape: tuple[int, ...]
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    built_ms: float
    variants: tuple[Variant, ...]

    @property
    def chosen(self) -> str:
        """The fastest accepted variant (``""``: as built)."""
        won = sorted((v for v in self.variants if v.accepted), key=lambda v: v.median_ratio)
        return won[0].name if won else ""

    def to_dict(self) -> dict[str, Any]:
        return {"modules": list(self.modules), "input_shape": list(self.input_shape),
                "out_channels": self.out_channels, "kernel": list(self.kernel), "stride": list(self.stride),
                "conv_ms": finite_or_none(self.built_ms), "variants": [v.to_dict() for v in self.variants],
                "chosen": self.chosen or "as built"}

    def describe(self) -> str:
        more = f" (+{len(self.modules) - 1} alike)" if len(self.modules) > 1 else ""
        shape = "x".join(map(str, self.input_shape))
        return (f"{self.modules[0]}{more} {shape} -> {self.out_channels}, {self.kernel[0]}x{self.kernel[1]}/"
                f"{self.stride[0]}: as built {self.built_ms:.2f} ms; " + "; ".join(v.describe() for v in self.variants)
                + f": {self.chosen or 'as built'}")


class Seen(NamedTuple):
    """What a convolution received at its first call: its input's shape, dtype,
    memory format and whether it requires grad, and the autocast dtype (``None``
    outside autocast)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    layout: torch.memory_format
    requires_grad: bool
    autocast: torch.dtype | None


def _inputs_seen(model: torch.nn.Module, inputs: list[torch.Tensor]) -> dict[str, Seen]:
    """Per eligible convolution of ``model``, what its first call of one forward of
    ``model(*inputs)`` received (a convolution called again with other shapes is
    timed on its first)."""
    seen: dict[str, Seen] = {}

    def record(name: str) -> Any:
        def hook(_: torch.nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0] if args else None
            if name in seen or not isinstance(x, torch.Tensor) or x.dim() != 4 or x.device.type != "cpu":
                return
            layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not \
                x.is_contiguous() else torch.contiguous_format
            autocast = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
            seen[name] = Seen(tuple(x.shape), x.dtype, layout, x.requires_grad, autocast)
        return hook

    handles = [m.register_forward_pre_hook(record(n)) for n, m in model.named_modules() if eligible(m)]
    try:
        model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return seen


def _steps(conv: torch.nn.Module, seen: Seen) -> dict[str, Any]:
    """Forward + backward steps of ``conv`` as built (``"built"``) and as each
    variant, on one random input as the model gave it, under the autocast the
    model ran it in."""
    shape, dtype, layout, requires_grad, autocast = seen
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).to(dtype).contiguous(memory_format=layout).requires_grad_(requires_grad)

    def step_of(variant: str) -> Any:
        m = copy.deepcopy(conv)
        use_gemm(m, {"": variant})  # "": the convolution itself; as built for no variant

        def fn(t: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cpu", dtype=autocast):
                return m(t)
        diff = ([x] if requires_grad else []) + [p for p in m.parameters() if p.requires_grad]
        return make_step(fn, (x,), {}, diff, "train")
    return {"built": step_of(""), **{v: step_of(v) for v in VARIANTS}}


def _in_dtype(result: Any, dtype: torch.dtype) -> Any:
    """``result`` with its floating tensors in ``dtype``, so that
    :func:`aoe_full.measure.relative_error` judges all of them by ``dtype``'s
    tolerance (a product in bf16 gives float32 parameters bf16 gradients)."""
    return tree_map(lambda t: t.detach().to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t,
                    result)


def choose(model: torch.nn.Module, inputs: list[torch.Tensor], cfg: MeasureConfig) -> list[ConvChoice]:
    """Every distinct eligible convolution ``model`` runs under CPU autocast in one
    forward of ``model(*inputs)`` (``model`` as the candidate runs it: its layout,
    autocast on), checked and timed as built and in each variant (module docstring)."""
    seen = _inputs_seen(model, inputs)
    modules = dict(model.named_modules())
    groups: dict[tuple[Any, ...], list[str]] = {}
    for name, s in seen.items():
        if s.autocast is None:
            continue
        m = modules[name]
        key = (s, m.in_channels, m.out_channels, tuple(m.kernel_size), tuple(m.stride), tuple(m.padding),
               m.bias is not None, m.weight.requires_grad, m.weight.is_contiguous(memory_format=torch.channels_last))
        groups.setdefault(key, []).append(name)
    found = []
    for key, names in groups.items():
        s, conv = key[0], modules[names[0]]
        steps = _steps(conv, s)
        want = _in_dtype(steps["built"](), s.autocast)
        errors = {v: relative_error(want, _in_dtype(steps[v](), s.autocast)) for v in VARIANTS}
        timings = measure(steps, "built", cfg)
        variants = tuple(Variant(v, errors[v], **timed_fields(timings[v], timings["built"], cfg)) for v in VARIANTS)
        found.append(ConvChoice(tuple(names), s.shape, conv.out_channels, tuple(conv.kernel_size), tuple(conv.stride),
                                timings["built"].median_ms, variants))
    return found


def chosen_variants(found: Sequence[ConvChoice]) -> dict[str, str]:
    """Module name -> variant, for the convolutions :func:`choose` found faster in one."""
    return {n: c.chosen for c in found if c.chosen for n in c.modules}
