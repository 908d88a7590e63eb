"""A tuning launch's verdict: its paired blocks, pooled with the key's earlier evidence, judged by the sequential test.

:func:`judge` adds this launch's paired blocks (:func:`gdat.decide.verdict.paired_differences`)
to the evidence the knowledge base kept for the key (:func:`gdat.decide.sequential.observe`)
and tests it (:func:`gdat.decide.sequential.weigh`):

* a candidate adopted by the test is the winner (of several, the one of largest
  log-likelihood ratio; a compressed one only if it also beats the fastest exact
  configuration, :func:`gdat.decide.verdict.decide_blocks_lossy_last`);
* every candidate rejected: nothing beats the user's configuration, confidently;
* otherwise the evidence is inconclusive (so too when the only adopted candidates
  are compressed ones that do not beat the fastest exact configuration).  The leader
  (largest log-likelihood ratio among the exact plans measured in this launch that
  are not rejected and whose pooled mean difference is negative) runs provisionally,
  as a plan on trial (:attr:`gdat.decide.verdict.Verdict.trial`) while measuring
  goes on; without one the user's configuration runs.
"""
from __future__ import annotations

from typing import Collection, Sequence

from gdat.core.plan import BucketPlan
from gdat.decide.sequential import Evidence, Judgement, index_of, observe, weigh
from gdat.decide.verdict import (
    FLOOR,
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
          prior: Evidence | None) -> tuple[Verdict, Evidence, Judgement]:
    """The verdict on ``blocks`` (candidate indices into ``plans``) and ``prior``
    evidence (module docstring), the evidence it rests on and the test's judgement."""
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
    adoptable = [k for k, st in enumerate(j.status) if st == "adopt" and here.get(k) is not None]
    for k in sorted(adoptable, key=lambda k: -j.llr[k]):
        adopted = here[k]
        if adopted in lossy and decide_blocks_lossy_last(blocks, lossy).winner != adopted:
            continue  # a compressed plan must also beat the fastest exact configuration
        gain = -evidence.plans[k].mean_s
        return Verdict(adopted, noise, noisy, f"the sequential test adopted the candidate: it gains "
                       f"{gain * 1e3:.2f} ms (log-likelihood ratio {j.llr[k]:.2f} >= {j.upper:.2f}) over "
                       f"{rests}"), evidence, j
    if j.all_rejected:
        return Verdict(None, noise, noisy, f"nothing beats the user configuration: the sequential test rejected every "
                       f"candidate (log-likelihood ratios <= {j.lower:.2f}) over {rests}"), evidence, j
    exact = [k for k, st in enumerate(j.status) if st != "reject" and here.get(k) is not None
             and here[k] not in lossy and evidence.plans[k].mean_s < 0]
    leader = max(exact, key=lambda k: j.llr[k], default=None)
    why = f"inconclusive over {rests} (no candidate's log-likelihood ratio reached {j.upper:.2f} or fell to " \
        f"{j.lower:.2f})" + (" (the run was noisy)" if noisy else "")
    if adoptable:
        why += "; the compressed candidate the test adopted did not beat the fastest exact configuration by more " \
            "than the noise"
    if leader is not None:
        return Verdict(here[leader], noise, noisy, f"{why}: the leader, {-evidence.plans[leader].mean_s * 1e3:.2f} "
                       f"ms faster so far, runs while measuring goes on", trial=True, confident=False), evidence, j
    return Verdict(None, noise, noisy, f"{why}: no candidate leads", confident=False), evidence, j
