"""Profiling on real 2-rank gloo jobs with stock DDP."""
from __future__ import annotations

import json

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from gdat.core.device import Clock
from gdat.core.profile import Profile
from gdat.profiling.chrome_trace import write_chrome_trace
from gdat.profiling.comm_trace import BucketTracer, tracing_allreduce_hook
from gdat.profiling.session import profile_ddp
from gdat.reducer.ddp_model import reducer_parameters
from tests.distributed import run_ranks
from tests.models import batch, mlp


def _profile_job(rank: int, world: int, compute_mode: str) -> dict:
    model = mlp(64, 6)
    ddp = DDP(model, bucket_cap_mb=0.03)  # several buckets
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
    step = [0]

    def train_step() -> None:
        opt.zero_grad()
        ddp(batch(rank, step[0])).pow(2).mean().backward()
        opt.step()
        step[0] += 1

    train_step()
    train_step()  # DDP rebuilds its buckets in ready order here
    profile = profile_ddp(ddp, train_step, compute_steps=3, overlap_steps=3, comm_budget_s=0.5,
                          compute_mode=compute_mode, meta={"compute_mode": compute_mode})
    return {"schema": "gdat.profile", "version": 1, **profile.to_dict()}


def _two_rank_jobs(rank: int, world: int, work: str) -> dict:
    """Everything this module checks on 2 ranks, in one job."""
    return {"profiles": {mode: _profile_job(rank, world, mode) for mode in ("deferred", "no_sync")},
            "bitwise": _bitwise_jobs(rank, world), "reducer_order": _reducer_order_job(rank, world)}


@pytest.fixture(scope="module")
def two_ranks(two_rank_job) -> list[dict]:
    return two_rank_job("profiling")


@pytest.fixture(params=["deferred", "no_sync"])
def profile(request, two_ranks) -> Profile:
    return Profile.from_dict(two_ranks[0]["profiles"][request.param])


def test_every_parameter_once_per_step_monotone_and_inside_backward(profile: Profile):
    n = len(profile.params)
    assert n == 12
    assert len(profile.ranks) == 2
    for r in profile.ranks:
        assert [s.kind for s in r.steps] == ["compute"] * 3 + ["overlap"] * 3
        for s in r.steps:
            indices = [i for i, _ in s.grad_ready]
            assert sorted(indices) == list(range(n)), "each trainable parameter exactly once"
            times = [t for _, t in s.grad_ready]
            assert times == sorted(times), "ready times are monotone in ready order"
            assert s.forward_end_s <= s.backward_start_s <= times[0]
            assert times[-1] <= s.backward_end_s
            assert s.optimizer_start_s is not None and s.optimizer_start_s >= s.backward_end_s


def test_ready_order_matches_the_buckets_ddp_built(profile: Profile):
    order = profile.ready_order()
    assert order == tuple(range(len(profile.params) - 1, -1, -1))  # a Sequential: last layer first
    for r in profile.ranks:
        for s in r.steps:
            if s.kind == "overlap" or s.buckets:
                by_index = sorted(s.buckets, key=lambda b: b.index)
                assert len(by_index) >= 2
                launched = tuple(i for b in by_index for i in b.param_indices)
                assert launched == order
                for b in s.buckets:
                    assert b.launch_s <= b.end_s


def test_compute_steps_have_no_communication_during_backward(profile: Profile):
    for r in profile.ranks:
        for s in r.steps:
            if s.kind == "compute":
                # deferred: allreduces launch when the last bucket is handed over; no_sync: none
                assert all(b.launch_s >= s.grad_ready[-1][1] for b in s.buckets)
                if profile.meta["compute_mode"] == "no_sync":
                    assert not s.buckets
                else:
                    assert s.buckets


def test_ready_timeline_reduces_ranks_by_max(profile: Profile):
    t = profile.ready_timeline("compute")
    assert list(t.ready_s) == sorted(t.ready_s)
    assert t.backward_end_s >= t.ready_s[-1] > 0
    assert t.post_s > 0
    assert t.layout.total_bytes == sum(p.nbytes for p in profile.params)


def test_chrome_trace_parses_with_spans_for_every_rank(profile: Profile, tmp_path):
    path = tmp_path / "trace.json"
    write_chrome_trace(profile, str(path))
    doc = json.loads(path.read_text())
    events = doc["traceEvents"]
    assert all(e["ph"] in ("X", "i", "M") for e in events)
    for rank in (0, 1):
        spans = [e for e in events if e["pid"] == rank and e["ph"] == "X"]
        cats = {e["cat"] for e in spans}
        assert {"step", "forward", "backward", "optimizer", "allreduce"} <= cats
        assert all(e["dur"] >= 0 and e["ts"] >= 0 for e in spans)
        marks = [e for e in events if e["pid"] == rank and e["ph"] == "i"]
        assert len(marks) == 6 * len(profile.params)


def test_profile_json_round_trip(profile: Profile, tmp_path):
    path = str(tmp_path / "p.json")
    profile.save(path)
    again = Profile.load(path)
    assert again == profile


def _bitwise_job(rank: int, world: int, mode: str, as_view: bool) -> list[bool]:
    stock = DDP(mlp(), bucket_cap_mb=0.02, gradient_as_bucket_view=as_view)
    traced = DDP(mlp(), bucket_cap_mb=0.02, gradient_as_bucket_view=as_view)
    index = {id(p): i for i, (_, p) in enumerate(reducer_parameters(traced))}
    spans = []
    tracer = BucketTracer(Clock(), index, mode=mode, on_bucket=spans.append)
    traced.register_comm_hook(tracer, tracing_allreduce_hook)
    equal = []
    for step in range(5):
        x = batch(rank, step)
        for d in (stock, traced):
            for p in d.parameters():
                p.grad = None
            d(x).pow(2).sum().backward()
        equal.append(all(torch.equal(a.grad, b.grad) for a, b in zip(stock.parameters(), traced.parameters())))
    assert spans, "the tracer recorded bucket spans"
    return equal


def _bitwise_jobs(rank: int, world: int) -> dict:
    return {(mode, as_view): _bitwise_job(rank, world, mode, as_view)
            for mode in ("overlap", "deferred") for as_view in (False, True)}


@pytest.mark.parametrize("world", [2, 3])
def test_tracing_hook_gradients_bitwise_equal_to_stock_ddp(two_ranks, world):
    for per_rank in [r["bitwise"] for r in two_ranks] if world == 2 else run_ranks(_bitwise_jobs, world):
        assert sorted(per_rank) == [("deferred", False), ("deferred", True), ("overlap", False), ("overlap", True)]
        for equal in per_rank.values():
            assert equal == [True] * 5


def _reducer_order_job(rank: int, world: int) -> bool:
    class Shared(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(8, 8)
            self.frozen = torch.nn.Linear(8, 8)
            self.frozen.requires_grad_(False)
            self.b = torch.nn.Sequential(torch.nn.Linear(8, 8), self.a)  # shares self.a

        def forward(self, x):
            return self.b(self.frozen(self.a(x)))

    ddp = DDP(Shared())
    ours = [p for _, p in reducer_parameters(ddp)]
    seen = []

    def hook(state, bucket):
        seen.extend(bucket.parameters())
        fut = torch.futures.Future()
        fut.set_result(bucket.buffer())
        return fut

    ddp.register_comm_hook(None, hook)
    ddp(torch.randn(4, 8)).sum().backward()
    return sorted(map(id, seen)) == sorted(map(id, ours)) and len(ours) == 4


def test_reducer_parameter_numbering_matches_ddp(two_ranks):
    assert [r["reducer_order"] for r in two_ranks] == [True, True]
