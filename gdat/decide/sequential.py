"""The sequential test: evidence that accumulates across blocks and launches until it is sure.

Evidence (:class:`Evidence`).  Each measured candidate plan ``i`` has paired
observations against the user's configuration, from every launch of this model on
this link class: ``d_ij`` seconds (the block's median minus the baseline
interpolated around it, negative: faster) with variance ``v_ij`` seconds squared
(:func:`gdat.decide.verdict.paired_differences`).  A plan is known by its
partition of the gradients, so evidence from several launches pools.

Test (:func:`weigh`).  Wald's sequential probability ratio test per candidate, of
``H0: delta_i = 0`` (no gain) against ``H1: delta_i = -MIN_GAIN * m_base`` (a gain
of 3% of the user's step), the observations normal with the variances given:

    LLR_i = sum_j -Delta (c(d_ij) + Delta / 2) / v'_ij,    Delta = MIN_GAIN * m_base,

with ``v'_ij = max(v_ij, SHRINK mean_k(v_ik n_ik) / n_ij)`` (``n``: the
observation's steps, ``SHRINK = 3/4``): a variance is estimated from one launch's
few blocks, and a launch that happened to look quiet must not outweigh the others
(on the recorded A/A blocks below, ``SHRINK`` 1/2, 3/4 and 1 gave 4%, 3% and 2%),
and each difference is clipped to ``CLIP`` (3) standard deviations, ``c(d) =
max(-max(3 sqrt(v'), Delta), min(d, 3 sqrt(v')))``: a block whose baseline
neighbours a stall of the machine makes a huge difference, and no single block may
decide alone (its term is at most ``3 Delta / sqrt(v)``, below the adoption bound
for any noise above ``Delta``).  The gain side is never clipped short of
``-Delta``, the gain ``H1`` states: on a quiet machine (``3 sqrt(v') < Delta / 2``) a
clip at ``-3 sqrt(v')`` would count a gain of any size as evidence against it.  The
price: with noise under ``Delta / 3`` a block's gain term is ``Delta^2 / (2 v')``, and
one block at ``-Delta`` or beyond can reach the adoption bound alone (a quiet block
is strong evidence; a stall next to it still counts once).  The recorded A/A blocks
below do not move with this (their noise is above ``Delta / 3``).

Candidate ``i`` is *adopted* when ``LLR_i >= log((1 - BETA) / a)`` and *rejected*
when ``LLR_i <= log(BETA / (1 - a))``; in between the evidence is *inconclusive* and
measuring goes on (in this run past the tuning budget, and in the next launch).
``a = ALPHA / m`` with ``m`` the number of candidates ever measured for the key
(Bonferroni): were the noise known, the chance that a plan no faster than the
user's configuration is adopted, however often the evidence is looked at, would be
at most ``ALPHA / (1 - BETA)`` = 2.2% in all (Wald's bound).  The variances are
estimated from each launch's few blocks, which lets chance through more often;
simulated on A/A blocks (the same configuration as two candidates, launch after
launch: tests/test_sequential.py on Gaussian blocks, benchmarks/bench_campaigns.py
on 120 recorded blocks of DDP-default jobs) the rate is about 3% there, under the 5%
the test is held to.  It was 20% while a block's variance came from the step-to-step
noise alone and each observation kept its launch's variance: the machine's level
shifts between blocks (:func:`gdat.decide.verdict.block_variance_terms`) and a launch
that looked quiet by chance let a no-gain plan through.  The steady-state window
after a decision is one more observation of the plan that runs
(:mod:`gdat.decide.confirm`): an adoption that chance let through can still be
taken back by it.  ``BETA`` is the chance of
rejecting a plan that gains ``Delta``.  The verdict is confident when one
candidate is adopted (the one of largest ``LLR`` if several are) or every measured
candidate is rejected ("nothing beats your configuration"); otherwise it is
inconclusive.

Expected cost.  With per-block noise ``s`` (standard deviation of ``d_ij``), the
expected number of blocks a candidate needs is ``log((1-BETA)/a) / (Delta (|delta|
- Delta/2) / s^2)`` under a gain ``|delta| > Delta/2``, and ``log((1-a)/BETA) /
(Delta^2 / (2 s^2))`` when there is none: with ``s = 4%`` of the step, a 10% gain is
adopted in 3 blocks and no gain is rejected in about 8 (docs/design.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

__all__ = ["Observation", "PlanEvidence", "Evidence", "Judgement", "weigh", "observe", "with_observation", "index_of",
           "ALPHA", "BETA", "MIN_GAIN"]

ALPHA = 0.02
BETA = 0.1
CLIP = 3.0
MIN_GAIN = 0.03
SHRINK = 0.75


@dataclass(frozen=True)
class Observation:
    """One paired block: ``diff_s`` against the user's configuration (negative:
    faster), its variance ``var_s2``, the ``steps`` it measured and the ``launch``
    (0, 1, ...) it came from."""

    diff_s: float
    var_s2: float
    steps: int
    launch: int

    def to_dict(self) -> dict[str, Any]:
        return {"diff_s": self.diff_s, "var_s2": self.var_s2, "steps": self.steps, "launch": self.launch}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Observation":
        return cls(float(d["diff_s"]), float(d["var_s2"]), int(d["steps"]), int(d["launch"]))


@dataclass(frozen=True)
class PlanEvidence:
    """Every paired observation of one candidate plan (``plan``: its
    :meth:`gdat.core.plan.BucketPlan.to_dict`)."""

    plan: Mapping[str, Any]
    observations: tuple[Observation, ...]

    @property
    def mean_s(self) -> float:
        """Inverse-variance weighted mean difference, seconds."""
        w = [1 / max(o.var_s2, 1e-18) for o in self.observations]
        return sum(wi * o.diff_s for wi, o in zip(w, self.observations)) / sum(w)

    @property
    def mean_var_s2(self) -> float:
        """Variance of :attr:`mean_s`, seconds squared, each observation's variance
        floored as the test floors it (:func:`floored_variances`)."""
        return 1 / sum(1 / v for v in floored_variances(self.observations))


@dataclass(frozen=True)
class Evidence:
    """What a knowledge-base key's decision rests on: the candidates' paired
    observations, the user's configuration they were paired with (its plan dict),
    its median step ``baseline_s`` and the number of ``launches`` that measured."""

    baseline_plan: Mapping[str, Any]
    baseline_s: float
    plans: tuple[PlanEvidence, ...] = ()
    launches: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def blocks(self) -> int:
        return sum(len(p.observations) for p in self.plans)

    def to_dict(self) -> dict[str, Any]:
        return {"baseline_plan": dict(self.baseline_plan), "baseline_s": self.baseline_s,
                "launches": self.launches,
                "plans": [{"plan": dict(p.plan), "observations": [o.to_dict() for o in p.observations]}
                          for p in self.plans], **dict(self.extra)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Evidence":
        plans = tuple(PlanEvidence(p["plan"], tuple(Observation.from_dict(o) for o in p["observations"]))
                      for p in d["plans"])
        extra = {k: v for k, v in d.items() if k not in ("baseline_plan", "baseline_s", "launches", "plans")}
        return cls(d["baseline_plan"], float(d["baseline_s"]), plans, int(d["launches"]), extra)


@dataclass(frozen=True)
class Judgement:
    """The test's verdict on ``evidence``: ``adopted`` (index into
    ``evidence.plans``) or ``None``; per candidate its ``llr`` and status (adopt,
    reject, continue); the boundaries used."""

    adopted: int | None
    llr: tuple[float, ...]
    status: tuple[str, ...]
    upper: float
    lower: float
    delta_s: float

    @property
    def all_rejected(self) -> bool:
        """Every candidate rejected (there is at least one)."""
        return bool(self.status) and all(s == "reject" for s in self.status)

    @property
    def confident(self) -> bool:
        """A candidate adopted, or every candidate rejected."""
        return self.adopted is not None or self.all_rejected

    @property
    def leader(self) -> int | None:
        """The candidate of largest ``LLR`` not rejected, if any."""
        alive = [i for i, s in enumerate(self.status) if s != "reject"]
        return max(alive, key=lambda i: self.llr[i], default=None)


def floored_variances(observations: Sequence[Observation]) -> list[float]:
    """``v'_j = max(v_j, SHRINK mean_k(v_k n_k) / n_j)`` (module docstring), seconds squared."""
    per_step = sum(o.var_s2 * o.steps for o in observations) / max(1, len(observations))
    return [max(o.var_s2, SHRINK * per_step / max(1, o.steps), 1e-18) for o in observations]


