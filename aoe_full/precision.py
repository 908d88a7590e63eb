"""Mixed precision as an opt-in whole-model candidate of scene train, checked on the training loss.

Ascend's tools offer mixed precision as ``--precision_mode allow_mix_precision``;
``aoe --precision_mode`` takes (never by default):

* ``must_keep_origin_dtype`` (the default): the model computes in its own dtypes;
* ``allow_mix_precision_bf16``: the candidate runs the model's forward under
  ``torch.autocast(dtype=torch.bfloat16)`` (matrix products and convolutions in
  bf16, reductions and losses in fp32; the backward follows the forward's dtypes),
  and casts floating outputs back to the parameters' dtype, so that the script's
  loss sees the dtypes it always saw.  Parameters, gradients and the optimizer stay
  fp32.  fp16 (Ascend's plain ``allow_mix_precision``) is refused: without the loss
  scaler a training script would have to add, fp16 gradients underflow.

A mixed-precision model cannot give the fp32 gradients within fp32 rounding, so the
candidate is not held to the exact candidates' tolerance.  It is accepted when both:

1. *Loss check.*  Two copies of the model from the same weights train
   :data:`CHECK_STEPS` steps on the same batch (the sample inputs, fixed seed) with
   AdamW (learning rate :data:`CHECK_LR`), one as built, one under the candidate.
   With ``L32(t)`` and ``Lmix(t)`` the losses before step ``t``'s update, the check
   passes when ``max_t |Lmix(t) - L32(t)| <= BOUND * L32(0)`` and both are finite.
   The loss (:func:`training_loss`) is the model's own ``loss`` output where it has
   one; next-token cross-entropy where the model returns logits ``(B, T, V)`` for
   integer inputs ``(B, T)`` (a language model); otherwise the mean squared distance
   of every floating output to a fixed random target of its shape.
2. *Faster.*  Forward + backward steps of both, interleaved in paired rounds
   (:func:`aoe_full.measure.measure`), and the candidate beats the model as built by
   the sign test of :func:`aoe_full.measure.compare`.

The verdict is kept in the knowledge base of kind ``"precision"``, keyed by the
module's signature (:func:`module_signature`, which a training script's model has
whether or not torch.fx can trace it) and the mode, with the usual context (scene
train, hardware, torch version, threads); a re-check (``REPEAT_TUNE``) that
rejects the candidate withdraws it (:func:`tune_precision`).
:func:`precision_entry` reads an accepted entry and :func:`apply_precision` wraps a
module's forward in place (``gdat-run --gdat-aoe-bank``,
:func:`aoe_full.apply.apply_bank`); in eval mode the wrapped forward runs as built.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
from torch.utils._pytree import tree_flatten, tree_map

from aoe_full.bank import EAGER, BankContext
from aoe_full.measure import MeasureConfig, compare, measure
from gdat.bank.store import KnowledgeBase, settle
from gdat.core.device import device_type_of
from gdat.errors import UsageError

__all__ = ["PRECISION", "KEEP", "MIXED_BF16", "PRECISION_MODES", "CHECK_STEPS", "CHECK_LR", "BOUND",
           "check_precision_mode", "module_signature", "training_loss", "AutocastForward",
           "PrecisionCheck", "tune_precision", "precision_entry", "apply_precision"]

PRECISION = "precision"
KEEP = "must_keep_origin_dtype"
MIXED_BF16 = "allow_mix_precision_bf16"
PRECISION_MODES = (KEEP, MIXED_BF16)
STRATEGY = "autocast_bf16"
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
        owner = getattr(self.forward, "__self__", None)
        if isinstance(owner, torch.nn.Module) and not owner.training:
            return self.forward(*args, **kwargs)
        device = device_type_of(owner) if isinstance(owner, torch.nn.Module) else "cpu"
        with torch.autocast(device, dtype=self.dtype):
            out = self.forward(*args, **kwargs)
        return tree_map(lambda t: t.to(self.restore) if isinstance(t, torch.Tensor) and t.dtype == self.dtype
                        else t, out)


def _param_dtype(module: torch.nn.Module) -> torch.dtype:
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)


def _mixed(module: torch.nn.Module) -> AutocastForward:
    return AutocastForward(module.forward, torch.bfloat16, _param_dtype(module))


@dataclass(frozen=True)
class PrecisionCheck:
    """What the mixed-precision candidate measured: the loss check's losses, its
    worst deviation and bound, the two step times (ms, medians of paired rounds),
    the verdict (``strategy``: what the bank now holds for the model) and the bank
    outcome; ``reason`` says why a check could not run, or that the bank answered."""

    mode: str
    steps: int
    losses_fp32: list[float]
    losses_mixed: list[float]
    worst_deviation: float
    bound: float
    fp32_ms: float
    mixed_ms: float
    median_ratio: float
    wins: int
    rounds: int
    faster: bool
    outcome: str = ""
    strategy: str = EAGER
    seconds: float = 0.0
    reason: str = field(default="")

    @property
    def loss_ok(self) -> bool:
        return math.isfinite(self.worst_deviation) and self.worst_deviation <= self.bound

    @property
    def accepted(self) -> bool:
        """Whether the candidate passed both tests (a hit: whether the bank holds it)."""
        if self.outcome == "hit":
            return self.strategy == STRATEGY
        return self.loss_ok and self.faster and not self.reason

    def to_dict(self) -> dict[str, Any]:
        return {"precision_mode": self.mode, "candidate": STRATEGY, "accepted": self.accepted,
                "outcome": self.outcome, "strategy": self.strategy, "reason": self.reason,
                "loss_check": {"steps": self.steps, "optimizer": f"AdamW(lr={CHECK_LR:g})",
                               "same_data_and_weights": True, "losses_fp32": self.losses_fp32,
                               "losses_mixed": self.losses_mixed,
                               "worst_abs_deviation": _finite(self.worst_deviation), "bound": _finite(self.bound),
                               "bound_rule": f"{BOUND:g} x initial fp32 loss", "passed": self.loss_ok},
                "train_step_ms": {"fp32": _finite(self.fp32_ms), "mixed": _finite(self.mixed_ms),
                                  "median_ratio": _finite(self.median_ratio),
                                  "rounds_faster": f"{self.wins}/{self.rounds}", "faster": self.faster},
                "check_time(s)": round(self.seconds, 3)}

    def describe(self) -> str:
        applied = "gdat-run --gdat-aoe-bank applies it" if self.strategy == STRATEGY else \
            "gdat-run --gdat-aoe-bank keeps the model's dtypes"
        if self.outcome == "hit":
            held = "accepted" if self.strategy == STRATEGY else "rejected"
            return (f"mixed precision (bf16 autocast): {held} by an earlier check (train step {self.mixed_ms:.1f} "
                    f"ms against {self.fp32_ms:.1f} ms, worst |loss difference| {self.worst_deviation:.4g} against "
                    f"{self.bound:.4g}; REPEAT_TUNE=True checks again): {applied}")
        if self.reason:
            return f"mixed precision (bf16 autocast): not checked ({self.reason}): {applied}"
        loss = (f"loss check over {self.steps} steps: worst |loss difference| {self.worst_deviation:.4g} "
                f"{'<=' if self.loss_ok else '>'} {self.bound:.4g} ({BOUND:g} x initial loss)")
        speed = (f"train step {self.mixed_ms:.1f} ms against {self.fp32_ms:.1f} ms as built (median ratio "
                 f"{self.median_ratio:.3f}, {self.wins}/{self.rounds} rounds faster)")
        verdict = "accepted" if self.accepted else ("rejected: " + ("no faster" if self.loss_ok else "loss differs"))
        return f"mixed precision (bf16 autocast): {speed}; {loss}: {verdict}: {applied}"


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _losses(model: torch.nn.Module, forward: Callable[..., Any], inputs: list[torch.Tensor]) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=CHECK_LR)
    losses = []
    for _ in range(CHECK_STEPS):
        opt.zero_grad(set_to_none=True)
        loss = training_loss(forward(*inputs), inputs)
        losses.append(float(loss.detach()))
        loss.backward()
        opt.step()
    return losses


def _train_step(forward: Callable[..., Any], inputs: list[torch.Tensor],
                params: list[torch.Tensor]) -> Callable[[], Any]:
    """One forward + backward of the loss check's objective (gradients returned, not stored)."""
    def step() -> Any:
        loss = training_loss(forward(*inputs), inputs)
        return loss, torch.autograd.grad(loss, params, allow_unused=True)
    return step


