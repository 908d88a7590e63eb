"""Online tuning of a live DDP: the closed loop of ``--gdat-mode tune|apply``.

At construction (:func:`prepare_construction`, before stock DDP's own
constructor runs): check that every rank built the same model, measure the
allreduce ladder, build the knowledge-base key and look it up (rank 0 reads,
everyone receives its answer).  A hit (without ``REPEAT_TUNE``) becomes DDP's
``bucket_cap_mb_list``, so the plan applies from DDP's first bucket rebuild and no
step is spent tuning.

Otherwise :class:`OnlineTuner` runs the schedule of :mod:`gdat.tuner` on the
user's own training steps, every one of them a real step:

1. baseline: the user's configuration, measured;
2. profile: compute-only steps (allreduce deferred, gradients still averaged) and
   overlapped steps, traced by gdat's comm hook;
3. generate: calibrate the contention model, search the optimum and the peer plans,
   keep the best ``k`` predicted (:func:`gdat.schedule.baselines.rank_candidates`);
4. verify: switch to each candidate in turn (:func:`gdat.plan_switch.switch_buckets`)
   and measure it;
5. keep: adopt the fastest candidate only if it beats the baseline by more than the
   measured noise (:func:`gdat.tuner.decide`), else return to the user's
   configuration; save the plan (rank 0, only if adopted) and write the report.

Rank 0 decides and broadcasts every choice; every collective happens at a step
index all ranks know, so ranks never diverge.
"""
from __future__ import annotations

import inspect
import os
import socket
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
import torch.distributed as dist

from gdat import log
from gdat.aoe_result import improvement_percent
from gdat.config import GdatConfig
from gdat.cost_model import AllreduceCostModel, Contention
from gdat.ddp_model import WeakAttribute, param_infos
from gdat.device import device_type_of, hardware_fingerprint
from gdat.errors import BankError, GdatError, ModelMismatchError, PlanError, ProfileError, UsageError
from gdat.knowledge_base import KnowledgeBase, RepoSummary
from gdat.plan import BucketPlan
from gdat.plan_bank import BankedPlan, bank_key, lookup
from gdat.plan_switch import ddp_bucket_arguments, switch_buckets
from gdat.profiling.allreduce_bench import fit_from_ladder, measure_allreduce
from gdat.profiling.session import ProfileSession
from gdat.report import CandidateResult, GdatReport, plan_formats, predicted_step_record
from gdat.schedule.baselines import RankedPlan, rank_candidates
from gdat.schedule.simulator import Simulation, calibrate, lower_bound_s, measured_plan, simulate
from gdat.settings import bank_root, repeat_tune
from gdat.timeline import ParamInfo, Profile, ReadyTimeline
from gdat.tuner import Schedule, Verdict, WindowStats, decide, plan_schedule, window_stats

__all__ = ["prepare_construction", "OnlineTuner", "check_same_model", "check_model_across_ranks", "Prepared"]

_UNSUPPORTED = {
    "find_unused_parameters": "find_unused_parameters=True (DDP never rebuilds buckets in ready order)",
    "mixed_precision": "DDP's mixed_precision option",
    "delay_all_reduce_named_params": "delay_all_reduce_named_params",
}


@dataclass
class Prepared:
    """What the constructor needs: DDP keyword arguments and a controller factory."""

    kwargs: dict[str, Any]
    make: Callable[[torch.nn.Module], Any]

    def controller(self, ddp: torch.nn.Module) -> Any:
        return self.make(ddp)


@dataclass
class TuneContext:
    """Facts fixed at construction that the tuner and the report use."""

    config: GdatConfig
    cost: AllreduceCostModel
    key: dict[str, Any]
    params: tuple[ParamInfo, ...]
    user_bucket_args: dict[str, Any]
    stored: BankedPlan | None
    repeat: bool
    tuning_name: str


