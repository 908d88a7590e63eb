"""Construction: how gdat treats a DDP, decided before stock DDP's constructor runs.

:func:`prepare_construction`, for ``--gdat-mode tune|apply`` and ``--gdat-plan``,
in named stages:

1. check (:func:`_unsupported`): DDP options gdat cannot tune (``mixed_precision``,
   ``delay_all_reduce_named_params``, the python reducer of ``torch.compile``)
   leave the model stock DDP with one line and a ``tuning unsatisfied`` report
   saying why.  A DDP with ``find_unused_parameters=True`` is tuned under its
   fixed bucket order (:data:`gdat.core.layout.FIXED_ORDER`); the option is in the
   bank key.  A model on the CPU gets glibc's malloc thresholds fixed
   (:mod:`gdat.reducer.host_allocator`), so a plan runs as it was measured;
2. plan file (:func:`_plan_file`): a plan given with ``--gdat-plan`` is checked
   against the model and applied, nothing else;
3. link (:func:`_measure_link`): measure the allreduce cost on this process group
   (:func:`gdat.profiling.allreduce_bench.measure_allreduce`) and, where the job has
   several nodes of several ranks, inside each node too; a cost that cannot be
   fitted leaves the model stock DDP, with the reason;
4. key (:func:`_key`): the knowledge-base key of this model, topology, software and
   link (:func:`gdat.bank.plans.bank_key`), at the link's bandwidth
   (:attr:`gdat.core.cost_model.AllreduceCostModel.bandwidth_bytes_per_s`);
5. lookup (:func:`_look_up`): rank 0 reads the bank, every rank receives its
   answer.  A near miss (an entry of the same key at another link class) measures
   the link again, longer, and looks up again (:func:`_recheck`);
6. hit (:func:`_hit`, without ``REPEAT_TUNE``): an entry whose evidence settled
   the key becomes DDP's ``bucket_cap_mb_list``, so it applies from DDP's first
   bucket rebuild and no step is spent tuning; ``apply`` mode applies any entry's
   plan;
7. miss: ``apply`` mode runs the user's configuration; ``tune`` mode gives the
   :class:`gdat.tune.context.TuneContext` the tuning loop (:mod:`gdat.tune.loop`)
   starts from.  An entry whose evidence is inconclusive is resumed: its evidence
   and the profile its candidates came from go with it, so tuning measures again
   without profiling, and pools (also under ``REPEAT_TUNE``).

With ``--gdat-compress``, stage 3 also checks that the backend sums the reduced
dtype (:func:`gdat.reducer.compression.reduced_allreduce_works`; if not, one line
and no compression) and stage 7 measures the cast cost
(:mod:`gdat.profiling.cast_bench`); the key records the dtype (so exact and lossy
plans never share an entry) and a hit on a compressed plan installs the
compression hook when DDP is built.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.distributed as dist

from gdat.bank.plans import BankHit, bank_key, link_class, lookup, lookup_near
from gdat.bank.store import KnowledgeBase
from gdat.core import log
from gdat.core.collectives import broadcast_from_first
from gdat.core.cost_model import AllreduceCostModel
from gdat.core.device import device_type_of, hardware_fingerprint
from gdat.core.layout import FIXED_ORDER, READY_ORDER, GradientLayout, ParamInfo, model_layout
from gdat.core.plan import BucketPlan
from gdat.errors import ProfileError, UsageError
from gdat.options import GdatConfig, bank_root, repeat_tune
from gdat.profiling.allreduce_bench import fit_from_ladder, measure_allreduce
from gdat.profiling.cast_bench import measure_cast
from gdat.profiling.topology import Topology, intra_node_fit, topology_of
from gdat.reducer.compression import reduced_allreduce_works
from gdat.reducer.ddp_model import ddp_options, options_group, param_infos
from gdat.reducer.host_allocator import fix_for
from gdat.reducer.plan_switch import ddp_bucket_arguments
from gdat.reducer.torch_internals import python_reducer_active
from gdat.report import outcome
from gdat.report.gdat_report import hit_report, write_report
from gdat.tune.context import Construction, TuneContext

__all__ = ["prepare_construction", "tuning_name"]

_UNSUPPORTED = {
    "mixed_precision": "DDP's mixed_precision option",
    "delay_all_reduce_named_params": "delay_all_reduce_named_params",
}
_RECHECK_S = 1.0
_RECHECK_MIN_BYTES = 256 << 10


@dataclass(frozen=True)
class _Link:
    """Stage 3's measurement: the job's layout and the allreduce fit of each link
    class (``cost``: the whole job's, on its slowest link)."""

    topology: Topology
    cost: AllreduceCostModel
    intra: AllreduceCostModel | None

    def report_layout(self) -> dict[str, Any]:
        fits = {"inter_node" if self.topology.nodes > 1 else "intra_node": self.cost}
        if self.intra is not None:
            fits["intra_node"] = self.intra
        return self.topology.to_dict(fits)


def prepare_construction(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any],
                         config: GdatConfig) -> Construction:
    """The stages of the module docstring (collectives on DDP's process group)."""
    options = ddp_options(module, args, kwargs)
    group = options_group(options)
    reason = _unsupported(options)
    if reason:
        return _untuned(module, kwargs, config, reason, group)
    fix_for(device_type_of(module))
    params = param_infos(module)
    fixed = bool(options.get("find_unused_parameters")) and not options.get("static_graph")
    model = model_layout(params, FIXED_ORDER if fixed else READY_ORDER)
    if config.plan:
        return _plan_file(config, model, kwargs, group)
    repeat = _repeat_tune()
    compress = _compression(config.compress, group)
    try:
        link = _measure_link(config, group)
        key = _key(module, params, options, fixed, link, compress, group)
        hit, near = broadcast_from_first(_look_up(key, link.cost.bandwidth_bytes_per_s, model, group), group)
        if hit is None and near is not None:
            link, key, hit = _recheck(config, link, key, near, model, group)
    except ProfileError as e:
        return _untuned(module, kwargs, config, f"cannot fit the allreduce cost ({e}); this model runs as stock DDP",
                        group)
    if hit is not None and (config.mode == "apply" or (not repeat and hit.entry.confident)):
        return _hit(module, kwargs, config, hit, link, compress, group)
    if config.mode == "apply":
        log.info("knowledge base miss: running the user's configuration untuned (--gdat-mode apply)")
        outcome.record(outcome.Outcome("not tuned (knowledge base miss; --gdat-mode apply does not tune)",
                                       config.work_path))
        return Construction(kwargs)
    cost = link.cost
    if compress:
        cost = cost.with_cast(measure_cast(compress, min(0.5, config.comm_budget_s), group))
    start = hit or near
    user_args = {k: options.get(k) for k in ("bucket_cap_mb", "bucket_cap_mb_list")}
    resume = hit is not None and not hit.entry.confident
    return Construction(kwargs, TuneContext(
        config, cost, key if hit is None else hit.key, user_args, None if start is None else start.entry.plan,
        tuning_name(module), link.report_layout(), compress, None if hit is None else hit.entry.evidence,
        hit.entry.profile if resume else None))