def llr(observations: Sequence[Observation], delta_s: float) -> float:
    """``sum_j -Delta (c(d_j) + Delta / 2) / v'_j`` (module docstring), ``Delta`` = ``delta_s``."""
    total = 0.0
    for o, v in zip(observations, floored_variances(observations)):
        bound = CLIP * math.sqrt(v)
        total += -delta_s * (max(-max(bound, delta_s), min(o.diff_s, bound)) + delta_s / 2) / v
    return total


def weigh(evidence: Evidence, alpha: float = ALPHA, beta: float = BETA, min_gain: float = MIN_GAIN) -> Judgement:
    """Wald's test on every candidate of ``evidence`` (module docstring)."""
    m = max(1, len(evidence.plans))
    a = alpha / m
    upper, lower = math.log((1 - beta) / a), math.log(beta / (1 - a))
    delta = min_gain * evidence.baseline_s
    scores = tuple(llr(p.observations, delta) for p in evidence.plans)
    status = tuple("adopt" if s >= upper else "reject" if s <= lower else "continue" for s in scores)
    passing = [i for i, s in enumerate(status) if s == "adopt"]
    adopted = max(passing, key=lambda i: scores[i]) if passing else None
    return Judgement(adopted, scores, status, upper, lower, delta)


def _same_partition(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return sorted(sorted(x["params"]) for x in a["buckets"]) == sorted(sorted(x["params"]) for x in b["buckets"])


def observe(prior: Evidence | None, baseline_plan: Mapping[str, Any], baseline_s: float,
            measured: Sequence[tuple[Mapping[str, Any], Sequence[tuple[float, float, int]]]]) -> Evidence:
    """``prior`` with this launch's paired observations added: ``measured`` holds each
    candidate plan (its dict) with its ``(d, variance, steps)`` blocks.  Evidence of
    another user's configuration (``prior.baseline_plan`` grouping gradients
    differently) is not pooled: the evidence starts afresh."""
    if prior is not None and not _same_partition(prior.baseline_plan, baseline_plan):
        prior = None
    launch = 0 if prior is None else prior.launches
    plans = list(prior.plans) if prior is not None else []
    for plan, blocks in measured:
        new = tuple(Observation(d, v, n, launch) for d, v, n in blocks)
        k = next((k for k, p in enumerate(plans) if _same_partition(p.plan, plan)), None)
        if k is None:
            plans.append(PlanEvidence(plan, new))
        else:
            plans[k] = PlanEvidence(plans[k].plan, plans[k].observations + new)
    return Evidence(baseline_plan, baseline_s, tuple(plans), launch + 1)


def with_observation(evidence: Evidence, plan: Mapping[str, Any], observation: Observation) -> Evidence:
    """``evidence`` with one more observation of ``plan`` (in the launch that made it)."""
    plans = list(evidence.plans)
    k = next((k for k, p in enumerate(plans) if _same_partition(p.plan, plan)), None)
    if k is None:
        plans.append(PlanEvidence(plan, (observation,)))
    else:
        plans[k] = PlanEvidence(plans[k].plan, plans[k].observations + (observation,))
    return Evidence(evidence.baseline_plan, evidence.baseline_s, tuple(plans), evidence.launches, evidence.extra)


def index_of(evidence: Evidence, plan: Mapping[str, Any]) -> int | None:
    """The index of ``plan``'s evidence (by partition), if it has any."""
    return next((k for k, p in enumerate(evidence.plans) if _same_partition(p.plan, plan)), None)
