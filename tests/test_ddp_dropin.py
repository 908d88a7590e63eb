"""gdat's DDP is a drop-in for stock DDP, with and without tuning (real 2-rank gloo jobs).

Every configuration runs in one 2-rank job (:func:`_all_configurations`), each on a
fresh pair of DDPs; the tests read its results.
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
import pickle
import warnings

import pytest
import torch
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel as StockDDP

from gdat.options import GdatConfig
from tests.models import batch, mlp

STEPS = 26  # tuning decides at step 14 (CONFIG's short calendar); its confirmation ends by step 25

CONFIGURATIONS = {
    "plain": ({}, 1, False, None),
    "accumulation": ({}, 3, False, None),                                  # gradient accumulation with no_sync()
    "static graph, bucket view": ({"static_graph": True, "gradient_as_bucket_view": True}, 1, False, None),
    "user comm hook": ({"bucket_cap_mb": 0.05}, 1, True, None),            # runs, not tuned
    "find_unused_parameters": ({"find_unused_parameters": True}, 1, False, None),  # tuned in its fixed bucket order
    "torch without a DDP internal": ({}, 1, False, "_remove_autograd_hooks"),  # warned once, stock DDP
}
# the shortest calendar with a candidate block: 2 warm-up, 2 + 2 profiled, 2 blocks of 1 + 3 steps
SHORT = {"comm_budget_s": 0.1, "max_tune_steps": 15, "profile_steps": 2}
EXPECT_TUNED = {"plain": True, "accumulation": True, "static graph, bucket view": True, "user comm hook": False,
                "find_unused_parameters": True, "torch without a DDP internal": False}


def _train(ddp, rank, accumulate=1):
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    for step in range(STEPS):
        opt.zero_grad()
        for micro in range(accumulate - 1):
            with ddp.no_sync():
                ddp(batch(rank, 100 * step + micro, 256)).pow(2).mean().backward()
        ddp(batch(rank, 100 * step + accumulate, 256)).pow(2).mean().backward()
        opt.step()
    return [p.detach().clone() for p in ddp.module.parameters()]


@contextlib.contextmanager
def _without(member):
    """This torch's DDP without ``member`` (a private one gdat needs)."""
    if member is None:
        yield
        return
    import gdat.reducer.torch_internals as internals

    saved = getattr(internals.STOCK_DDP, member)
    delattr(internals.STOCK_DDP, member)
    internals._warned = False
    try:
        yield
    finally:
        setattr(internals.STOCK_DDP, member, saved)


def _one(rank, work, options, accumulate, user_hook, missing):
    from gdat.ddp import DistributedDataParallel

    os.environ["TUNE_BANK_PATH"] = os.path.join(work, "bank")  # a bank of its own: tuned, not a hit
    config = GdatConfig(mode="tune", work_path=work, **SHORT)
    stock_model, gdat_model = mlp(256, 6), mlp(256, 6)
    stock = StockDDP(stock_model, **options)
    stderr = io.StringIO()
    with _without(missing):
        with warnings.catch_warnings(record=True), contextlib.redirect_stderr(stderr):
            tuned = DistributedDataParallel(gdat_model, gdat_config=config, **options)
        if user_hook:
            stock.register_comm_hook(None, allreduce_hook)
            tuned.register_comm_hook(None, allreduce_hook)
        facts = {
            "isinstance": isinstance(tuned, StockDDP),
            "module": tuned.module is gdat_model,
            "state_dict": list(tuned.state_dict()) == list(stock.state_dict()),
            "stderr": stderr.getvalue(),
        }
        a, b = _train(stock, rank, accumulate), _train(tuned, rank, accumulate)
    facts["equal"] = all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    facts["tuned"] = tuned.gdat_done and tuned.gdat_decision is not None and bool(tuned.gdat_decision.plans)
    copied, unpickled = copy.deepcopy(tuned), pickle.loads(pickle.dumps(tuned))
    x = batch(rank, 999, 256)
    with torch.no_grad():
        facts["copies"] = all(type(c) is type(tuned) and c.gdat_done and c.gdat_decision is None
                              and torch.equal(c(x), tuned(x))
                              for c in (copied, unpickled))
    return facts