def _unsupported(options: dict[str, Any]) -> str | None:
    """Stage 1: why gdat leaves a DDP with these options untouched, if it does."""
    for name, what in _UNSUPPORTED.items():
        if options.get(name):
            return f"gdat does not tune DDP with {what}; this model runs as stock DDP"
    if python_reducer_active():
        return "gdat does not tune DDP's python reducer; this model runs as stock DDP"
    return None


def _plan_file(config: GdatConfig, model: GradientLayout, kwargs: dict[str, Any], group: Any) -> Construction:
    """Stage 2: the ``--gdat-plan`` file, applied (compressed where it says so and
    ``--gdat-compress`` allows it)."""
    plan = BucketPlan.load(config.plan)
    compress = plan.compressed and bool(_compression(config.compress, group))
    if plan.compressed and not compress:
        log.info("the plan compresses buckets; without --gdat-compress they are reduced exactly")
    arguments = _plan_arguments(plan, plan.layout_on(model))
    outcome.record(outcome.Outcome(f"applied plan file {config.plan}", config.work_path))
    return Construction({**kwargs, **arguments}, compressed=plan if compress else None)


def _repeat_tune() -> bool:
    try:
        return repeat_tune()
    except UsageError as e:
        log.warn(f"{e}; using REPEAT_TUNE=False")
        return False


def _fit(seconds: float, group: Any, min_bytes: int | None = None) -> AllreduceCostModel:
    """The allreduce cost measured for ``seconds`` on ``group`` (raises :class:`ProfileError`)."""
    ladder = measure_allreduce(seconds, group) if min_bytes is None else \
        measure_allreduce(seconds, group, min_bytes=min_bytes)
    return fit_from_ladder(ladder)


def _measure_link(config: GdatConfig, group: Any) -> _Link:
    """Stage 3 (raises :class:`ProfileError` when the cost cannot be fitted)."""
    log.info(f"{config.mode}: measuring allreduce for {config.comm_budget_s:g} s")
    cost = _fit(config.comm_budget_s, group)
    topology = topology_of(group)
    return _Link(topology, cost, intra_node_fit(topology, group, config.comm_budget_s))


