"""Construction: how gdat treats a DDP, decided before stock DDP's constructor runs.

:func:`prepare_construction`, for ``--gdat-mode tune|apply`` and ``--gdat-plan``:

1. check: DDP options gdat cannot tune (``mixed_precision``,
   ``delay_all_reduce_named_params``, the python reducer of ``torch.compile``)
   leave the model stock DDP with one line and a ``tuning unsatisfied`` report
   saying why; a plan file given with
   ``--gdat-plan`` is checked against the model and applied.  A DDP with
   ``find_unused_parameters=True`` is tuned under its fixed bucket order
   (:data:`gdat.core.layout.FIXED_ORDER`); the option is in the bank key;
2. ladder: measure the allreduce cost on this process group
   (:func:`gdat.profiling.allreduce_bench.measure_allreduce`);
3. key: the knowledge-base key of this model, topology, software and link
   (:func:`gdat.bank.plans.bank_key`);
4. lookup: rank 0 reads the bank, every rank receives its answer.  A hit (without
   ``REPEAT_TUNE``) becomes DDP's ``bucket_cap_mb_list``, so the plan applies from
   DDP's first bucket rebuild and no step is spent tuning; a miss in ``tune`` mode
   gives the :class:`TuneContext` the tuning loop (:mod:`gdat.tune.loop`) starts
   from.

With ``--gdat-compress``, step 2 also checks that the backend sums the reduced
dtype (:func:`gdat.reducer.compression.reduced_allreduce_works`; if not, one line and no
compression) and measures the cast cost (:mod:`gdat.profiling.cast_bench`); the key
records the dtype (so exact and lossy plans never share an entry) and a hit on a
compressed plan installs the compression hook when DDP is built.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from gdat.core import log
from gdat.report import outcome
from gdat.core.collectives import broadcast_from_first
from gdat.reducer.compression import reduced_allreduce_works
from gdat.options import GdatConfig, bank_root, repeat_tune
from gdat.core.cost_model import AllreduceCostModel
from gdat.reducer.torch_internals import python_reducer_active
from gdat.reducer.ddp_model import ddp_options, options_group, param_infos
from gdat.core.device import device_type_of, hardware_fingerprint
from gdat.errors import ProfileError, UsageError
from gdat.bank.store import KnowledgeBase
from gdat.core.layout import FIXED_ORDER, READY_ORDER, GradientLayout, model_layout
from gdat.core.plan import BucketPlan
from gdat.bank.plans import BankHit, bank_key, link_class, lookup, lookup_near
from gdat.reducer.plan_switch import ddp_bucket_arguments
from gdat.profiling.allreduce_bench import fit_from_ladder, measure_allreduce
from gdat.profiling.cast_bench import measure_cast
from gdat.report.gdat_report import hit_report, write_report
from gdat.profiling.topology import intra_node_fit, topology_of

__all__ = ["prepare_construction", "Construction", "TuneContext", "tuning_name"]

_UNSUPPORTED = {
    "mixed_precision": "DDP's mixed_precision option",
    "delay_all_reduce_named_params": "delay_all_reduce_named_params",
}


@dataclass(frozen=True)
class TuneContext:
    """Facts fixed at construction that the tuning loop and its report use:
    the allreduce fit of the ladder (``cost``), the bank key to keep the result
    under, the user's own bucket arguments, the plan stored under the key when
    ``REPEAT_TUNE`` re-tunes it, the report's name, the job's topology (as the
    report lists it, :meth:`gdat.profiling.topology.Topology.to_dict`) and the reduced dtype
    lossy candidates may use (``""``: none)."""

    config: GdatConfig
    cost: AllreduceCostModel
    key: dict[str, Any]
    user_bucket_args: dict[str, Any]
    stored: BucketPlan | None
    tuning_name: str
    topology: dict[str, Any]
    compress: str = ""


@dataclass(frozen=True)
class Construction:
    """The keyword arguments to build stock DDP with, the tuning context when
    the model is to be tuned, and a compressed plan whose hook to install."""

    kwargs: dict[str, Any]
    tune: TuneContext | None = None
    compressed: BucketPlan | None = None


def _unsupported(options: dict[str, Any]) -> str | None:
    """Why gdat leaves a DDP with these options untouched, if it does."""
    for name, what in _UNSUPPORTED.items():
        if options.get(name):
            return f"gdat does not tune DDP with {what}; this model runs as stock DDP"
    if python_reducer_active():
        return "gdat does not tune DDP's python reducer; this model runs as stock DDP"
    return None


def prepare_construction(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any],
                         config: GdatConfig) -> Construction:
    """Steps 1-4 of the module docstring (collectives on DDP's process group)."""
    options = ddp_options(module, args, kwargs)
    group = options_group(options)
    reason = _unsupported(options)
    if reason:
        return _untuned(module, kwargs, config, reason, group)
    params = param_infos(module)
    fixed = bool(options.get("find_unused_parameters")) and not options.get("static_graph")
    model = model_layout(params, FIXED_ORDER if fixed else READY_ORDER)
    if config.plan:
        plan = BucketPlan.load(config.plan)
        squeeze = plan.compressed and bool(_compression(config.compress, group))
        if plan.compressed and not squeeze:
            log.info("the plan compresses buckets; without --gdat-compress they are reduced exactly")
        outcome.record(outcome.Outcome(f"applied plan file {config.plan}", config.work_path))
        return Construction({**kwargs, **_plan_arguments(plan, plan.layout_on(model))},
                            compressed=plan if squeeze else None)
    try:
        repeat = repeat_tune()
    except UsageError as e:
        log.warn(f"{e}; using REPEAT_TUNE=False")
        repeat = False
    log.info(f"{config.mode}: measuring allreduce for {config.comm_budget_s:g} s")
    try:
        cost = fit_from_ladder(measure_allreduce(config.comm_budget_s, group))
    except ProfileError as e:
        return _untuned(module, kwargs, config, f"cannot fit the allreduce cost ({e}); this model runs as stock DDP",
                        group)
    compress = _compression(config.compress, group)
    bandwidth = _bandwidth(cost)
    device_type = device_type_of(module)
    topology = topology_of(group)
    fits = {"inter_node" if topology.nodes > 1 else "intra_node": cost}
    intra = intra_node_fit(topology, group, config.comm_budget_s)
    if intra is not None:
        fits["intra_node"] = intra
    layout = topology.to_dict(fits)
    key = bank_key(params, topology.world_size, topology.ranks_per_node, topology.nodes,
                   str(dist.get_backend(group)), device_type, torch.__version__, broadcast_from_first(hardware_fingerprint(device_type), group),
                   {"static_graph": bool(options.get("static_graph")),
                    "gradient_as_bucket_view": bool(options.get("gradient_as_bucket_view")),
                    **({"find_unused_parameters": True} if fixed else {})},
                   bandwidth)
    if compress:
        key["compress"] = compress
    hit, near = broadcast_from_first(_look_up(key, bandwidth, model, group), group)
    if hit is None and near is not None:
        log.info(f"knowledge base: this model was tuned at {near.entry.bandwidth_bytes_per_s * 8e-9:.3g} Gbit/s, "
                 f"the link measured {bandwidth * 8e-9:.3g} now; measuring it again for {_RECHECK_S:g} s")
        try:
            cost = fit_from_ladder(measure_allreduce(max(_RECHECK_S, config.comm_budget_s), group,
                                                     min_bytes=_RECHECK_MIN_BYTES))
        except ProfileError as e:
            return _untuned(module, kwargs, config,
                            f"cannot fit the allreduce cost ({e}); this model runs as stock DDP", group)
        bandwidth = _bandwidth(cost)
        key = {**key, "link_class": link_class(bandwidth)}
        fits["inter_node" if topology.nodes > 1 else "intra_node"] = cost
        layout = topology.to_dict(fits)
        hit, _ = broadcast_from_first(_look_up(key, bandwidth, model, group), group)
    name = tuning_name(module)
    if hit is not None and (config.mode == "apply" or not repeat):
        entry = hit.entry
        log.info(f"knowledge base hit: plan {entry.plan.label!r} ({len(entry.plan.buckets)} buckets), "
                 f"tuned at {entry.result_ms:.1f} ms vs baseline {entry.baseline_ms:.1f} ms; no tuning steps")
        written = write_report(hit_report(name, entry, hit.layout, bank_root(), layout), config.work_path) \
            if dist.get_rank(group) == 0 else None
        outcome.record(outcome.Outcome(f"applied the knowledge base's plan {entry.plan.label!r}", config.work_path,
                                       written))
        return Construction({**kwargs, **_plan_arguments(entry.plan, hit.layout)},
                            compressed=entry.plan if entry.plan.compressed and compress else None)
    if config.mode == "apply":
        log.info("knowledge base miss: running the user's configuration untuned (--gdat-mode apply)")
        outcome.record(outcome.Outcome("not tuned (knowledge base miss; --gdat-mode apply does not tune)",
                                       config.work_path))
        return Construction(kwargs)
    user_args = {k: options.get(k) for k in ("bucket_cap_mb", "bucket_cap_mb_list")}
    start = hit or near
    if compress:
        cost = cost.with_cast(measure_cast(compress, min(0.5, config.comm_budget_s), group))
    return Construction(kwargs, TuneContext(config, cost, key if hit is None else hit.key, user_args,
                                            None if start is None else start.entry.plan, name, layout, compress))


_RECHECK_S = 1.0
_RECHECK_MIN_BYTES = 256 << 10


def _compression(dtype: str, group: Any) -> str:
    """``dtype`` when lossy candidates are allowed and the backend sums it, else ``""``."""
    if not dtype:
        return ""
    why = reduced_allreduce_works(dtype, group)
    if why is not None:
        log.warn(f"--gdat-compress {dtype}: {why}; tuning without compression")
        return ""
    return dtype


def _bandwidth(cost: AllreduceCostModel) -> float:
    return 1.0 / cost.beta_s_per_byte if cost.beta_s_per_byte > 0 else 1e12


def _look_up(key: dict[str, Any], bandwidth: float, model: GradientLayout,
             group: Any) -> tuple[BankHit | None, BankHit | None]:
    """On rank 0: the bank's entry for ``key`` within the bandwidth tolerance, else
    a near miss (:func:`gdat.bank.plans.lookup_near`).  A bank gdat cannot read or
    parse, whatever is wrong with it, is warned about and treated as empty: a
    file in a shared directory never stops training."""
    if dist.get_rank(group) != 0:
        return None, None
    bank = KnowledgeBase(bank_root(), "gdat")
    try:
        hit = lookup(bank, key, bandwidth, model)
        return hit, None if hit is not None else lookup_near(bank, key, model)
    except Exception as e:  # noqa: BLE001 - the bank is input from anyone; see the docstring
        log.warn(f"knowledge base unreadable ({type(e).__name__}: {e}); tuning afresh")
        return None, None


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
