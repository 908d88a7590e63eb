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
module's signature (:func:`module_signature`: class and every parameter's name,
shape and dtype, which a training script's model has whether or not torch.fx can
trace it) and the mode, with the usual context (scene train, hardware, torch
version, threads).  :func:`apply_precision` applies an accepted entry to a module in
place (``gdat-run --gdat-aoe-bank``, :func:`aoe_full.apply.apply_bank`).
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.utils._pytree import tree_flatten, tree_map

from aoe_full.bank import EAGER, BankContext, decide
from aoe_full.measure import MeasureConfig, compare, measure
from gdat.bank.store import KnowledgeBase
from gdat.core.device import device_type_of
from gdat.errors import UsageError

__all__ = ["PRECISION", "KEEP", "MIXED_BF16", "PRECISION_MODES", "CHECK_STEPS", "CHECK_LR", "BOUND",
           "check_precision_mode", "module_signature", "training_loss", "AutocastForward",
           "PrecisionCheck", "tune_precision", "apply_precision"]

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
    """A hash of ``module``'s class and every parameter's name, shape and dtype."""
    cls = type(module)
    described = [f"{cls.__module__}.{cls.__qualname__}"]
    described += [f"{n}:{tuple(p.shape)}:{p.dtype}" for n, p in module.named_parameters()]
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
            and not ids.is_floating_point() and tuple(ids.shape) == tuple(logits.shape[:2]) and ids.shape[1] > 1:
        v = logits.shape[-1]
        return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, v).float(), ids[:, 1:].reshape(-1))
    leaves = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor) and t.is_floating_point()
              and t.requires_grad]
    if not leaves:
        raise UsageError("the model's outputs have no floating-point tensor to train on")
    gen = torch.Generator().manual_seed(seed)
    return sum(((t.float() - torch.randn(t.shape, generator=gen)) ** 2).mean() for t in leaves)


class AutocastForward:
    """A module's forward under ``torch.autocast`` of ``dtype``, floating outputs in
    ``dtype`` cast back to ``restore`` (the parameters' dtype)."""

    def __init__(self, forward: Callable[..., Any], device_type: str, dtype: torch.dtype,
                 restore: torch.dtype) -> None:
        self.forward = forward
        self.device_type = device_type
        self.dtype = dtype
        self.restore = restore

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = self.forward(*args, **kwargs)
        return tree_map(lambda t: t.to(self.restore) if isinstance(t, torch.Tensor) and t.dtype == self.dtype
                        else t, out)


def _param_dtype(module: torch.nn.Module) -> torch.dtype:
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)


def _mixed(module: torch.nn.Module) -> AutocastForward:
    return AutocastForward(module.forward, device_type_of(module), torch.bfloat16, _param_dtype(module))


@dataclass(frozen=True)
class PrecisionCheck:
    """What the mixed-precision candidate measured: the loss check's losses, its
    worst deviation and bound, the two step times (ms, medians of paired rounds) and
    the verdict."""

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
        return self.loss_ok and self.faster

    def to_dict(self) -> dict[str, Any]:
        return {"precision_mode": self.mode, "candidate": STRATEGY, "accepted": self.accepted,
                "outcome": self.outcome, "strategy": self.strategy, "reason": self.reason,
                "loss_check": {"steps": self.steps, "optimizer": f"AdamW(lr={CHECK_LR:g})",
                               "same_data_and_weights": True, "losses_fp32": self.losses_fp32,
                               "losses_mixed": self.losses_mixed,
                               "worst_abs_deviation": self.worst_deviation, "bound": self.bound,
                               "bound_rule": f"{BOUND:g} x initial fp32 loss", "passed": self.loss_ok},
                "train_step_ms": {"fp32": self.fp32_ms, "mixed": self.mixed_ms, "median_ratio": self.median_ratio,
                                  "rounds_faster": f"{self.wins}/{self.rounds}", "faster": self.faster},
                "check_time(s)": round(self.seconds, 3)}

    def describe(self) -> str:
        if self.outcome == "hit":
            held = "accepted" if self.strategy == STRATEGY else "rejected"
            return (f"mixed precision (bf16 autocast): {held} by an earlier check (train step {self.mixed_ms:.1f} "
                    f"ms against {self.fp32_ms:.1f} ms, worst |loss difference| {self.worst_deviation:.4g} against "
                    f"{self.bound:.4g}); REPEAT_TUNE=True checks again")
        loss = (f"loss check over {self.steps} steps: worst |loss difference| {self.worst_deviation:.4g} "
                f"{'<=' if self.loss_ok else '>'} {self.bound:.4g} ({BOUND:g} x initial loss)")
        speed = (f"train step {self.mixed_ms:.1f} ms against {self.fp32_ms:.1f} ms as built (median ratio "
                 f"{self.median_ratio:.3f}, {self.wins}/{self.rounds} rounds faster)")
        verdict = "accepted" if self.accepted else ("rejected: " + ("no faster" if self.loss_ok else "loss differs"))
        return f"mixed precision (bf16 autocast): {speed}; {loss}: {verdict}"


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