def _broadcast(obj: Any, group: Any) -> Any:
    """Rank 0's ``obj`` on every rank of ``group``."""
    box = [obj]
    dist.broadcast_object_list(box, src=dist.get_global_rank(group, 0), group=group)
    return box[0]


def check_same_model(params: tuple[ParamInfo, ...], group: Any) -> None:
    """Raise :class:`ModelMismatchError` naming the first parameter that differs
    between rank 0 and any other rank (a collective)."""
    mine = [(p.name, p.shape, p.dtype) for p in params]
    every: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(every, mine, group=group)
    reference = every[0]
    for rank, other in enumerate(every[1:], start=1):
        for k in range(max(len(reference), len(other))):
            a = reference[k] if k < len(reference) else None
            b = other[k] if k < len(other) else None
            if a != b:
                def show(x):
                    return "nothing" if x is None else f"{x[0]} {list(x[1])} {x[2]}"
                raise ModelMismatchError(
                    f"ranks built different models: parameter #{k} is {show(a)} on rank 0 "
                    f"but {show(b)} on rank {rank}")


def check_model_across_ranks(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
    """:func:`check_same_model` for the DDP about to wrap ``module`` (a collective)."""
    check_same_model(param_infos(module), _group_of(_user_options(module, args, kwargs)))


def _user_options(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    from gdat.ddp import STOCK_DDP

    bound = inspect.signature(STOCK_DDP.__init__).bind(None, module, *args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def _group_of(options: dict[str, Any]) -> Any:
    if options.get("device_mesh") is not None:
        return options["device_mesh"].get_group(mesh_dim=0)
    return options.get("process_group") or dist.group.WORLD


def _nodes(group: Any) -> int:
    hosts: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(hosts, socket.gethostname(), group=group)
    return len(set(hosts))


def _no_controller(_ddp: torch.nn.Module) -> None:
    return None


def prepare_construction(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any],
                         config: GdatConfig) -> Prepared:
    """Decide, before stock DDP is built, how gdat will treat this DDP."""
    options = _user_options(module, args, kwargs)
    for name, what in _UNSUPPORTED.items():
        if options.get(name):
            log.warn(f"gdat does not tune DDP with {what}; this model runs as stock DDP")
            return Prepared(kwargs, _no_controller)
    if torch._dynamo.utils.get_optimize_ddp_mode() == "python_reducer":
        log.warn("gdat does not tune DDP's python reducer; this model runs as stock DDP")
        return Prepared(kwargs, _no_controller)
    group = _group_of(options)
    params = param_infos(module)
    if config.plan:
        return Prepared({**kwargs, **_plan_arguments(BucketPlan.load(config.plan), params)}, _no_controller)
    try:
        repeat = repeat_tune()
    except UsageError as e:
        log.warn(f"{e}; using REPEAT_TUNE=False")
        repeat = False
    log.info(f"{config.mode}: measuring allreduce for {config.comm_budget_s:g} s")
    cost = fit_from_ladder(measure_allreduce(config.comm_budget_s, group))
    bandwidth = 1.0 / cost.beta_s_per_byte if cost.beta_s_per_byte > 0 else 1e12
    device_type = device_type_of(module)
    key = bank_key(params, dist.get_world_size(group), int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
                   _nodes(group), str(dist.get_backend(group)), device_type, torch.__version__,
                   _broadcast(hardware_fingerprint(device_type), group),
                   {"static_graph": bool(options.get("static_graph")),
                    "gradient_as_bucket_view": bool(options.get("gradient_as_bucket_view"))},
                   bandwidth)
    found = None
    if dist.get_rank(group) == 0:
        try:
            found = lookup(KnowledgeBase(bank_root(), "gdat"), key, bandwidth, params)
        except (OSError, GdatError) as e:
            log.warn(f"knowledge base unreadable ({e}); tuning afresh")
    found = _broadcast(found, group)
    user_args = {k: options.get(k) for k in ("bucket_cap_mb", "bucket_cap_mb_list")}
    name = _tuning_name(module)
    if found is not None and (config.mode == "apply" or not repeat):
        key, entry = found
        new_args = _plan_arguments(entry.plan, params)
        log.info(f"knowledge base hit: plan {entry.plan.label!r} ({len(entry.plan.buckets)} buckets), "
                 f"tuned at {entry.result_ms:.1f} ms vs baseline {entry.baseline_ms:.1f} ms; no tuning steps")
        if dist.get_rank(group) == 0:
            _write_hit_report(config, name, entry, params)
        return Prepared({**kwargs, **new_args}, _no_controller)
    if config.mode == "apply":
        log.info("knowledge base miss: running the user's configuration untuned (--gdat-mode apply)")
        return Prepared(kwargs, _no_controller)
    stored = found[1] if found is not None else None
    ctx = TuneContext(config, cost, key if found is None else found[0], params, user_args, stored, repeat, name)
    return Prepared(kwargs, lambda ddp: OnlineTuner(ddp, ctx))


def _in_plan_order(plan: BucketPlan, params: tuple[ParamInfo, ...]) -> tuple[list[int], list[int], list[str]]:
    """The parameters of ``plan`` in its order, with their sizes and dtypes."""
    by_index = {p.index: p for p in params}
    order = list(plan.param_order)
    return order, [by_index[i].nbytes for i in order], [by_index[i].dtype for i in order]


def _plan_arguments(plan: BucketPlan, params: tuple[ParamInfo, ...]) -> dict[str, Any]:
    """DDP arguments forming ``plan`` on this model (raises :class:`PlanError` when
    the plan does not match the model)."""
    plan.check_matches([p.index for p in params], [p.nbytes for p in params], [p.dtype for p in params])
    args = ddp_bucket_arguments(plan, *_in_plan_order(plan, params))
    log.info(f"applying plan {plan.label!r}: {len(plan.buckets)} buckets")
    return args


def _tuning_name(module: torch.nn.Module) -> str:
    script = os.path.basename(os.environ.get("GDAT_SCRIPT", "")) or "python"
    return f"{script}:{type(module).__name__}"


def _write_hit_report(config: GdatConfig, name: str, entry: BankedPlan, params: tuple[ParamInfo, ...]) -> None:
    summary = RepoSummary()
    summary.count("hit")
    formats = plan_formats(entry.plan, *_in_plan_order(entry.plan, params), len(params))
    report = GdatReport(name, 0.0, "bank hit", "plan taken from the knowledge base; no tuning steps",
                        entry.baseline_ms, entry.result_ms, summary, formats, {}, tuning_steps=0,
                        extra={"knowledge_base": bank_root()})
    try:
        log.info(f"report: {report.write(config.work_path)}")
    except OSError as e:
        log.warn(f"cannot write the report ({e})")


class OnlineTuner:
    """Controller of one DDP in tune mode (see the module docstring)."""

    ddp = WeakAttribute()

    def __init__(self, ddp: torch.nn.Module, ctx: TuneContext) -> None:
        self.ddp = ddp
        self.ctx = ctx
        self.group = ddp.process_group
        self.rank = dist.get_rank(self.group)
        c = ctx.config
        self.schedule: Schedule = plan_schedule(c.max_tune_steps, c.top_k, c.warmup_steps,
                                                profile=c.profile_steps)
        self.step = 0
        self.last_start: float | None = None
        self.durations: dict[int, float] = {}
        self.session: ProfileSession | None = None
        self.done = False
        self.outcome = "nothing was saved"
        self.began = time.time()
        self.baseline: WindowStats | None = None
        self.profile: Profile | None = None
        self.timeline: ReadyTimeline | None = None
        self.contention = Contention()
        self.cost: AllreduceCostModel = ctx.cost
        self.baseline_plan: BucketPlan | None = None
        self.candidates: list[RankedPlan] = []
        self.measured: list[WindowStats | None] = []
        if self.schedule.candidates == 0:
            log.warn(f"--gdat-max-tune-steps {c.max_tune_steps} leaves no room for a candidate "
                     f"(needs at least {self.schedule.candidate_switch(1) + 1}); not tuning")
            self.done = True
        else:
            log.info(f"tune: knowledge base {'re-tune (REPEAT_TUNE)' if ctx.stored else 'miss'}; tuning in "
                     f"steps 0..{self.schedule.total - 1} (up to {self.schedule.candidates} candidates)")
        log.warn_at_exit(self)

    # --- measurement -----------------------------------------------------------
    def _window(self, steps: range) -> WindowStats:
        mine = [self.durations[s] for s in steps]
        every: list[Any] = [None] * dist.get_world_size(self.group)
        dist.all_gather_object(every, mine, group=self.group)
        return window_stats(every)

    def _warn_if_incomplete(self) -> None:
        if not self.done:
            log.warn(f"tuning incomplete: the script ended after {self.step} steps; tuning needs "
                     f"{self.schedule.total} (lower --gdat-max-tune-steps); nothing was saved")

    def interrupted_summary(self) -> str:
        """The Ctrl-C line: where tuning stood and what was saved."""
        if not self.done:
            return f"interrupted at step {self.step} while tuning (it needed {self.schedule.total} steps); " \
                "nothing was saved"
        return f"interrupted at step {self.step}, after tuning had finished ({self.outcome})"

    # --- the loop --------------------------------------------------------------
    def before_step(self) -> None:
        now = time.perf_counter()
        if self.last_start is not None:
            self.durations[self.step - 1] = now - self.last_start
        self.last_start = now
        s, sched = self.step, self.schedule
        self.step += 1
        if s == sched.baseline_steps.stop:
            self.baseline = self._window(sched.baseline_steps)
            log.info(f"tune: baseline (user configuration) median {self.baseline.median_s * 1e3:.2f} ms "
                     f"over {len(self.baseline.step_s)} steps")
            if self.ddp._comm_hooks:
                log.warn("a comm hook is registered on this DDP: gdat cannot trace it; not tuning")
                self.done = True
                return
            self.session = ProfileSession(self.ddp)
        if s in sched.compute_steps or s in sched.overlap_steps:
            self.session.begin_step("compute" if s in sched.compute_steps else "overlap")
        elif s == sched.overlap_steps.stop:
            self._generate()
        else:
            ended = next((i for i in range(len(self.candidates)) if s == sched.candidate_switch(i + 1)), None)
            if ended is not None:
                self.measured.append(self._window(sched.candidate_steps(ended)))
                c = self.candidates[ended]
                log.info(f"tune: candidate {ended + 1}/{len(self.candidates)} {c.plan.label}: measured "
                         f"{self.measured[-1].median_s * 1e3:.2f} ms (predicted {c.sim.step_s * 1e3:.2f} ms)")
                if ended + 1 < len(self.candidates):
                    self._switch_to_candidate(ended + 1)
                else:
                    self._finish()

    def after_forward(self, output: Any) -> None:
        if self.session is not None:
            self.session.end_forward(output)

    # --- generate ---------------------------------------------------------------
    def _generate(self) -> None:
        self.session.recorder.start_step()
        self.profile = self.session.finish(self.ctx.cost, {"source": "gdat online tuner"})
        self.session = None
        ranked: list[dict[str, Any]] | None = None
        if self.rank == 0:
            try:
                ranked = self._rank()
            except (ProfileError, PlanError) as e:
                log.warn(f"cannot build candidate plans ({e}); not tuning")
        ranked = _broadcast(ranked, self.group)
        if ranked is None:
            switch_buckets(self.ddp, **self.ctx.user_bucket_args)
            self.done = True
            return
        if not ranked:
            log.info("tune: every plan the search generated buckets gradients like the user's configuration")
            self._finish()
            return
        self.candidates = [RankedPlan(BucketPlan.from_dict(r["plan"]), _sim_from(r)) for r in ranked]
        self.schedule = replace(self.schedule, candidates=len(self.candidates))
        self._switch_to_candidate(0)

    def _rank(self) -> list[dict[str, Any]]:
        profile = self.profile
        self.timeline = timeline = profile.ready_timeline("compute")
        fitted = calibrate(profile, self.ctx.cost)
        cost = self.cost = fitted.cost
        self.contention = fitted.contention
        self.baseline_plan = measured_plan(profile)
        ranked = rank_candidates(timeline, cost, self.contention, self.schedule.candidates,
                                 exclude=(self.baseline_plan,))
        if self.ctx.stored is not None and not any(r.plan.same_buckets(self.ctx.stored.plan) for r in ranked):
            stored = BucketPlan(self.ctx.stored.plan.buckets, "stored")
            ranked = ranked[: max(0, self.schedule.candidates - 1)]
            ranked.append(RankedPlan(stored, simulate(timeline, stored, cost, self.contention)))
        bound = lower_bound_s(timeline, cost, self.contention)
        base_sim = simulate(timeline, self.baseline_plan, cost, self.contention)
        log.info(f"tune: profile: backward {(timeline.backward_end_s - timeline.backward_start_s) * 1e3:.1f} ms, "
                 f"allreduce x{fitted.comm_scale:.2f} in situ, "
                 f"contention sigma={self.contention.compute_stretch:.2f} kappa={self.contention.comm_slowdown:.2f}; "
                 f"baseline predicted {base_sim.step_s * 1e3:.2f} ms, lower bound {bound * 1e3:.2f} ms")
        return [{"plan": r.plan.to_dict(), "start_s": r.sim.start_s, "end_s": r.sim.end_s,
                 "backward_end_s": r.sim.backward_end_s, "comm_end_s": r.sim.comm_end_s,
                 "step_s": r.sim.step_s} for r in ranked]

    def _switch_to_candidate(self, i: int) -> None:
        c = self.candidates[i]
        log.info(f"tune: candidate {i + 1}/{len(self.candidates)} {c.plan.label} "
                 f"({len(c.plan.buckets)} buckets): predicted {c.sim.step_s * 1e3:.2f} ms")
        self._apply(c.plan)

    def _apply(self, plan: BucketPlan) -> None:
        switch_buckets(self.ddp, **ddp_bucket_arguments(plan, *_in_plan_order(plan, self.ctx.params)))

    # --- keep ---------------------------------------------------------------------
    def _finish(self) -> None:
        """Decide (rank 0), switch every rank to the decision, keep and report."""
        verdict = _broadcast(decide(self.baseline, self.measured) if self.rank == 0 else None, self.group)
        winner = None if verdict.winner is None else self.candidates[verdict.winner]
        if winner is None:
            switch_buckets(self.ddp, **self.ctx.user_bucket_args)
        elif verdict.winner != len(self.candidates) - 1:
            self._apply(winner.plan)
        self.done = True
        if self.rank == 0:
            self._keep(winner, verdict)

    def _keep(self, winner: RankedPlan | None, verdict: Verdict) -> None:
        base_ms = self.baseline.median_s * 1e3
        result_ms = base_ms if winner is None else self.measured[self.candidates.index(winner)].median_s * 1e3
        summary = RepoSummary()
        outcome = "tuning unsatisfied" if winner is None else "tuning successful"
        bank_path = None
        if self.ctx.stored is not None:
            stored_idx = next((i for i, c in enumerate(self.candidates)
                               if c.plan.same_buckets(self.ctx.stored.plan)), None)
            replaced = winner is not None and (stored_idx is None or (
                self.candidates[stored_idx] is not winner and self._beats(winner, stored_idx)))
            summary.count("update" if replaced else "reserved")
            if replaced:
                bank_path = self._save(winner.plan, base_ms, result_ms)
        else:
            summary.count("add" if winner else "unsatisfied")
            bank_path = self._save(winner.plan if winner else self.baseline_plan, base_ms, result_ms)
        tl = self.timeline
        order, nbytes, dtypes = list(tl.order), list(tl.nbytes), list(tl.dtypes)
        n = len(self.ctx.params)
        chosen = plan_formats(winner.plan if winner else self.baseline_plan, order, nbytes, dtypes, n)
        report = GdatReport(
            tuning_name=self.ctx.tuning_name, tuning_time_s=time.time() - self.began, outcome=outcome,
            reason=verdict.reason, baseline_ms=base_ms, result_ms=result_ms, summary=summary, chosen=chosen,
            baseline_plan=plan_formats(self.baseline_plan, order, nbytes, dtypes, n),
            candidates=[CandidateResult(c.plan, c.sim.step_s * 1e3, m.median_s * 1e3, m.mad_s * 1e3)
                        for c, m in zip(self.candidates, self.measured)],
            lower_bound_ms=lower_bound_s(tl, self.cost, self.contention) * 1e3,
            baseline_predicted_ms=simulate(tl, self.baseline_plan, self.cost, self.contention).step_s * 1e3,
            noise_ms=verdict.noise_s * 1e3, tuning_steps=self.schedule.total,
            extra={"noisy": verdict.noisy, "cost_model": self.ctx.cost.to_dict(),
                   "calibrated_cost_model": self.cost.to_dict(),
                   "contention": self.contention.to_dict(), "knowledge_base_entry": bank_path,
                   "baseline_window": self.baseline.to_dict()})
        change = f"step time {(result_ms - base_ms) / base_ms * 100:+.1f}%, AOE improvement " \
            f"{improvement_percent(base_ms, result_ms)}" if winner else "kept"
        log.info(f"tune: {outcome}: {winner.plan.label if winner else 'user configuration'} "
                 f"{result_ms:.2f} ms vs baseline {base_ms:.2f} ms ({change}); {verdict.reason}")
        try:
            path = report.write(self.ctx.config.work_path)
            self.outcome = f"{outcome}; report {path}"
            log.info(f"report: {path}")
            self._chart(path, winner)
        except OSError as e:
            log.warn(f"cannot write the report ({e})")

    def _beats(self, winner: RankedPlan, stored_idx: int) -> bool:
        """Whether ``winner`` measured faster than the stored plan beyond the noise."""
        w = self.measured[self.candidates.index(winner)]
        return decide(self.measured[stored_idx], [w]).winner == 0

    def _save(self, plan: BucketPlan, base_ms: float, result_ms: float) -> str | None:
        """Store ``plan`` (the winner, or the user's configuration when nothing won)."""
        entry = BankedPlan(plan, base_ms, result_ms, 1.0 / max(self.ctx.cost.beta_s_per_byte, 1e-15),
                           time.time())
        bank = KnowledgeBase(bank_root(), "gdat")
        try:
            bank.put(self.ctx.key, entry.to_payload())
        except (OSError, BankError) as e:
            log.warn(f"cannot save the plan in the knowledge base ({e})")
            return None
        path = bank.path_for(self.ctx.key)
        log.info(f"knowledge base: saved {path}")
        return path

    def _chart(self, report_path: str, winner: RankedPlan | None) -> None:
        from gdat.profiling.overlap_plot import plot_available, plot_overlap

        if not plot_available() or self.timeline is None:
            return
        before = [(f"rank {r.rank} step {s.step}", s) for r in self.profile.ranks for s in r.steps
                  if s.kind == "overlap"]
        chosen = winner.plan if winner else self.baseline_plan
        sim = simulate(self.timeline, chosen, self.cost, self.contention)
        after = [("predicted", predicted_step_record(self.timeline, chosen, sim, 0, self.contention))]
        plot_overlap([("before: measured, user configuration (overlapped profile steps)", before),
                      (f"after: predicted, {chosen.label}", after)], report_path[:-len(".json")] + ".png")


def _sim_from(r: dict[str, Any]) -> Simulation:
    return Simulation(tuple(r["start_s"]), tuple(r["end_s"]), r["backward_end_s"], r["comm_end_s"], r["step_s"])

