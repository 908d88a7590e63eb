"""The tuner's step calendar: which training step does what.

Steps ``0 .. warmup-1`` are untouched (DDP rebuilds buckets at step 1);
then ``profile`` steps of each kind (compute-only, overlapped); then up to
``blocks`` measurement blocks, each 1 transition step (DDP's first step with a new
reducer uses its initial bucketing, in definition order) and ``measure`` measured
steps of one plan: the user's configuration or a candidate, in the interleaved
order of :mod:`gdat.decide.verdict`.  The first measured step also pays DDP's one-off
bucket rebuild (a few allocations), the same in every block.  Blocks end at fixed
step indices; at each end rank 0 says which plan the next block measures, or that
measuring is over (then the decision is taken at that step).

Budget.  A step's time is known only when the next step starts, so the decision is
taken at the start of the step after the last measured one: tuning uses at most
the steps ``0 .. decision_step``, ``total = decision_step + 1`` steps, and a script
that runs ``total`` steps is tuned and saved.  :func:`plan_calendar` fits as many
blocks as the budget allows: ``warmup + 2 profile + blocks (1 + measure) + 1 <=
max_steps``, and at least 2 (the user's configuration and one candidate).

Confirmation.  After the decision step (a transition step: the decided plan's
first), ``confirm`` steps measure the decided plan in steady state, timestamps
only (:meth:`StepCalendar.confirm_steps`).  After an adoption one more block of the
user's configuration follows them (:meth:`StepCalendar.recheck_steps`: 1 transition
step and ``measure`` steps), the baseline measured after the window; the
confirmation is taken at the start of the step after that block, which switches
the adopted plan back in if it holds (:meth:`StepCalendar.confirmed_at`).
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["StepCalendar", "plan_calendar", "TRANSITION_STEPS"]

TRANSITION_STEPS = 1


@dataclass(frozen=True)
class StepCalendar:
    """Step indices of each phase (``[start, end)`` ranges)."""

    warmup: int
    profile: int
    measure: int
    blocks: int
    confirm: int

    @property
    def compute_steps(self) -> range:
        return range(self.warmup, self.warmup + self.profile)

    @property
    def overlap_steps(self) -> range:
        start = self.compute_steps.stop
        return range(start, start + self.profile)

    def block_start(self, b: int) -> int:
        """The step at whose start block ``b``'s plan is switched in (its transition step)."""
        return self.overlap_steps.stop + b * (TRANSITION_STEPS + self.measure)

    def block_steps(self, b: int) -> range:
        """Block ``b``'s measured steps."""
        start = self.block_start(b) + TRANSITION_STEPS
        return range(start, start + self.measure)

    def block_ending_at(self, step: int) -> int | None:
        """The block whose measured window ends when ``step`` starts, if any."""
        k, rest = divmod(step - self.overlap_steps.stop, TRANSITION_STEPS + self.measure)
        return k - 1 if rest == 0 and 1 <= k <= self.blocks else None

    @property
    def total(self) -> int:
        """Steps tuning uses at most, the decision step (the start of the step after
        the last measured one, where the decided plan is switched in) included."""
        return self.block_start(self.blocks) + 1

    def confirm_steps(self, decision_step: int) -> range:
        """The steady-state window after a decision taken at ``decision_step``
        (the confirmation comes at :meth:`confirmed_at`)."""
        return range(decision_step + TRANSITION_STEPS, decision_step + TRANSITION_STEPS + self.confirm)

    def recheck_steps(self, decision_step: int) -> range:
        """The user's configuration's block after an adopted plan's steady-state
        window; it is switched in at the start of ``confirm_steps(d).stop``."""
        start = self.confirm_steps(decision_step).stop + TRANSITION_STEPS
        return range(start, start + self.measure)

    def steady_weight(self, block: int, decision_step: int) -> float:
        """Where the steady-state window lies between block ``block``'s measured steps
        and the recheck block, by their middle steps (0: at the block, 1: at the recheck)."""
        def mid(r: range) -> float:
            return (r.start + r.stop - 1) / 2

        before, after = mid(self.block_steps(block)), mid(self.recheck_steps(decision_step))
        return (mid(self.confirm_steps(decision_step)) - before) / (after - before)

    def confirmed_at(self, decision_step: int, adopted: bool) -> int:
        """The step at whose start the confirmation is taken."""
        return (self.recheck_steps if adopted else self.confirm_steps)(decision_step).stop


def plan_calendar(max_steps: int, warmup: int = 2, profile: int = 3, measure: int = 3,
                  confirm: int = 6) -> StepCalendar:
    """The schedule with the most blocks within ``max_steps`` steps; ``blocks`` is
    0 when not even 2 fit (the user's configuration and one candidate)."""
    fixed = warmup + 2 * profile + 1
    blocks = max(0, (max_steps - fixed) // (TRANSITION_STEPS + measure))
    return StepCalendar(warmup, profile, measure, blocks if blocks >= 2 else 0, confirm)
