"""The optimizer's update in training: torch's ``foreach`` and ``fused``
implementations of the same update, checked against the one torch runs when a
script chooses none, timed, and the fastest banked for ``gdat-run --gdat-aoe-bank``.

An optimizer built without ``foreach=`` or ``fused=`` runs torch's default
implementation, which on the CPU is a Python loop over the parameters (a dozen
tensor calls per parameter and step).  torch ships two more of the same math: a
``foreach`` one (one call per operation over all parameters) and a ``fused`` one (one
kernel per step).  Measured for AdamW over the 13.8 M parameters of the benchmark's
GPT-2 LM, one thread: 62 ms per step in the loop, 18 ms fused; that is 4 % of its
fp32 training step and 8 % of its bf16 one.

*Check* (per optimizer class of :data:`OPTIMIZERS`, with the hyperparameters listed
there): copies of the model's trainable parameters, fixed seeded gradients
(standard normal), :data:`CHECK_STEPS` steps by each implementation; the parameters
and every optimizer-state tensor after them against the default implementation's, by
:func:`aoe_full.measure.relative_error` (the fp32 tolerance rule of every exact
candidate; ``<= 1`` passes).  The learning rate is large (0.1) so that an update of
the wrong size moves the parameters by more than the tolerance.

*Faster:* one step of each implementation that passed, interleaved in paired rounds
(:func:`aoe_full.measure.measure`); it wins when it beats the default by the sign
test of :func:`aoe_full.measure.compare`; the winner with the lowest median ratio is
kept.  The check holds three copies of the parameters, their gradients and the
optimizer's state at once.

The verdict is banked per optimizer class and parameter layout (:func:`layouts_for`)
in kind :data:`OPTIMIZER_STEP`, keyed by the module's signature
(:func:`aoe_full.precision.module_signature`: the parameters' shapes and dtypes
decide the timing) with the usual context (scene train, hardware, torch version,
threads).  :func:`banked_implementations` reads the entries and
:func:`use_implementations` applies them: a global step pre-hook
(``torch.optim.optimizer.register_optimizer_step_pre_hook``) sets, before the first
step of an optimizer of a banked class (the class itself, not a subclass) whose
every parameter belongs to the module, the implementation banked for the layout the
parameters have then on its groups (a group added later keeps the default: it was
not looked at).  An optimizer that was configured (``foreach``, ``fused``,
``differentiable`` or ``capturable`` set, by the script or by a loaded state), has
stepped before, or holds what torch's constructor refuses with the flag (a tensor
learning rate or betas for ``foreach``; sparse gradients for ``fused``) is left as
it is, with one line saying so.  The fused step does not take over GradScaler's
unscaling (``_step_supports_amp_scaling`` stays as the constructor set it):
GradScaler unscales the gradients itself, as for the default.
"""
from __future__ import annotations

import math
import time
import weakref
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils.weak import WeakIdKeyDictionary

from aoe_full.bank import BankContext
from aoe_full.errors import first_line
from aoe_full.measure import MeasureConfig, finite_or_none, measure, relative_error, timed_fields
from aoe_full.precision import module_signature
from gdat.bank.store import KnowledgeBase, settle
from gdat.core import log
from gdat.core.device import device_type_of

__all__ = ["OPTIMIZER_STEP", "DEFAULT", "IMPLEMENTATIONS", "OPTIMIZERS", "CHECK_STEPS", "CANDIDATE_NAMES",
           "CONTIGUOUS", "CHANNELS_LAST", "layouts_for", "layout_of",
           "implementations_allowed", "ImplementationCheck",
           "OptimizerCheck", "tune_optimizer_steps", "banked_implementations", "use_implementations"]

