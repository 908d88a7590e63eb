"""Measuring candidates on this machine, and checking they are equivalent.

**Step.**  One measured call of a candidate is a *step*: in scene ``infer`` the
forward under ``torch.no_grad()``; in scene ``train`` the forward plus
``torch.autograd.grad`` of every floating output that requires grad, with fixed
random output gradients (standard normal, seed 20240611), with respect to every
input and parameter that requires grad.

**Timing model.**  Each candidate is warmed up (``warmup`` steps; the first one,
which compiles a compiled candidate, is timed separately as its first-call cost),
then all candidates are timed in ``rounds`` interleaved rounds, the order rotating
each round.  A sample is the wall-clock time (``time.perf_counter``) of ``inner``
consecutive steps divided by ``inner``, in milliseconds; ``inner`` is chosen once,
from the default's warm-up, so one sample lasts about ``sample_s`` seconds.

**Noise.**  A candidate *beats* the default when, over the per-round ratios
``candidate_ms / default_ms`` (both from the same round, so a change of load on a
shared machine hits both), the median ratio is at most ``1 - min_gain`` and the
candidate is faster in enough rounds for a one-sided sign test at level
``alpha`` (e.g. at least 12 of 15 rounds for ``alpha = 0.05``).

**Equivalence.**  Outputs and gradients are compared tensor by tensor with a
norm-wise relative error ``max|got - ref| / max(max|ref|, floor)``, which must
not exceed :data:`REL_TOLERANCE` for the dtype (float32: 1e-4).  The floor is
:data:`SCALE_FLOOR` (1e-3) times the largest ``max|ref|`` over all tensors of the
result, so a tensor that is analytically zero and holds only rounding noise
(the gradient of an attention key bias, which softmax cancels: entries of 1e-9
against gradients of order 1) is judged against the result's scale, not its
own noise.  Non-finite values must sit at the same places with the same values.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils._pytree import tree_flatten

__all__ = ["MeasureConfig", "Timing", "Step", "make_step", "relative_error", "REL_TOLERANCE",
           "tolerance_for", "measure", "Comparison", "compare", "timed_fields", "finite_or_none", "clone_inputs",
           "SCALE_FLOOR"]

#: Norm-wise relative tolerance per dtype for outputs and gradients.
REL_TOLERANCE: dict[torch.dtype, float] = {
    torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2,
}

#: A tensor's scale is at least this fraction of the largest scale in the result.
SCALE_FLOOR = 1e-3


@dataclass(frozen=True)
class MeasureConfig:
    """Timing parameters (see the module docstring)."""

    warmup: int = 3
    rounds: int = 15
    sample_s: float = 0.005
    min_gain: float = 0.02
    alpha: float = 0.05
    max_inner: int = 1000


@dataclass
class Timing:
    """Per-call times of one candidate in milliseconds, one sample per round."""

    samples_ms: list[float]
    first_call_s: float

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)


Step = Callable[[], tuple[Any, tuple[Any, ...]]]


def clone_inputs(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Fresh leaf copies of the tensor arguments (same strides and requires_grad)."""
    def one(a: Any) -> Any:
        if not isinstance(a, torch.Tensor):
            return a
        c = torch.empty_strided(a.shape, a.stride(), dtype=a.dtype, device=a.device)
        with torch.no_grad():
            c.copy_(a)
        return c.requires_grad_(a.requires_grad)
    return tuple(one(a) for a in args)


def _grad_leaves(out: Any) -> list[torch.Tensor]:
    leaves, _ = tree_flatten(out)
    return [t for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad
            and t.is_floating_point()]


def make_step(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
              diff: list[torch.Tensor], scene: str, fresh_inputs: bool = False,
              seed: int = 20240611) -> Step:
    """One step of ``fn`` on ``args`` (see the module docstring).  ``diff``: the
    tensors to differentiate against in scene train.  ``fresh_inputs``: copy the
    tensor arguments before each call (for code that writes into its inputs)."""
    grad_outputs: list[torch.Tensor] = []

    def call() -> Any:
        a = clone_inputs(args) if fresh_inputs else args
        return fn(*a, **kwargs)

    if scene != "train":
        def infer_step() -> tuple[Any, tuple[Any, ...]]:
            with torch.no_grad():
                return call(), ()
        return infer_step

    def train_step() -> tuple[Any, tuple[Any, ...]]:
        with torch.enable_grad():
            out = call()
            leaves = _grad_leaves(out)
            if not leaves or not diff:
                return out, ()
            if not grad_outputs:
                gen = torch.Generator().manual_seed(seed)
                grad_outputs.extend(torch.randn(t.shape, generator=gen, dtype=t.dtype)
                                    for t in leaves)
            if len(leaves) != len(grad_outputs):
                raise RuntimeError("candidate returns a different number of outputs")
            grads = torch.autograd.grad(leaves, diff, grad_outputs=grad_outputs,
                                        allow_unused=True)
            return out, grads
    return train_step


def tolerance_for(dtype: torch.dtype) -> float:
    return REL_TOLERANCE.get(dtype, 0.0)