def _hook_after_tuning(rank, work):
    """One parameter tensor: no plan differs from DDP's, so the tuner measures the
    user's configuration alone and leaves the reducer it profiled (DDP's runtime
    logging goes on); a comm hook registered after tuning must still be taken."""
    from gdat.ddp import DistributedDataParallel

    os.environ["TUNE_BANK_PATH"] = os.path.join(work, "bank")
    torch.manual_seed(3)
    stock_model = torch.nn.Linear(256, 1, bias=False)
    gdat_model = copy.deepcopy(stock_model)
    stock = StockDDP(stock_model)
    tuned = DistributedDataParallel(gdat_model, gdat_config=GdatConfig(mode="tune", work_path=work, **SHORT))
    first = _train(stock, rank), _train(tuned, rank)
    facts = {"tuned, no candidate": tuned.gdat_done and not tuned.gdat_decision.plans}
    stock.register_comm_hook(None, allreduce_hook)
    tuned.register_comm_hook(None, allreduce_hook)
    then = _train(stock, rank), _train(tuned, rank)
    facts["equal"] = all(torch.equal(x, y) for a, b in (first, then) for x, y in zip(a, b, strict=True))
    return facts


def _plan_file(rank, work):
    """A plan file (``--gdat-plan``): applied at construction, with no tuning and no
    report; the model trains exactly like stock DDP given the plan's caps."""
    from gdat.core.layout import GradientLayout, params_of
    from gdat.core.plan import BucketPlan
    from gdat.ddp import DistributedDataParallel
    from gdat.reducer.plan_switch import ddp_bucket_arguments
    from gdat.report import outcome

    os.makedirs(work, exist_ok=True)
    stock_model, gdat_model = mlp(256, 6), mlp(256, 6)
    params = params_of(list(stock_model.named_parameters()))
    ready = GradientLayout.of(params, [p.index for p in params][::-1])  # backward's order
    plan = BucketPlan.from_ends(ready, [4, 8, 12], "from a file")
    path = os.path.join(work, "plan.json")
    if rank == 0:
        plan.save(path)
    torch.distributed.barrier()
    stock = StockDDP(stock_model, **ddp_bucket_arguments(plan, ready))
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        given = DistributedDataParallel(gdat_model, gdat_config=GdatConfig(mode="tune", work_path=work, plan=path))
    a, b = _train(stock, rank), _train(given, rank)
    return {"stderr": stderr.getvalue(), "equal": all(torch.equal(x, y) for x, y in zip(a, b, strict=True)),
            "untuned": given.gdat_done and given.gdat_decision is None,
            "clause": outcome._entries[-1].clause, "path": path,
            "reports": [f for f in os.listdir(work) if f.startswith("aoe_result")]}


def _all_configurations(rank, world, work):
    found = {name: _one(rank, os.path.join(work, str(k)), *config)
             for k, (name, config) in enumerate(CONFIGURATIONS.items())}
    found["hook after tuning"] = _hook_after_tuning(rank, os.path.join(work, "hook_after"))
    found["plan file"] = _plan_file(rank, os.path.join(work, "plan_file"))
    return found


@pytest.fixture(scope="module")
def ranks(two_rank_job):
    return two_rank_job("dropin")


@pytest.mark.parametrize("name", list(CONFIGURATIONS))
def test_gdat_ddp_trains_exactly_like_stock_ddp(ranks, name):
    for per_rank in ranks:
        facts = per_rank[name]
        assert facts["isinstance"] and facts["module"] and facts["state_dict"]
        assert facts["equal"], f"parameters after {STEPS} steps equal stock DDP's, bitwise"
        assert facts["tuned"] == EXPECT_TUNED[name]
        assert facts["copies"], "deepcopy and pickle give a stock-behaving gdat DDP, as stock DDP does"


def test_a_comm_hook_registered_after_tuning_found_nothing_to_measure_is_taken(ranks):
    for per_rank in ranks:
        facts = per_rank["hook after tuning"]
        assert facts["tuned, no candidate"] and facts["equal"]