OPTIMIZER_STEP = "optimizer_step"
#: The implementation torch picks when the script sets neither ``foreach`` nor ``fused``.
DEFAULT = "default"
#: The implementations tried, as the optimizer flag each one sets.
IMPLEMENTATIONS = ("foreach", "fused")
#: Optimizer classes checked, with the hyperparameters of the check and the timing.
OPTIMIZERS: dict[str, tuple[type[torch.optim.Optimizer], dict[str, float]]] = {
    "AdamW": (torch.optim.AdamW, {"lr": 0.1, "weight_decay": 0.01}),
    "Adam": (torch.optim.Adam, {"lr": 0.1}),
    "SGD": (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
}
CHECK_STEPS = 3
#: Parameter layouts a whole-model candidate can leave: as built, or the 4-D
#: parameters channels-last (``channels_last_weights``).  The
#: implementations' speeds differ between them (torch's fused SGD step: 10.5 ms on
#: ResNet-18's parameters as built, 22.6 ms channels-last, against 15.4 and 15.7 for
#: the default), so each layout has its own verdict.
CONTIGUOUS, CHANNELS_LAST = "contiguous", "channels_last"


def layouts_for(module: torch.nn.Module) -> tuple[str, ...]:
    """The layouts ``module``'s parameters can take: channels-last too where it has a 4-D parameter."""
    images = any(p.dim() == 4 and p.is_floating_point() for p in module.parameters())
    return (CONTIGUOUS, CHANNELS_LAST) if images else (CONTIGUOUS,)
#: ``aoe --candidates`` names of the implementations.
CANDIDATE_NAMES = {f"optimizer_{name}": name for name in IMPLEMENTATIONS}


def implementations_allowed(allowed: frozenset[str] | None) -> tuple[str, ...]:
    """The implementations ``--candidates`` (``allowed``; ``None``: all) lets the check try."""
    return tuple(n for c, n in CANDIDATE_NAMES.items() if allowed is None or c in allowed)


@dataclass(frozen=True)
class ImplementationCheck:
    """One implementation of an optimizer's step: its check (``error``: the worst
    relative error of parameters and state after :data:`CHECK_STEPS` steps, in
    tolerance units), its step time against the default (ms, median of paired
    rounds) and why it was not timed (``reason``)."""

    name: str
    error: float = math.nan
    median_ms: float = math.nan
    median_ratio: float = math.nan
    wins: int = 0
    rounds: int = 0
    faster: bool = False
    reason: str = ""

    @property
    def accepted(self) -> bool:
        return self.error <= 1.0 and self.faster and not self.reason

    def to_dict(self) -> dict[str, Any]:
        return {"implementation": self.name, "relative_error": finite_or_none(self.error), "passed": self.error <= 1.0,
                "step_ms": finite_or_none(self.median_ms), "median_ratio": finite_or_none(self.median_ratio),
                "rounds_faster": f"{self.wins}/{self.rounds}", "faster": self.faster, "accepted": self.accepted,
                "reason": self.reason}

    def describe(self) -> str:
        if self.reason:
            return f"{self.name}: not timed ({self.reason})"
        verdict = "accepted" if self.accepted else "rejected: " + (
            "not faster by the sign test" if self.error <= 1.0 else "parameters or state differ")
        return (f"{self.name}: {self.median_ms:.1f} ms (median ratio {self.median_ratio:.3f}, {self.wins}/"
                f"{self.rounds} rounds faster); parameters and state within {self.error:.2g} x the fp32 "
                f"tolerance: {verdict}")


@dataclass(frozen=True)
class OptimizerCheck:
    """What one optimizer class's implementations measured on the model's
    parameters: the default (``default_ms``), each implementation, the verdict
    (``strategy``: what the bank holds now) and the bank outcome; ``reason`` says
    why nothing was checked, or that the bank answered."""

    optimizer: str
    layout: str
    default_ms: float
    implementations: list[ImplementationCheck]
    outcome: str = ""
    strategy: str = DEFAULT
    seconds: float = 0.0
    reason: str = field(default="")

    def to_dict(self) -> dict[str, Any]:
        _, hyper = OPTIMIZERS[self.optimizer]
        return {"optimizer": self.optimizer, "parameter_layout": self.layout, "hyperparameters": hyper,
                "check_steps": CHECK_STEPS,
                "strategy": self.strategy, "outcome": self.outcome, "reason": self.reason,
                "default_step_ms": finite_or_none(self.default_ms),
                "implementations": [c.to_dict() for c in self.implementations],
                "check_time(s)": round(self.seconds, 3)}

    def describe(self) -> str:
        """One line, then one per implementation."""
        what = f"{self.optimizer} step" + (" (4-D parameters channels-last)" if self.layout == CHANNELS_LAST else "")
        if self.outcome == "hit":
            return f"{what}: {self.strategy}, by an earlier check (REPEAT_TUNE=True checks again)"
        if self.reason:
            return f"{what}: not checked ({self.reason})"
        won = [c for c in self.implementations if c.name == self.strategy]
        verdict = (f"chosen: {self.strategy} ({won[0].median_ratio:.3f} x the default)" if won else
                   "the default kept (no implementation both correct and faster)")
        lines = [f"{what}, default implementation: {self.default_ms:.1f} ms; {verdict}"]
        lines += [f"  {c.describe()}" for c in self.implementations]
        return "\n".join(lines)


class _Copy:
    """An optimizer of one implementation over its own copies of the parameters
    (in their layout), with fixed gradients (``grads``, cloned per copy: no
    implementation sees another's tensors)."""

    def __init__(self, optimizer: str, implementation: str, params: list[torch.Tensor],
                 grads: list[torch.Tensor]) -> None:
        cls, hyper = OPTIMIZERS[optimizer]
        self.params = [p.detach().clone().requires_grad_(True) for p in params]  # each keeps its layout
        for p, g in zip(self.params, grads):
            p.grad = g.clone()
        flags = {} if implementation == DEFAULT else {implementation: True}
        self.opt = cls(self.params, **hyper, **flags)

    def step(self) -> None:
        self.opt.step()

    def result(self) -> list[Any]:
        """The parameters and, per parameter, its state's tensors by name."""
        state = [{k: v for k, v in sorted(self.opt.state[p].items()) if isinstance(v, torch.Tensor) and v.dim() > 0}
                 for p in self.params]
        return [self.params, state]


def _laid_out(params: list[torch.Tensor], layout: str) -> list[torch.Tensor]:
    """``params`` as ``layout`` stores them (``Module.to(memory_format=...)``'s rule: 4-D ones channels-last)."""
    if layout == CONTIGUOUS:
        return params
    return [p.contiguous(memory_format=torch.channels_last) if p.dim() == 4 else p for p in params]


def _check(optimizer: str, layout: str, params: list[torch.Tensor], implementations: tuple[str, ...],
           measure_cfg: MeasureConfig) -> OptimizerCheck:
    """The ``implementations`` of ``optimizer`` checked and timed (module docstring)
    on ``params`` laid out as ``layout`` says."""
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    params = _laid_out(params, layout)
    grads = _laid_out([torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p in params], layout)
    try:
        default = _Copy(optimizer, DEFAULT, params, grads)
        for _ in range(CHECK_STEPS):
            default.step()
        reference = default.result()
    except Exception as e:  # an optimizer that cannot step these parameters is reported, not a failed run
        return OptimizerCheck(optimizer, layout, math.nan, [], seconds=time.perf_counter() - t0,
                              reason=first_line(e, 300))
    found: list[ImplementationCheck] = []
    steps: dict[str, Callable[[], Any]] = {DEFAULT: default.step}
    for name in implementations:
        try:
            copy = _Copy(optimizer, name, params, grads)
            for _ in range(CHECK_STEPS):
                copy.step()
            error = relative_error(reference, copy.result())
        except Exception as e:  # torch refuses the implementation here (device, dtype): not timed
            found.append(ImplementationCheck(name, reason=first_line(e, 300)))
            continue
        found.append(ImplementationCheck(name, error=error))
        if error <= 1.0:
            steps[name] = copy.step
    timings = measure(steps, DEFAULT, measure_cfg)
    for i, c in enumerate(found):
        if c.name in timings:
            found[i] = replace(c, **timed_fields(timings[c.name], timings[DEFAULT], measure_cfg))
    return OptimizerCheck(optimizer, layout, timings[DEFAULT].median_ms, found, seconds=time.perf_counter() - t0)


def _key(module: torch.nn.Module, optimizer: str, layout: str) -> dict[str, Any]:
    return BankContext("train", device_type_of(module)).key(
        OPTIMIZER_STEP, {"module": module_signature(module), "optimizer": optimizer, "layout": layout})


def _stored(stored: Any) -> str:
    """The implementation a bank entry names (read, never trusted: anything else is the default)."""
    strategy = stored.get("strategy") if isinstance(stored, dict) else None
    return strategy if isinstance(strategy, str) and strategy in IMPLEMENTATIONS else DEFAULT


def tune_optimizer_steps(model: torch.nn.Module, bank_root: str, repeat: bool, measure_cfg: MeasureConfig,
                         implementations: tuple[str, ...] = IMPLEMENTATIONS,
                         progress: Callable[[str], None] | None = None) -> list[OptimizerCheck]:
    """The ``implementations`` of every optimizer class of :data:`OPTIMIZERS`
    checked and timed on copies of ``model``'s trainable parameters in each layout
    of :func:`layouts_for` (``model`` unchanged; none when ``implementations`` is
    empty), each verdict recorded in the bank: an entry already there is a hit
    unless ``repeat``; a check that rejects the implementation the bank holds
    replaces it (as for the whole-model candidates); a check that could not run
    writes nothing.  ``progress`` hears each class (and layout) before its check."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params or not implementations:
        return []
    kb = KnowledgeBase(bank_root, OPTIMIZER_STEP)
    checks = []
    for layout, optimizer in ((lay, opt) for lay in layouts_for(model) for opt in OPTIMIZERS):
        key = _key(model, optimizer, layout)
        stored = kb.get(key)
        if stored is not None and not repeat:
            checks.append(OptimizerCheck(optimizer, layout, math.nan, [], "hit", _stored(stored),
                                         reason="the bank holds this verdict"))
            continue
        if progress is not None:
            progress(optimizer + (" (4-D parameters channels-last)" if layout == CHANNELS_LAST else ""))
        found = _check(optimizer, layout, params, implementations, measure_cfg)
        if found.reason:
            held = _stored(stored) if stored is not None else DEFAULT
            checks.append(replace(found, outcome="unsatisfied" if stored is None else "reserved", strategy=held))
            continue
        winners = sorted((c for c in found.implementations if c.accepted), key=lambda c: c.median_ratio)
        found = replace(found, strategy=winners[0].name if winners else DEFAULT)
        payload = {"strategy": found.strategy, "label": f"{type(model).__name__} {optimizer} step",
                   "check": found.to_dict()}
        settled = settle(kb, key, payload, found.strategy != DEFAULT or stored is not None,
                         lambda entry: entry.get("strategy") != found.strategy)
        checks.append(replace(found, outcome=settled.outcome))
    return checks


def banked_implementations(module: torch.nn.Module, bank_root: str) -> dict[str, dict[str, str]]:
    """Per layout of :func:`layouts_for`, the implementation the bank under
    ``bank_root`` holds for each optimizer class over ``module``'s parameters,
    where it is not the default (layouts with none left out)."""
    kb = KnowledgeBase(bank_root, OPTIMIZER_STEP)
    found: dict[str, dict[str, str]] = {}
    for layout in layouts_for(module):
        for optimizer in OPTIMIZERS:
            strategy = _stored(kb.get(_key(module, optimizer, layout)))
            if strategy != DEFAULT:
                found.setdefault(layout, {})[optimizer] = strategy
    return found


def layout_of(params: list[torch.Tensor]) -> str:
    """The layout ``params`` are in: channels-last where a 4-D one is stored so (and not also contiguous)."""
    return CHANNELS_LAST if any(p.dim() == 4 and not p.is_contiguous() and
                                p.is_contiguous(memory_format=torch.channels_last) for p in params) else CONTIGUOUS


#: Per parameter of a module the bank was applied to: layout -> optimizer class -> implementation.
_CHOSEN: WeakIdKeyDictionary = WeakIdKeyDictionary()
#: Optimizers the hook has decided on (each is looked at once, before its first step).
_SEEN: weakref.WeakSet = weakref.WeakSet()
_HOOK: list[Any] = []


def use_implementations(module: torch.nn.Module, chosen: dict[str, dict[str, str]]) -> None:
    """Run the optimizers a script builds over ``module``'s parameters with the
    implementations in ``chosen`` (per layout, as :func:`banked_implementations`
    gives them; the hook reads the layout the parameters have at the optimizer's
    first step); installs the global step pre-hook once per process."""
    for p in module.parameters():
        _CHOSEN[p] = {layout: dict(by_class) for layout, by_class in chosen.items()}
    if not _HOOK:
        _HOOK.append(register_optimizer_step_pre_hook(_before_step))


def _before_step(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    if opt in _SEEN:
        return
    _SEEN.add(opt)
    name = type(opt).__name__
    if name not in OPTIMIZERS or type(opt) is not OPTIMIZERS[name][0]:
        return
    params = [p for group in opt.param_groups for p in group["params"]]
    layout = layout_of(params)
    choices = {_CHOSEN.get(p, {}).get(layout, {}).get(name) for p in params}
    if len(choices) != 1 or None in choices:
        return
    implementation = choices.pop()
    why = _left_as_is(opt, params, implementation)
    if why:
        log.info(f"--gdat-aoe-bank: {name}'s step left as it is ({why}; the bank holds the {implementation} one)")
        return
    for group in opt.param_groups:
        group[implementation] = True
    log.info(f"--gdat-aoe-bank: {name}'s step runs torch's {implementation} implementation (checked by aoe)")


def _left_as_is(opt: torch.optim.Optimizer, params: list[torch.Tensor], implementation: str) -> str:
    """Why ``opt`` keeps its implementation (``""``: it takes ``implementation``):
    the optimizer was configured (flags set by the script or by a loaded state),
    has stepped before, or holds what torch's constructor would refuse with the
    flag set (a tensor learning rate or betas without ``capturable`` for foreach;
    sparse gradients for fused)."""
    groups = opt.param_groups
    configured = [f"{flag}={group[flag]}" for group in groups for flag in ("foreach", "fused")
                  if group.get(flag) is not None]
    configured += [f"{flag}=True" for group in groups for flag in ("differentiable", "capturable") if group.get(flag)]
    if configured:
        return f"the optimizer has {configured[0]}, set by the script or a loaded state"
    if opt.state:
        return "it has stepped before"
    if any(isinstance(group.get("lr"), torch.Tensor) or any(isinstance(b, torch.Tensor) for b in group.get("betas", ()))
           for group in groups):
        return "its learning rate or betas are tensors"
    if implementation == "fused" and any(p.grad is not None and p.grad.is_sparse for p in params):
        return "its gradients are sparse"
    return ""