def _key(module: torch.nn.Module, params: tuple[ParamInfo, ...], options: dict[str, Any], fixed: bool,
         link: _Link, compress: str, group: Any) -> dict[str, Any]:
    """Stage 4."""
    device_type = device_type_of(module)
    t = link.topology
    key = bank_key(params, t.world_size, t.ranks_per_node, t.nodes, str(dist.get_backend(group)), device_type,
                   torch.__version__, broadcast_from_first(hardware_fingerprint(device_type), group),
                   {"static_graph": bool(options.get("static_graph")),
                    "gradient_as_bucket_view": bool(options.get("gradient_as_bucket_view")),
                    **({"find_unused_parameters": True} if fixed else {})},
                   link.cost.bandwidth_bytes_per_s)
    if compress:
        key["compress"] = compress
    return key


def _look_up(key: dict[str, Any], bandwidth: float, model: GradientLayout,
             group: Any) -> tuple[BankHit | None, BankHit | None]:
    """Stage 5, on rank 0: the bank's entry for ``key`` within the bandwidth
    tolerance, else a near miss (:func:`gdat.bank.plans.lookup_near`).  A bank gdat
    cannot read or parse, whatever is wrong with it, is warned about and treated as
    empty: a file in a shared directory never stops training."""
    if dist.get_rank(group) != 0:
        return None, None
    bank = KnowledgeBase(bank_root(), "gdat")
    try:
        hit = lookup(bank, key, bandwidth, model)
        return hit, None if hit is not None else lookup_near(bank, key, model)
    except Exception as e:  # noqa: BLE001 - the bank is input from anyone; see the docstring
        log.warn(f"knowledge base unreadable ({type(e).__name__}: {e}); tuning afresh")
        return None, None


def _recheck(config: GdatConfig, link: _Link, key: dict[str, Any], near: BankHit, model: GradientLayout,
             group: Any) -> tuple[_Link, dict[str, Any], BankHit | None]:
    """Stage 5 after a near miss: the link measured again, longer, and the key's
    link class and the lookup with it."""
    log.info(f"knowledge base: this model was tuned at {near.entry.bandwidth_bytes_per_s * 8e-9:.3g} Gbit/s, "
             f"the link measured {link.cost.bandwidth_bytes_per_s * 8e-9:.3g} now; measuring it again for "
             f"{_RECHECK_S:g} s")
    link = replace(link, cost=_fit(max(_RECHECK_S, config.comm_budget_s), group, _RECHECK_MIN_BYTES))
    key = {**key, "link_class": link_class(link.cost.bandwidth_bytes_per_s)}
    hit, _ = broadcast_from_first(_look_up(key, link.cost.bandwidth_bytes_per_s, model, group), group)
    return link, key, hit


def _hit(module: torch.nn.Module, kwargs: dict[str, Any], config: GdatConfig, hit: BankHit, link: _Link,
         compress: str, group: Any) -> Construction:
    """Stage 6: the bank's plan as DDP's arguments, its report and outcome."""
    entry = hit.entry
    log.info(f"knowledge base hit: plan {entry.plan.label!r} ({len(entry.plan.buckets)} buckets), "
             f"tuned at {entry.result_ms:.1f} ms vs baseline {entry.baseline_ms:.1f} ms; no tuning steps")
    written = write_report(hit_report(tuning_name(module), entry, hit.layout, bank_root(), link.report_layout()),
                           config.work_path) if dist.get_rank(group) == 0 else None
    outcome.record(outcome.Outcome(f"applied the knowledge base's plan {entry.plan.label!r}", config.work_path,
                                   written))
    return Construction({**kwargs, **_plan_arguments(entry.plan, hit.layout)},
                        compressed=entry.plan if entry.plan.compressed and compress else None)


def _compression(dtype: str, group: Any) -> str:
    """``dtype`` when lossy candidates are allowed and the backend sums it, else ``""``."""
    if not dtype:
        return ""
    why = reduced_allreduce_works(dtype, group)
    if why is not None:
        log.warn(f"--gdat-compress {dtype}: {why}; tuning without compression")
        return ""
    return dtype


def _plan_arguments(plan: BucketPlan, layout: GradientLayout) -> dict[str, Any]:
    args = ddp_bucket_arguments(plan, layout)
    log.info(f"applying plan {plan.label!r}: {len(plan.buckets)} buckets")
    return args


def _untuned(module: torch.nn.Module, kwargs: dict[str, Any], config: GdatConfig, reason: str,
             group: Any) -> Construction:
    """Stock DDP for a model gdat does not tune: one line, a report with the reason."""
    log.warn(reason)
    outcome.record(outcome.untuned(reason, tuning_name(module), config.work_path, dist.get_rank(group) == 0))
    return Construction(kwargs)


def tuning_name(module: torch.nn.Module) -> str:
    """The report's ``tuning_name``: ``<script>:<model class>``."""
    script = os.path.basename(os.environ.get("GDAT_SCRIPT", "")) or "python"
    return f"{script}:{type(module).__name__}"
