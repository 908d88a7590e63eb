"""A tuning launch's verdict: its paired blocks, pooled with the key's earlier evidence, judged by the sequential test.

:func:`judge` adds this launch's paired blocks (:func:`gdat.decide.verdict.paired_differences`)
to the evidence the knowledge base kept for the key (:func:`gdat.decide.sequential.observe`)
and tests it (:func:`gdat.decide.sequential.weigh`):

* a candidate adopted by the test is the winner (a compressed one only if it also
  beats the fastest exact configuration,
  :func:`gdat.decide.verdict.decide_blocks_lossy_last`).  Of several, the one of
  largest log-likelihood ratio, unless the evidence does not tell it from the one
  the model predicts fastest by more than ``FLOOR`` (1%) of the user's step, the
  smallest difference the tuner acts on: then that one.  The prediction
  (``predicted_s``) is the model fitted to the profile, not the correction fitted
  to these blocks, whose noise it would echo; a predicted difference under 1% is
  within what the model gets wrong between plans (on the GPT-2 of the campaigns it
  put a 6-bucket plan 0.1 ms ahead of the 2 MiB cap, and it ran 0.6% behind it).
  The leader is told apart when its pooled mean difference is below the other's by
  more than ``Z`` (2.5) standard errors of the difference, ``m_lead - m_model <
  -Z sqrt(V_lead + V_model)``
  (:attr:`gdat.decide.sequential.PlanEvidence.mean_var_s2`): two plans that both
  clear the test on a block or two each differ by less than the noise, and the
  model, which has seen every gradient's timing, decides the near-tie;
* every candidate rejected: nothing beats the user's configuration, confidently;
* otherwise the evidence is inconclusive (so too when the only adopted candidates
  are compressed ones that do not beat the fastest exact configuration).  The leader
  (of the exact plans measured in this launch that are not rejected and whose pooled
  mean difference is negative, chosen as the winner above) runs provisionally,
  as a plan on trial (:attr:`gdat.decide.verdict.Verdict.trial`) while measuring
  goes on; without one the user's configuration runs.
"""
from __future__ import annotations

import math
from typing import Collection, Sequence

from gdat.core.plan import BucketPlan
from gdat.decide.sequential import Evidence, Judgement, index_of, observe, weigh
from gdat.decide.verdict import (
    FLOOR,
    Z,
    Block,
    Verdict,
    baseline_median_s,
    decide_blocks_lossy_last,
    is_noisy,
    paired_differences,
    standings,
)

__all__ = ["judge"]


def judge(blocks: Sequence[Block], plans: Sequence[BucketPlan], baseline_plan: BucketPlan, lossy: Collection[int],
          prior: Evidence | None, predicted_s: Sequence[float]) -> tuple[Verdict, Evidence, Judgement]:
    """The verdict on ``blocks`` (candidate indices into ``plans``, whose predicted
    steps are ``predicted_s``, seconds) and ``prior`` evidence (module docstring),
    the evidence it rests on and the test's judgement."""
    m_base = baseline_median_s(blocks)
    paired = paired_differences(blocks)
    evidence = observe(prior, baseline_plan.to_dict(), m_base,
                       [(plans[i].to_dict(), paired[i]) for i in sorted(paired)])
    j = weigh(evidence)
    table = {st.candidate: st for st in standings(blocks)}
    noisy = is_noisy(blocks)
    noise = max((s.threshold_s for s in table.values()), default=FLOOR * m_base)
    here = {index_of(evidence, p.to_dict()): i for i, p in enumerate(plans)}
    rests = f"{evidence.blocks} paired block(s) over {evidence.launches} launch(es)"
    passed = [k for k, st in enumerate(j.status) if st == "adopt" and here.get(k) is not None]
    lossy_winner = decide_blocks_lossy_last(blocks, lossy).winner if any(here[k] in lossy for k in passed) else None
    adoptable = [k for k in passed if here[k] not in lossy or here[k] == lossy_winner]
    if adoptable:
        k, why = _winner(adoptable, evidence, j, [predicted_s[here[k]] for k in adoptable])
        gain = -evidence.plans[k].mean_s
        return Verdict(here[k], noise, noisy, f"the sequential test adopted the candidate: it gains "
                       f"{gain * 1e3:.2f} ms (log-likelihood ratio {j.llr[k]:.2f} >= {j.upper:.2f}) over "
                       f"{rests}{why}"), evidence, j
    if j.all_rejected:
        return Verdict(None, noise, noisy, f"nothing beats the user configuration: the sequential test rejected every "
                       f"candidate (log-likelihood ratios <= {j.lower:.2f}) over {rests}"), evidence, j
    exact = [k for k, st in enumerate(j.status) if st != "reject" and here.get(k) is not None
             and here[k] not in lossy and evidence.plans[k].mean_s < 0]
    leader, chosen = _winner(exact, evidence, j, [predicted_s[here[k]] for k in exact]) if exact else (None, "")
    why = f"inconclusive over {rests} (no candidate's log-likelihood ratio reached {j.upper:.2f} or fell to " \
        f"{j.lower:.2f})" + (" (the run was noisy)" if noisy else "")
    if passed:
        why += "; the compressed candidate the test adopted did not beat the fastest exact configuration by more " \
            "than the noise"
    if leader is not None:
        return Verdict(here[leader], noise, noisy, f"{why}: the leader, {-evidence.plans[leader].mean_s * 1e3:.2f} "
                       f"ms faster so far, runs while measuring goes on{chosen}", trial=True, confident=False), \
            evidence, j
    return Verdict(None, noise, noisy, f"{why}: no candidate leads", confident=False), evidence, j


def _winner(adoptable: list[int], evidence: Evidence, j: Judgement, predicted_s: list[float]) -> tuple[int, str]:
    """Of the ``adoptable`` candidates (evidence indices, with their predicted steps),
    the winner of the module docstring (so too of the leaders that may run on
    trial), and what the report adds about the choice."""
    lead = max(adoptable, key=lambda k: j.llr[k])
    at = {k: p for k, p in zip(adoptable, predicted_s)}
    model = min(adoptable, key=at.__getitem__)
    if model == lead or at[lead] - at[model] < FLOOR * evidence.baseline_s:
        return lead, ""
    a, b = evidence.plans[lead], evidence.plans[model]
    diff, sd = a.mean_s - b.mean_s, math.sqrt(a.mean_var_s2 + b.mean_var_s2)
    if diff < -Z * sd:
        return lead, ""
    return model, (f"; of {len(adoptable)} candidates, the evidence does not tell them apart (the leader "
                   f"{-diff * 1e3:+.2f} ms against this one, noise {sd * 1e3:.2f} ms): the model, which predicts this "
                   f"one fastest, decides")