def _from_payload(stored: dict[str, Any], mode: str) -> PrecisionCheck:
    """The bank's verdict as a check that measured nothing (outcome ``hit``)."""
    check = stored.get("check", {}) if isinstance(stored.get("check"), dict) else {}
    loss = check.get("loss_check", {}) if isinstance(check.get("loss_check"), dict) else {}
    speed = check.get("train_step_ms", {}) if isinstance(check.get("train_step_ms"), dict) else {}

    def num(d: dict[str, Any], k: str) -> float:
        v = d.get(k)
        return float(v) if isinstance(v, (int, float)) else math.nan

    strategy = str(stored.get("strategy", EAGER))
    return PrecisionCheck(mode, int(num(loss, "steps")) if math.isfinite(num(loss, "steps")) else 0, [], [],
                          num(loss, "worst_abs_deviation"), num(loss, "bound"), num(speed, "fp32"),
                          num(speed, "mixed"), num(speed, "median_ratio"), 0, 0, strategy == STRATEGY, "hit",
                          strategy, reason="the bank holds this model's verdict (REPEAT_TUNE=True measures again)")


def _check(model: torch.nn.Module, inputs: list[torch.Tensor], mode: str, measure_cfg: MeasureConfig) -> PrecisionCheck:
    t0 = time.perf_counter()
    ref, mixed = copy.deepcopy(model), copy.deepcopy(model)
    torch.manual_seed(0)
    l32 = _losses(ref, ref.forward, inputs)
    torch.manual_seed(0)
    lmix = _losses(mixed, _mixed(mixed), inputs)
    worst = max((abs(a - b) for a, b in zip(l32, lmix)), default=math.inf)
    if not all(math.isfinite(x) for x in l32 + lmix):
        worst = math.inf
    bound = BOUND * abs(l32[0]) if l32 else 0.0
    params = [p for p in model.parameters() if p.requires_grad]
    steps = {EAGER: _train_step(model.forward, inputs, params), STRATEGY: _train_step(_mixed(model), inputs, params)}
    timings = measure(steps, EAGER, measure_cfg)
    comp = compare(timings[STRATEGY], timings[EAGER], measure_cfg)
    return PrecisionCheck(mode, CHECK_STEPS, l32, lmix, worst, bound, timings[EAGER].median_ms,
                          timings[STRATEGY].median_ms, comp.median_ratio, comp.wins, comp.rounds, comp.beats,
                          seconds=time.perf_counter() - t0)


def _key(module: torch.nn.Module, mode: str) -> dict[str, Any]:
    return BankContext("train", device_type_of(module)).key(PRECISION, {"module": module_signature(module),
                                                                         "mode": mode})


def tune_precision(model: torch.nn.Module, inputs: list[torch.Tensor], mode: str, bank_root: str, repeat: bool,
                   measure_cfg: MeasureConfig) -> PrecisionCheck | None:
    """The mixed-precision candidate of ``mode`` checked on ``model`` (left
    unchanged, in training mode) and recorded in the bank; ``None`` for
    :data:`KEEP`.  An entry already in the bank is a hit unless ``repeat``."""
    if mode == KEEP:
        return None
    kb = KnowledgeBase(bank_root, PRECISION)
    key = _key(model, mode)
    stored = kb.get(key)
    if stored is not None and not repeat:
        return _from_payload(stored, mode)
    found = _check(model, inputs, mode, measure_cfg)
    winner = STRATEGY if found.accepted else EAGER
    payload = {"strategy": winner, "label": f"{type(model).__name__} whole model", "check": found.to_dict()}
    d = decide(kb, key, winner, payload, lambda _stored: True)  # this run measured both: its verdict stands
    return PrecisionCheck(**{**found.__dict__, "outcome": d.outcome, "strategy": d.strategy})


def apply_precision(module: torch.nn.Module, bank_root: str) -> str:
    """Apply an accepted mixed-precision entry for ``module`` in place (its forward
    wrapped in :class:`AutocastForward`); returns what was applied, in words, or
    ``""`` when the bank holds none for it."""
    stored = KnowledgeBase(bank_root, PRECISION).get(_key(module, MIXED_BF16))
    if stored is None or stored.get("strategy") != STRATEGY or isinstance(module.forward, AutocastForward):
        return ""
    module.forward = _mixed(module)
    check = stored.get("check", {})
    loss = check.get("loss_check", {})
    return (f"mixed precision (bf16 autocast; its loss check: worst |loss difference| "
            f"{loss.get('worst_abs_deviation', math.nan):.4g} <= {loss.get('bound', math.nan):.4g} over "
            f"{loss.get('steps', '?')} steps)")