def _number(d: Any, k: str) -> float:
    """``d[k]`` as a float where ``d`` is a dict holding a finite number there, else NaN
    (bank entries are read, never trusted)."""
    v = d.get(k) if isinstance(d, dict) else None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return math.nan
    try:
        f = float(v)
    except OverflowError:
        return math.nan
    return f if math.isfinite(f) else math.nan


def _from_payload(stored: dict[str, Any], mode: str) -> PrecisionCheck:
    """The bank's verdict as a check that measured nothing (outcome ``hit``)."""
    check = stored.get("check")
    loss = check.get("loss_check") if isinstance(check, dict) else None
    speed = check.get("train_step_ms") if isinstance(check, dict) else None
    steps = _number(loss, "steps")
    strategy = STRATEGY if stored.get("strategy") == STRATEGY else EAGER
    return PrecisionCheck(mode, int(steps) if math.isfinite(steps) else 0, [], [], _number(loss, "worst_abs_deviation"),
                          _number(loss, "bound"), _number(speed, "fp32"), _number(speed, "mixed"),
                          _number(speed, "median_ratio"), 0, 0, strategy == STRATEGY, "hit", strategy,
                          reason="the bank holds this model's verdict (REPEAT_TUNE=True measures again)")


def _check(model: torch.nn.Module, inputs: list[torch.Tensor], mode: str, measure_cfg: MeasureConfig) -> PrecisionCheck:
    """Both tests of the module docstring, on copies of ``model``; a model the
    check cannot train or time is rejected with the reason."""
    t0 = time.perf_counter()
    try:
        ref, mixed, timed = copy.deepcopy(model), copy.deepcopy(model), copy.deepcopy(model)
        torch.manual_seed(0)
        l32 = _losses(ref, ref.forward, inputs)
        torch.manual_seed(0)
        lmix = _losses(mixed, _mixed(mixed), inputs)
        params = [p for p in timed.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameter")
        steps = {EAGER: _train_step(timed.forward, inputs, params),
                 STRATEGY: _train_step(_mixed(timed), inputs, params)}
        timings = measure(steps, EAGER, measure_cfg)
    except Exception as e:  # a model the check cannot run is a rejected candidate, not a failed tuning run
        first = str(e).splitlines()[0] if str(e) else ""
        return PrecisionCheck(mode, 0, [], [], math.inf, 0.0, math.nan, math.nan, math.nan, 0, 0, False,
                              seconds=time.perf_counter() - t0, reason=f"{type(e).__name__}: {first}")
    worst = max((abs(a - b) for a, b in zip(l32, lmix)), default=math.inf)
    if not all(math.isfinite(x) for x in l32 + lmix):
        worst = math.inf
    comp = compare(timings[STRATEGY], timings[EAGER], measure_cfg)
    return PrecisionCheck(mode, CHECK_STEPS, l32, lmix, worst, BOUND * abs(l32[0]), timings[EAGER].median_ms,
                          timings[STRATEGY].median_ms, comp.median_ratio, comp.wins, comp.rounds, comp.beats,
                          seconds=time.perf_counter() - t0)


def _key(module: torch.nn.Module, mode: str) -> dict[str, Any]:
    return BankContext("train", device_type_of(module)).key(PRECISION, {"module": module_signature(module),
                                                                         "mode": mode})


def tune_precision(model: torch.nn.Module, inputs: list[torch.Tensor], mode: str, bank_root: str, repeat: bool,
                   measure_cfg: MeasureConfig) -> PrecisionCheck | None:
    """The mixed-precision candidate of ``mode`` checked on copies of ``model``
    (left unchanged) and recorded in the bank; ``None`` for :data:`KEEP`.  An entry
    already in the bank is a hit unless ``repeat``.  The bank rule, with one
    difference from the other items: a check that rejects the candidate the bank
    holds replaces it (``update``), since the loss check is a safety gate, not only
    a speed race; a check that could not run writes nothing."""
    if mode == KEEP:
        return None
    kb = KnowledgeBase(bank_root, PRECISION)
    key = _key(model, mode)
    stored = kb.get(key)
    if stored is not None and not repeat:
        return _from_payload(stored, mode)
    found = _check(model, inputs, mode, measure_cfg)
    if found.reason:
        held = _from_payload(stored, mode).strategy if stored is not None else EAGER
        return replace(found, outcome="unsatisfied" if stored is None else "reserved", strategy=held)
    winner = STRATEGY if found.accepted else EAGER
    payload = {"strategy": winner, "label": f"{type(model).__name__} whole model", "check": found.to_dict()}
    settled = settle(kb, key, payload, found.accepted or stored is not None,
                     lambda entry: entry.get("strategy") != winner)
    return replace(found, outcome=settled.outcome, strategy=winner)


def precision_entry(module: torch.nn.Module, bank_root: str) -> str:
    """What an accepted mixed-precision entry for ``module`` under ``bank_root``
    applies, in words; ``""`` when the bank holds none (or one that is not a usable
    acceptance).  Reads, never changes, the module."""
    stored = KnowledgeBase(bank_root, PRECISION).get(_key(module, MIXED_BF16))
    if not isinstance(stored, dict) or stored.get("strategy") != STRATEGY:
        return ""
    held = _from_payload(stored, MIXED_BF16)
    return (f"mixed precision (bf16 autocast, while training; its loss check: worst |loss difference| "
            f"{held.worst_deviation:.4g} against {held.bound:.4g} over {held.steps} steps)")


def apply_precision(module: torch.nn.Module) -> None:
    """Wrap ``module``'s forward (as it is now, exact choices included) in
    :class:`AutocastForward`, once."""
    if not isinstance(module.forward, AutocastForward):
        module.forward = _mixed(module)
