"""Whole-model candidates of scene train: the training forward compiled in segments
and in the channels-last layout (exact), and mixed precision as an opt-in, each
checked before it is timed.

They are keyed by the module's signature (:func:`aoe_full.precision.module_signature`),
not by a trace, so they apply to models torch.fx cannot trace (a Hugging Face LM as a
training script builds it), and they keep DDP's overlap of the gradient allreduce
with the backward.  Candidates (:data:`CANDIDATES`):

* ``compiled_segments`` (exact, tried in every scene-train run): the forward
  compiled by Inductor in segments cut at the model's repeated blocks
  (:mod:`aoe_full.segments`), dropout drawing eager's masks;
* ``channels_last_weights`` (exact, models with a 4-D parameter): the 4-D
  parameters and buffers stored channels-last, so convolutions run in NHWC;
* ``autocast_bf16``, ``autocast_bf16_compiled_segments``,
  ``autocast_bf16_channels_last_weights`` (only with ``aoe --precision_mode
  allow_mix_precision_bf16``, never by default): the forward under bf16 autocast
  (:class:`aoe_full.precision.AutocastForward`), alone or around the above;
* ``autocast_bf16_channels_last_weights_gemm_convs`` (mixed, models with a 4-D
  parameter): the channels-last mixed candidate with the convolutions that run
  faster with matrix products computed so (:mod:`aoe_full.conv_gemm`, variant
  chosen per convolution by measurement before the candidate is checked); the
  bank keeps the chosen convolutions' module names and variants.

*Exact check:* one training step from the same weights, inputs and seed; the loss
and every gradient against the model as built, by
:func:`aoe_full.measure.relative_error` (the fp32 tolerance, the same rule as every
exact candidate); it passes at ``<= 1``.  *Loss check* (mixed candidates): the
20-step training-loss comparison of :mod:`aoe_full.precision`.

*Faster:* forward + backward steps of the model as built and of every candidate
that passed its check, interleaved in paired rounds
(:func:`aoe_full.measure.measure`); a candidate wins when it beats the model as
built by the sign test of :func:`aoe_full.measure.compare`, and the winner with
the lowest median ratio is kept.

The verdict is kept in the knowledge base of kind :data:`WHOLE_MODEL`, keyed by the
module's signature and the precision mode, with the usual context (scene train,
hardware, torch version, threads); a re-check (``REPEAT_TUNE``) that rejects the
kept candidate withdraws it (:func:`tune_whole_model`).  :func:`whole_model_entry`
reads the entry to apply (the mixed mode's where it holds a candidate, else the
exact one) and :func:`install` applies it in place (``gdat-run --gdat-aoe-bank``,
:func:`aoe_full.apply.apply_bank`); in eval mode the forward runs as built.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import torch

from aoe_full import conv_gemm
from aoe_full.bank import EAGER, BankContext
from aoe_full.errors import first_line
from aoe_full.measure import MeasureConfig, finite_or_none, measure, relative_error, timed_fields
from aoe_full.precision import (AUTOCAST_BF16, BOUND, CHECK_LR, CHECK_STEPS, KEEP, MIXED_BF16, AutocastForward,
                                module_signature, param_dtype, training_loss)
from aoe_full.segments import SegmentedForward, compile_segments
from gdat.bank.store import KnowledgeBase, settle
from gdat.core.device import device_type_of

__all__ = ["WHOLE_MODEL", "COMPILED", "CHANNELS_LAST", "MIXED_COMPILED", "MIXED_CHANNELS_LAST", "MIXED_GEMM_CONVS",
           "CANDIDATES", "candidates_for", "install", "CandidateCheck", "WholeModelCheck", "WholeModelEntry",
           "tune_whole_model", "whole_model_entry", "measured_words"]

WHOLE_MODEL = "whole_model"
COMPILED = "compiled_segments"
CHANNELS_LAST = "channels_last_weights"
MIXED_COMPILED = "autocast_bf16_compiled_segments"
MIXED_CHANNELS_LAST = "autocast_bf16_channels_last_weights"
MIXED_GEMM_CONVS = "autocast_bf16_channels_last_weights_gemm_convs"

#: Whole-model candidates: name -> whether it computes in the model's dtypes (exact).
CANDIDATES: dict[str, bool] = {COMPILED: True, CHANNELS_LAST: True, AUTOCAST_BF16: False, MIXED_COMPILED: False,
                               MIXED_CHANNELS_LAST: False, MIXED_GEMM_CONVS: False}

#: Most convolutions a bank entry's ``convs`` may name (entries are read, never trusted).
MAX_CONVS = 4096


def _has_images(module: torch.nn.Module) -> bool:
    """Whether ``module`` holds a 4-D floating parameter (a 2-D convolution's weight)."""
    return any(p.dim() == 4 and p.is_floating_point() for p in module.parameters())


def candidates_for(mode: str, allowed: frozenset[str] | None = None,
                   module: torch.nn.Module | None = None) -> list[str]:
    """The whole-model candidates ``mode`` allows (exact ones always, mixed ones
    only under :data:`MIXED_BF16`), restricted to ``allowed`` (``--candidates``),
    to those that can run here (compiled ones need Dynamo and a C++ compiler) and,
    given ``module``, to those that change it (channels-last ones need a 4-D
    parameter)."""
    from aoe_full.strategies import compile_unavailable_reason
    names = [n for n, exact in CANDIDATES.items() if exact or mode == MIXED_BF16]
    if compile_unavailable_reason() is not None:
        names = [n for n in names if COMPILED not in n]
    if module is not None and not _has_images(module):
        names = [n for n in names if CHANNELS_LAST not in n]
    return [n for n in names if allowed is None or n in allowed]


def install(module: torch.nn.Module, strategy: str, convs: Mapping[str, str] | None = None) -> int:
    """Run ``module``'s training forward (as it is now, exact choices included) as
    ``strategy`` says, in place, once: ``channels_last_weights`` stores its 4-D parameters
    and buffers channels-last (``Module.to(memory_format=...)``: the same tensors,
    so convolutions run in the NHWC layout), ``gemm_convs`` computes the
    convolutions ``convs`` names in its variant (:func:`aoe_full.conv_gemm.use_gemm`),
    ``compiled_segments`` compiles the forward in segments (:mod:`aoe_full.segments`),
    ``autocast_bf16`` wraps it in bf16 autocast (outermost).  Returns how many
    convolutions compute with matrix products."""
    if isinstance(module.forward, (AutocastForward, SegmentedForward)):
        return 0
    if CHANNELS_LAST in strategy:
        module.to(memory_format=torch.channels_last)
    products = conv_gemm.use_gemm(module, convs or {}) if strategy == MIXED_GEMM_CONVS else 0
    if COMPILED in strategy:
        module.forward = compile_segments(module, mixed=strategy.startswith(AUTOCAST_BF16))
    if strategy.startswith(AUTOCAST_BF16):
        module.forward = AutocastForward(module.forward, torch.bfloat16, param_dtype(module))
    return products


@dataclass(frozen=True)
class CandidateCheck:
    """One whole-model candidate: its correctness check (exact: ``error``, the
    worst relative error of the loss and every gradient in tolerance units;
    mixed: the loss check's ``losses`` and ``worst_deviation``), its step time
    against the model as built (ms, medians of paired rounds; ``first_call_s``
    includes compiling) and why it was not timed or not accepted (``reason``)."""

    name: str
    exact: bool
    error: float = math.nan
    losses: list[float] = field(default_factory=list)
    worst_deviation: float = math.nan
    bound: float = math.nan
    median_ms: float = math.nan
    median_ratio: float = math.nan
    wins: int = 0
    rounds: int = 0
    faster: bool = False
    first_call_s: float = math.nan
    reason: str = ""
    convs: tuple[conv_gemm.ConvChoice, ...] = ()

    @property
    def chosen_convs(self) -> dict[str, str]:
        """Module name -> variant, for the convolutions it computes with matrix products."""
        return conv_gemm.chosen_variants(self.convs)

    @property
    def correct(self) -> bool:
        if self.exact:
            return self.error <= 1.0
        return math.isfinite(self.worst_deviation) and self.worst_deviation <= self.bound

    @property
    def accepted(self) -> bool:
        return self.correct and self.faster and not self.reason

    def to_dict(self) -> dict[str, Any]:
        if self.exact:
            check = {"kind": "exact: loss and every gradient of one training step against the model as built, same "
                             "seed, in tolerance units (<= 1 passes)", "relative_error": finite_or_none(self.error),
                     "passed": self.correct}
        else:
            check = {"kind": f"loss check: {CHECK_STEPS} AdamW steps against fp32", "losses": self.losses,
                     "worst_abs_deviation": finite_or_none(self.worst_deviation), "bound": finite_or_none(self.bound),
                     "passed": self.correct}
        found = {"candidate": self.name, "exact": self.exact, "check": check,
                 "train_step_ms": finite_or_none(self.median_ms), "median_ratio": finite_or_none(self.median_ratio),
                 "rounds_faster": f"{self.wins}/{self.rounds}",
                 "faster": self.faster, "first_call_s": finite_or_none(self.first_call_s), "accepted": self.accepted,
                 "reason": self.reason}
        if self.convs:
            found["convolutions"] = [c.to_dict() for c in self.convs]
        return found

    def describe(self) -> str:
        """One line, and one more per distinct convolution it timed as a matrix product."""
        return "\n".join([self._verdict(), *(f"    {c.describe()}" for c in self.convs)])

    def _verdict(self) -> str:
        if self.reason and not math.isfinite(self.median_ms):
            return f"{self.name}: not timed ({self.reason})"
        check = (f"gradients within {self.error:.2g} x the fp32 tolerance" if self.exact else
                 f"worst |loss difference| {self.worst_deviation:.4g} against {self.bound:.4g}")
        failed = "gradients differ" if self.exact else "loss differs"
        verdict = "accepted" if self.accepted else "rejected: " + (
            self.reason or ("not faster by the sign test" if self.correct else failed))
        if not math.isfinite(self.median_ms):
            return f"{self.name}: not timed (first call {self.first_call_s:.1f} s); {check}: {verdict}"
        return (f"{self.name}: {self.median_ms:.1f} ms (median ratio {self.median_ratio:.3f}, {self.wins}/"
                f"{self.rounds} rounds faster, first call {self.first_call_s:.1f} s); {check}: {verdict}")


@dataclass(frozen=True)
class WholeModelCheck:
    """What the whole-model candidates of ``mode`` measured: the model as built
    (``eager_ms``; ``losses_fp32``, its loss check's losses, when a mixed
    candidate was checked), each candidate, the verdict (``strategy``: what the
    bank now holds for the model) and the bank outcome; ``reason`` says why
    nothing could be checked, or that the bank answered."""

    mode: str
    eager_ms: float
    losses_fp32: list[float]
    candidates: list[CandidateCheck]
    outcome: str = ""
    strategy: str = EAGER
    seconds: float = 0.0
    reason: str = field(default="")

    @property
    def accepted(self) -> bool:
        """Whether the bank holds a candidate for the model after this check."""
        return self.strategy != EAGER

    def to_dict(self) -> dict[str, Any]:
        return {"precision_mode": self.mode, "strategy": self.strategy, "accepted": self.accepted,
                "outcome": self.outcome, "reason": self.reason, "eager_train_step_ms": finite_or_none(self.eager_ms),
                "losses_fp32": self.losses_fp32, "bound_rule": f"{BOUND:g} x initial fp32 loss",
                "optimizer": f"AdamW(lr={CHECK_LR:g})", "same_data_and_weights": True,
                "candidates": [c.to_dict() for c in self.candidates], "check_time(s)": round(self.seconds, 3)}

    def describe(self) -> str:
        """One line per candidate, then the verdict."""
        applied = (f"gdat-run --gdat-aoe-bank applies {self.strategy}" if self.accepted else
                   "gdat-run --gdat-aoe-bank runs the model as built")
        if self.outcome == "hit":
            return f"whole model in training: {self.strategy}, by an earlier check (REPEAT_TUNE=True checks again): " \
                   f"{applied}"
        if self.reason:
            return f"whole model in training: not checked ({self.reason}): {applied}"
        lines = [f"whole model in training, as built: {self.eager_ms:.1f} ms per step"]
        lines += [f"  {c.describe()}" for c in self.candidates]
        won = [c for c in self.candidates if c.name == self.strategy]
        if won:
            lines.append(f"  chosen: {self.strategy} ({won[0].median_ratio:.3f} x as built): {applied}")
        else:
            lines.append(f"  no candidate won (none both correct and faster by the sign test): {applied}")
        return "\n".join(lines)


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


def _train_step(module: torch.nn.Module, inputs: list[torch.Tensor]) -> Callable[[], Any]:
    """One forward + backward of the checks' objective (loss and gradients returned, not stored)."""
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameter")

    def step() -> Any:
        loss = training_loss(module(*inputs), inputs)
        return loss.detach(), torch.autograd.grad(loss, params, allow_unused=True)
    return step


def _seeded(step: Callable[[], Any]) -> Any:
    torch.manual_seed(0)
    return step()


def _gemm_convs(model: torch.nn.Module, inputs: list[torch.Tensor],
                measure_cfg: MeasureConfig) -> tuple[conv_gemm.ConvChoice, ...]:
    """The convolutions of ``model``, run as the channels-last mixed candidate runs
    them, timed as built and in each variant (:func:`aoe_full.conv_gemm.choose`)."""
    probe = copy.deepcopy(model)
    install(probe, MIXED_CHANNELS_LAST)
    return tuple(conv_gemm.choose(probe, inputs, measure_cfg))


def _check_one(model: torch.nn.Module, name: str, inputs: list[torch.Tensor], l32: list[float],
               reference: Any, measure_cfg: MeasureConfig) -> tuple[CandidateCheck, Callable[[], Any] | None]:
    """A candidate's correctness check on a copy of ``model`` (first call timed:
    it compiles), and the copy's training step for the timing rounds.  A mixed
    candidate's loss check trains that same copy: the first step stored no
    gradient, so it starts from ``model``'s weights, and it is compiled once.
    The matrix-product candidate first chooses its convolutions (none chosen: not
    checked)."""
    exact = CANDIDATES[name]
    convs: tuple[conv_gemm.ConvChoice, ...] = ()
    try:
        if name == MIXED_GEMM_CONVS:
            convs = _gemm_convs(model, inputs, measure_cfg)
            if not conv_gemm.chosen_variants(convs):
                return CandidateCheck(name, exact, reason="no convolution is faster with matrix products",
                                      convs=convs), None
        copied = copy.deepcopy(model)
        install(copied, name, conv_gemm.chosen_variants(convs))
        t0 = time.perf_counter()
        step = _train_step(copied, inputs)
        got = _seeded(step)
        first = time.perf_counter() - t0
        if exact:
            return CandidateCheck(name, True, error=relative_error(reference, got), first_call_s=first), step
        torch.manual_seed(0)
        lmix = _losses(copied, copied, inputs)
    except Exception as e:  # a candidate that cannot run is rejected, not a failed tuning run
        return CandidateCheck(name, exact, reason=first_line(e, 300), convs=convs), None
    worst = max((abs(a - b) for a, b in zip(l32, lmix)), default=math.inf)
    if not all(math.isfinite(x) for x in l32 + lmix):
        worst = math.inf
    return CandidateCheck(name, False, losses=lmix, worst_deviation=worst, bound=BOUND * abs(l32[0]),
                          first_call_s=first, convs=convs), step


def _check(model: torch.nn.Module, inputs: list[torch.Tensor], mode: str, names: list[str],
           measure_cfg: MeasureConfig) -> WholeModelCheck:
    """Every candidate's check (module docstring) on copies of ``model``, then the
    model as built and every candidate that passed, timed side by side."""
    t0 = time.perf_counter()
    try:
        ref = copy.deepcopy(model)
        l32: list[float] = []
        if any(not CANDIDATES[n] for n in names):
            torch.manual_seed(0)
            l32 = _losses(ref, ref.forward, inputs)
        timed = copy.deepcopy(model)
        eager = _train_step(timed, inputs)
        reference = _seeded(eager)
    except Exception as e:  # a model the check cannot train is reported, not a failed tuning run
        return WholeModelCheck(mode, math.nan, [], [], seconds=time.perf_counter() - t0,
                              reason=first_line(e, 300))
    checked = [_check_one(model, n, inputs, l32, reference, measure_cfg) for n in names]
    steps = {EAGER: eager, **{c.name: step for c, step in checked if step is not None and c.correct}}
    timings = measure(steps, EAGER, measure_cfg)
    found = []
    for c, _ in checked:
        if c.name in timings:
            c = replace(c, **timed_fields(timings[c.name], timings[EAGER], measure_cfg))
        found.append(c)
    return WholeModelCheck(mode, timings[EAGER].median_ms, l32, found, seconds=time.perf_counter() - t0)


def _key(module: torch.nn.Module, mode: str) -> dict[str, Any]:
    return BankContext("train", device_type_of(module)).key(WHOLE_MODEL, {"module": module_signature(module),
                                                                         "mode": mode})


def _stored_strategy(stored: Any, mode: str) -> str:
    """The strategy a bank entry holds, where ``mode`` allows it (else eager: entries are read, never trusted)."""
    strategy = stored.get("strategy") if isinstance(stored, dict) else None
    return strategy if isinstance(strategy, str) and strategy in candidates_for(mode) else EAGER


def _stored_convs(stored: Any, module: torch.nn.Module) -> tuple[tuple[str, str], ...]:
    """The (module name, variant) pairs of a bank entry's ``convs`` that apply to
    ``module`` (:func:`aoe_full.conv_gemm.applicable`; none where ``convs`` is not a
    mapping of at most :data:`MAX_CONVS`)."""
    convs = stored.get("convs") if isinstance(stored, dict) else None
    if not isinstance(convs, dict) or len(convs) > MAX_CONVS:
        return ()
    return tuple(conv_gemm.applicable(module, convs).items())


def tune_whole_model(model: torch.nn.Module, inputs: list[torch.Tensor], mode: str, bank_root: str, repeat: bool,
                   measure_cfg: MeasureConfig, allowed: frozenset[str] | None = None) -> WholeModelCheck | None:
    """The whole-model candidates ``mode`` allows (:func:`candidates_for`),
    checked and timed on copies of ``model`` (left unchanged), the fastest that
    passed its check and beat the model as built recorded in the bank; ``None``
    when no candidate applies.  An entry already in the bank is a hit unless
    ``repeat``.  The bank rule, with one difference from the other items: a check
    that rejects the candidate the bank holds replaces it (``update``), since the
    checks are a safety gate, not only a speed race; a check that could not run
    writes nothing."""
    names = candidates_for(mode, allowed, model)
    if not names:
        return None
    kb = KnowledgeBase(bank_root, WHOLE_MODEL)
    key = _key(model, mode)
    stored = kb.get(key)
    if stored is not None and not repeat:
        return WholeModelCheck(mode, math.nan, [], [], "hit", _stored_strategy(stored, mode),
                              reason="the bank holds this model's verdict")
    found = _check(model, inputs, mode, names, measure_cfg)
    if found.reason:
        held = _stored_strategy(stored, mode) if stored is not None else EAGER
        return replace(found, outcome="unsatisfied" if stored is None else "reserved", strategy=held)
    winners = sorted((c for c in found.candidates if c.accepted), key=lambda c: c.median_ratio)
    found = replace(found, strategy=winners[0].name if winners else EAGER)
    payload = {"strategy": found.strategy, "convs": winners[0].chosen_convs if winners else {},
               "label": f"{type(model).__name__} whole model", "check": found.to_dict()}
    settled = settle(kb, key, payload, found.accepted or stored is not None,
                     lambda entry: (entry.get("strategy"), entry.get("convs")) != (found.strategy, payload["convs"]))
    return replace(found, outcome=settled.outcome)


@dataclass(frozen=True)
class WholeModelEntry:
    """What the bank holds for a module: the ``strategy`` to apply (``""``: none),
    checked in precision ``mode``, the convolutions it computes with matrix products
    (``convs``: module name, variant) and, where no candidate won, what the entries
    measured, in words (``lost``)."""

    strategy: str
    convs: tuple[tuple[str, str], ...]
    mode: str
    lost: str

    def applied_words(self, products: int) -> str:
        """What installing it did, in words, with ``products`` convolutions computed
        with matrix products (:func:`install`'s count)."""
        return f"{DESCRIPTIONS[self.strategy].format(convs=products)} (checked by aoe --precision_mode {self.mode})"


def whole_model_entry(module: torch.nn.Module, bank_root: str) -> WholeModelEntry:
    """The whole-model entry the bank under ``bank_root`` holds for ``module`` (the
    mixed-precision entry where it holds a candidate, else the exact one); no
    strategy and no words when the bank holds no entry for it, no strategy and the
    numbers they recorded when its entries say that no candidate won.  Reads, never
    changes, the module."""
    kb = KnowledgeBase(bank_root, WHOLE_MODEL)
    lost = []
    for mode in (MIXED_BF16, KEEP):
        stored = kb.get(_key(module, mode))
        strategy = _stored_strategy(stored, mode)
        if strategy != EAGER:
            convs = _stored_convs(stored, module) if strategy == MIXED_GEMM_CONVS else ()
            return WholeModelEntry(strategy, convs, mode, "")
        if stored is not None:
            lost.append(_lost_words(stored, mode))
    return WholeModelEntry("", (), "", "; ".join(lost))


def _lost_words(stored: Any, mode: str) -> str:
    """What an entry holding no candidate recorded, in words."""
    check = stored.get("check") if isinstance(stored, dict) else None
    return (f"aoe --precision_mode {mode} found no whole-model candidate both correct and faster "
            f"({measured_words(check)})")


def measured_words(check: Any) -> str:
    """The model as built and each candidate of a check (:meth:`WholeModelCheck.to_dict`),
    in words (read, never trusted: fields of the wrong type are left out)."""
    check = check if isinstance(check, dict) else {}
    eager = check.get("eager_train_step_ms")
    parts = []
    for c in check.get("candidates") or []:
        if not isinstance(c, dict) or not isinstance(c.get("candidate"), str) or c["candidate"] not in CANDIDATES:
            continue
        ratio, reason = c.get("median_ratio"), c.get("reason")
        if isinstance(ratio, (int, float)) and not isinstance(ratio, bool):
            parts.append(f"{c['candidate']} {ratio:.3f}x, {str(c.get('rounds_faster'))[:12]} rounds faster")
        elif isinstance(reason, str) and reason:
            parts.append(f"{c['candidate']} not timed ({reason[:80]})")
        else:
            parts.append(f"{c['candidate']} failed its check")
    built = f"as built {eager:.1f} ms per step" if isinstance(eager, (int, float)) and not isinstance(eager, bool) \
        else "as built"
    return "; ".join([built, *parts])


DESCRIPTIONS = {COMPILED: "the training forward compiled in segments (Inductor, exact)",
                AUTOCAST_BF16: "mixed precision (bf16 autocast, while training)",
                MIXED_COMPILED: "mixed precision compiled in segments (bf16 autocast and Inductor, while training)",
                CHANNELS_LAST: "convolutions in the channels-last layout (exact)",
                MIXED_CHANNELS_LAST: "mixed precision in the channels-last layout (bf16 autocast, while training)",
                MIXED_GEMM_CONVS: "mixed precision in the channels-last layout, {convs} convolution(s) with matrix "
                                  "products (bf16 autocast, while training)"}