def test_a_plan_file_is_applied_without_tuning_and_trains_like_stock_ddp_with_its_caps(ranks):
    said = "".join(per_rank["plan file"]["stderr"] for per_rank in ranks)  # rank 0 says it
    assert said.count("gdat: applying plan 'from a file': 3 buckets") == 1 and "tune:" not in said, said
    for per_rank in ranks:
        facts = per_rank["plan file"]
        assert facts["untuned"] and facts["equal"] and facts["reports"] == []
        assert facts["clause"] == f"applied plan file {facts['path']}"


def test_a_torch_without_a_needed_internal_is_named_once_and_left_stock(ranks):
    said = ranks[0]["torch without a DDP internal"]["stderr"]
    assert said.count("gdat: warning:") == 1
    assert "lacks DistributedDataParallel._remove_autograd_hooks" in said and "runs as stock DDP" in said
    assert "measuring allreduce" not in said  # decided before any tuning work


def test_missing_internals_are_named(monkeypatch):
    from gdat.reducer import torch_internals
    from gdat.reducer.torch_internals import STOCK_DDP, lacking, missing_internals

    assert missing_internals() == []
    monkeypatch.delattr(STOCK_DDP, "_ddp_init_helper")
    monkeypatch.delattr("torch.nn.parallel.distributed._BucketCapacityConfig.create")
    assert missing_internals() == ["DistributedDataParallel._ddp_init_helper",
                                   "torch.nn.parallel.distributed._BucketCapacityConfig.create"]
    monkeypatch.undo()
    cap_attributes = ("bucket_bytes_cap", "bucket_bytes_cap_list", "bucket_bytes_cap_default")
    not_a_ddp = torch.nn.Linear(2, 2)
    assert missing_internals(not_a_ddp) == [f"DistributedDataParallel().{m}" for m in
                                            ("_comm_hooks", "_use_python_reducer", "_has_rebuilt_buckets",
                                             *cap_attributes, "_bucket_config")]
    # torch 2.11: no capacity dataclass, the caps in the instance's attributes alone
    monkeypatch.delattr("torch.nn.parallel.distributed._BucketCapacityConfig")
    assert missing_internals() == []
    assert missing_internals(not_a_ddp)[-3:] == [f"DistributedDataParallel().{m}" for m in cap_attributes]
    # a torch older than 2.11: the one line names the release tuning needs
    monkeypatch.setattr(torch_internals, "supports_cap_list", lambda: False)
    assert missing_internals() == ["DistributedDataParallel's bucket_cap_mb_list"]
    said = lacking(missing_internals())
    assert said.startswith(f"torch {torch.__version__} lacks") and "gdat tunes with torch >= 2.11" in said


def test_sampling_ddps_runtime_logging_stops_tuning_and_keeps_the_reducer(tmp_path, monkeypatch, capfd):
    """A user who samples DDP's runtime logging reads it: gdat then rebuilds no
    reducer (a rebuild restarts that logging), and the logging runs as on stock DDP
    (PyTorch's own check of it: ``test_ddp_logging_data_cpu``, tests/torch_ddp_suite.py)."""
    from gdat.ddp import DistributedDataParallel
    from tests.distributed import one_rank_group

    monkeypatch.setenv("TUNE_BANK_PATH", str(tmp_path / "bank"))
    with one_rank_group():
        ddp = DistributedDataParallel(mlp(), gdat_config=GdatConfig(mode="tune", work_path=str(tmp_path),
                                                                    comm_budget_s=0.1))
        assert not ddp.gdat_done
        ddp._set_ddp_runtime_logging_sample_rate(2)
        assert ddp.gdat_done and ddp.gdat_decision is None
        reducer = ddp.reducer
        for step in range(14):
            ddp(batch(0, step)).pow(2).mean().backward()
            data = ddp._get_ddp_logging_data()
            if 0 < step and (step < 10 or step % 2 == 0):
                assert data.get("iteration") == step and data.get("forward_compute_time") >= 1
        assert ddp.reducer is reducer
    assert "DDP's runtime logging is sampled" in capfd.readouterr().err