def relative_error(ref: Any, got: Any) -> float:
    """The worst norm-wise relative error over all tensors of two results, each
    divided by its dtype's tolerance: a value ``<= 1`` means equivalent.
    ``math.inf`` when the structures or non-finite values differ."""
    ref_leaves, ref_spec = tree_flatten(ref)
    got_leaves, got_spec = tree_flatten(got)
    if ref_spec != got_spec or len(ref_leaves) != len(got_leaves):
        return math.inf
    largest = max((_scale(r) for r in ref_leaves), default=0.0)
    worst = 0.0
    for r, g in zip(ref_leaves, got_leaves):
        if not isinstance(r, torch.Tensor) or not isinstance(g, torch.Tensor):
            if (r is None) != (g is None) or (not isinstance(r, torch.Tensor) and r != g):
                return math.inf
            continue
        if r.shape != g.shape or r.dtype != g.dtype:
            return math.inf
        r, g = r.detach(), g.detach()
        if not r.is_floating_point():
            if not torch.equal(r, g):
                return math.inf
            continue
        finite = torch.isfinite(r)
        if not torch.equal(finite, torch.isfinite(g)):
            return math.inf
        rn, gn = r[~finite], g[~finite]
        if not torch.equal(rn.isnan(), gn.isnan()) or not torch.equal(rn[~rn.isnan()], gn[~gn.isnan()]):
            return math.inf
        if r.numel() == 0 or not finite.any():
            continue
        scale = max(_scale(r), SCALE_FLOOR * largest)
        err = (g[finite] - r[finite]).abs().max().item()
        tol = tolerance_for(r.dtype)
        rel = 0.0 if err == 0 else (math.inf if tol == 0 or scale == 0 else err / scale / tol)
        worst = max(worst, rel)
    return worst


def _scale(t: Any) -> float:
    """``max|t|`` over the finite entries of a floating tensor (0 otherwise)."""
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.numel() == 0:
        return 0.0
    t = t.detach()
    finite = t[torch.isfinite(t)]
    return finite.abs().max().item() if finite.numel() else 0.0


def _inner_calls(step: Step, cfg: MeasureConfig) -> int:
    t0 = time.perf_counter()
    step()
    one = max(time.perf_counter() - t0, 1e-7)
    return max(1, min(cfg.max_inner, int(cfg.sample_s / one)))


def measure(steps: dict[str, Step], default: str, cfg: MeasureConfig,
            on_round: Callable[[], None] | None = None) -> dict[str, Timing]:
    """Time every step (see the module docstring); ``steps[default]`` sets ``inner``.
    Steps must already be known to run (their first call is the first warm-up)."""
    first: dict[str, float] = {}
    for name, step in steps.items():
        t0 = time.perf_counter()
        step()
        first[name] = time.perf_counter() - t0
        for _ in range(max(0, cfg.warmup - 1)):
            step()
    inner = _inner_calls(steps[default], cfg)
    names = list(steps)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(cfg.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            step = steps[name]
            t0 = time.perf_counter()
            for _ in range(inner):
                step()
            samples[name].append((time.perf_counter() - t0) / inner * 1e3)
        if on_round is not None:
            on_round()
    return {n: Timing(samples[n], first[n]) for n in names}


@dataclass(frozen=True)
class Comparison:
    """A candidate against a reference over paired rounds."""

    median_ratio: float
    wins: int
    rounds: int
    p_value: float
    beats: bool


def _sign_test_p(wins: int, n: int) -> float:
    """One-sided P(X >= wins) for X ~ Binomial(n, 1/2)."""
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n


def compare(candidate: Timing, reference: Timing, cfg: MeasureConfig) -> Comparison:
    """Whether ``candidate`` beats ``reference`` by more than the noise."""
    ratios = [c / r for c, r in zip(candidate.samples_ms, reference.samples_ms) if r > 0]
    if not ratios:
        return Comparison(1.0, 0, 0, 1.0, False)
    wins = sum(1 for x in ratios if x < 1.0)
    p = _sign_test_p(wins, len(ratios))
    med = statistics.median(ratios)
    return Comparison(med, wins, len(ratios), p, med <= 1.0 - cfg.min_gain and p < cfg.alpha)


def timed_fields(candidate: Timing, reference: Timing, cfg: MeasureConfig) -> dict[str, Any]:
    """What a check record keeps of ``candidate`` timed against ``reference``
    (:func:`compare`): ``median_ms``, ``median_ratio``, ``wins``, ``rounds`` and
    ``faster`` (the sign test's verdict), as keyword arguments of ``dataclasses.replace``."""
    comp = compare(candidate, reference, cfg)
    return {"median_ms": candidate.median_ms, "median_ratio": comp.median_ratio, "wins": comp.wins,
            "rounds": comp.rounds, "faster": comp.beats}


def finite_or_none(x: float) -> float | None:
    """``x`` for a JSON report: ``None`` where it is not finite (not measured)."""
    return x if math.isfinite(x) else None
