"""Precision modes, the training loss the checks train on, and the bf16 autocast wrapper.

Ascend's tools offer mixed precision as ``--precision_mode allow_mix_precision``;
``aoe --precision_mode`` takes (never by default):

* ``must_keep_origin_dtype`` (the default): the model computes in its own dtypes;
* ``allow_mix_precision_bf16``: mixed-precision whole-model candidates
  (:mod:`aoe_full.whole_model`) run the model's forward under
  ``torch.autocast(dtype=torch.bfloat16)`` (matrix products and convolutions in
  bf16, reductions and losses in fp32; the backward follows the forward's dtypes),
  floating outputs cast back to the parameters' dtype, so that the script's loss
  sees the dtypes it always saw (:class:`AutocastForward`).  Parameters, gradients
  and the optimizer stay fp32.  fp16 (Ascend's plain ``allow_mix_precision``) is
  refused: without the loss scaler a training script would have to add, fp16
  gradients underflow.

A mixed model cannot give the fp32 gradients within fp32 rounding, so it is held to
a *loss check* (:mod:`aoe_full.whole_model`): two copies of the model from the same
weights train :data:`CHECK_STEPS` steps on the same batch with AdamW (learning rate
:data:`CHECK_LR`); with ``L32(t)`` and ``Lmix(t)`` the losses before step ``t``'s
update, it passes when ``max_t |Lmix(t) - L32(t)| <= BOUND * L32(0)`` and both are
finite.  The loss (:func:`training_loss`) is the model's own ``loss`` output where
it has one; next-token cross-entropy where the model returns logits ``(B, T, V)``
for integer inputs ``(B, T)`` (a language model); otherwise the mean squared
distance of every floating output to a fixed random target of its shape.
:func:`module_signature` is what whole-model bank entries are keyed by: it needs no
trace, so a model torch.fx cannot trace has one.
"""
from __future__ import annotations

import functools
import hashlib
import json
from typing import Any, Callable

import torch
from torch.utils._pytree import tree_flatten, tree_map

from gdat.core.device import device_type_of
from gdat.errors import UsageError

__all__ = ["KEEP", "MIXED_BF16", "PRECISION_MODES", "AUTOCAST_BF16", "CHECK_STEPS", "CHECK_LR", "BOUND",
           "check_precision_mode", "module_signature", "training_loss", "owner_trains", "AutocastForward",
           "param_dtype"]

KEEP = "must_keep_origin_dtype"
MIXED_BF16 = "allow_mix_precision_bf16"
PRECISION_MODES = (KEEP, MIXED_BF16)
AUTOCAST_BF16 = "autocast_bf16"
CHECK_STEPS = 20
CHECK_LR = 1e-4
BOUND = 0.02


def check_precision_mode(mode: str, scene: str) -> str:
    """``mode`` when ``aoe`` can honour it in ``scene``; else :class:`UsageError`
    naming the option that would."""
    if mode == "allow_mix_precision":
        raise UsageError("--precision_mode allow_mix_precision (fp16) is not offered: fp16 gradients need a loss "
                         f"scaler the training script would have to add; --precision_mode {MIXED_BF16} mixes bf16")
    if mode not in PRECISION_MODES:
        raise UsageError(f"unknown --precision_mode {mode!r}; expected {' or '.join(PRECISION_MODES)}")
    if mode != KEEP and scene != "train":
        raise UsageError(f"--precision_mode {mode} is checked on training steps: it needs --scene train")
    return mode


def module_signature(module: torch.nn.Module) -> str:
    """A hash of what the loss check's verdict depends on: ``module``'s class name
    (without the Python module it was loaded from, which differs between aoe's
    factory and the training script), its module tree as printed (layers and their
    settings: dropout rates, epsilons, activations), and every parameter's and
    buffer's name, shape, dtype and ``requires_grad``."""
    described = [type(module).__qualname__, repr(module)]
    described += [f"p {n}:{tuple(p.shape)}:{p.dtype}:{p.requires_grad}" for n, p in module.named_parameters()]
    described += [f"b {n}:{tuple(b.shape)}:{b.dtype}" for n, b in module.named_buffers()]
    return hashlib.sha256(json.dumps(described).encode()).hexdigest()[:32]


def _output_field(out: Any, name: str) -> Any:
    if isinstance(out, dict):
        return out.get(name)
    return getattr(out, name, None)


def training_loss(out: Any, inputs: list[torch.Tensor], seed: int = 20240611) -> torch.Tensor:
    """The objective of the loss check (module docstring), in fp32."""
    loss = _output_field(out, "loss")
    if isinstance(loss, torch.Tensor) and loss.numel() == 1 and loss.is_floating_point():
        return loss.float().reshape(())
    logits = _output_field(out, "logits")
    if logits is None and isinstance(out, torch.Tensor):
        logits = out
    ids = inputs[0] if inputs else None
    if isinstance(logits, torch.Tensor) and logits.dim() == 3 and isinstance(ids, torch.Tensor) \
            and not ids.is_floating_point() and tuple(ids.shape) == tuple(logits.shape[:2]) and ids.shape[1] > 1 \
            and 0 <= int(ids.min()) and int(ids.max()) < logits.shape[-1]:
        v = logits.shape[-1]
        return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, v).float(), ids[:, 1:].reshape(-1))
    leaves = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor) and t.is_floating_point()
              and t.requires_grad]
    if not leaves:
        raise ValueError("the model's outputs have no floating-point tensor to train on")
    gen = torch.Generator().manual_seed(seed)
    return sum(((t.float() - torch.randn(t.shape, generator=gen).to(t.device)) ** 2).mean() for t in leaves)


def owner_trains(forward: Callable[..., Any]) -> bool:
    """Whether the module a bound ``forward`` belongs to is in training mode (a
    function of no module counts as training): the whole-model wrappers run the
    forward as built otherwise, since their checks covered training only."""
    owner = getattr(forward, "__self__", None)
    return not isinstance(owner, torch.nn.Module) or owner.training


class AutocastForward:
    """A module's forward under ``torch.autocast`` of ``dtype`` while the module
    trains (in eval mode it runs as built: the loss check covered training only),
    floating outputs in ``dtype`` cast back to ``restore`` (the parameters' dtype).
    The autocast device is the parameters' at each call; the wrapped forward's
    signature shows through (``__wrapped__``)."""

    def __init__(self, forward: Callable[..., Any], dtype: torch.dtype, restore: torch.dtype) -> None:
        functools.update_wrapper(self, forward)
        self.forward = forward
        self.dtype = dtype
        self.restore = restore

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not owner_trains(self.forward):
            return self.forward(*args, **kwargs)
        owner = getattr(self.forward, "__self__", None)
        device = device_type_of(owner) if isinstance(owner, torch.nn.Module) else "cpu"
        with torch.autocast(device, dtype=self.dtype):
            out = self.forward(*args, **kwargs)
        return tree_map(lambda t: t.to(self.restore) if isinstance(t, torch.Tensor) and t.dtype == self.dtype
                        else t, out)


def param_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype of ``module``'s first floating parameter (fp32 without one)."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
