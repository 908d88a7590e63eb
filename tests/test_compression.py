"""Per-bucket compression on one real 2-rank gloo job against stock DDP and torch's
stock compression hooks (with ``--gdat-compress`` off nothing changes: the
drop-in equivalence tests of tests/test_ddp_dropin.py run with compression off)."""
from __future__ import annotations

import pytest
import torch
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import (
    allreduce_hook,
    bf16_compress_hook,
    fp16_compress_hook,
)
from torch.nn.parallel import DistributedDataParallel as DDP

from gdat.core.device import Clock
from gdat.core.plan import Bucket, BucketPlan
from gdat.ddp import DistributedDataParallel as GdatDDP
from gdat.errors import PlanError, UsageError
from gdat.options import GdatConfig
from gdat.profiling.comm_trace import BucketTracer, tracing_allreduce_hook
from gdat.reducer import compression
from gdat.reducer.compression import REDUCED_DTYPES, CompressionState, compression_hook, reduced_allreduce_works
from gdat.reducer.ddp_model import reducer_parameters
from gdat.reducer.torch_internals import comm_hooks
from tests.models import batch, mlp

CAP_MB = 0.02  # several buckets of the 6-layer mlp
SELECTED = (0, 2)  # DDP bucket indices (after the rebuild) gdat compresses
STOCK_HOOKS = {"fp16": fp16_compress_hook, "bf16": bf16_compress_hook}


def _stock(name: str):
    """torch's stock hook ``name``, called through a function of another name: DDP
    refuses to register ``bf16_compress_hook`` itself unless CUDA 11+ with NCCL 2.10+
    (or XPU) is present, although gloo sums bfloat16 on this torch."""
    def hook(state, bucket):
        return STOCK_HOOKS[name](state, bucket)
    return hook


def _recording(state: CompressionState, bucket):
    state.seen[bucket.index()] = frozenset(state.param_index[id(p)] for p in bucket.parameters())
    return compression_hook(state, bucket)


def _traced(tracer: BucketTracer, bucket):
    return tracing_allreduce_hook(tracer, bucket)


def _backward(ddps, x) -> None:
    for d in ddps:
        for p in d.parameters():
            p.grad = None
        d(x).pow(2).sum().backward()


def _job(rank: int, world: int, work: str) -> dict:
    exact = DDP(mlp(), bucket_cap_mb=CAP_MB)
    stock = {name: DDP(mlp(), bucket_cap_mb=CAP_MB) for name in STOCK_HOOKS}
    for name, d in stock.items():
        d.register_comm_hook(None, _stock(name))
    ours = DDP(mlp(), bucket_cap_mb=CAP_MB)
    index = {id(p): i for i, (_, p) in enumerate(reducer_parameters(ours))}
    state = CompressionState({}, index)
    state.seen = {}
    ours.register_comm_hook(state, _recording)
    traced = DDP(mlp(), bucket_cap_mb=CAP_MB)
    tracer_state = CompressionState({}, {id(p): i for i, (_, p) in enumerate(reducer_parameters(traced))})
    tracer = BucketTracer(Clock(), tracer_state.param_index, mode="deferred", compression=tracer_state)
    traced.register_comm_hook(tracer, _traced)
    mine = GdatDDP(mlp(), gdat_config=GdatConfig(mode="off"), bucket_cap_mb=CAP_MB)
    everyone = [exact, *stock.values(), ours, traced, mine]
    for step in range(2):  # DDP rebuilds its buckets in ready order at step 1
        _backward(everyone, batch(rank, step))
    buckets = dict(state.seen)
    compression.install(mine, BucketPlan(tuple(Bucket(tuple(sorted(b)), 4, "float32", "fp16")
                                               for b in buckets.values())))
    mine.register_comm_hook(None, allreduce_hook)  # the user's hook replaces gdat's compression
    user_hook_kept = compression.installed(mine) is None and [h for h, _ in comm_hooks(mine)] == [allreduce_hook]
    checks = []
    for step, name in enumerate(("fp16", "bf16", "fp16"), start=2):
        chosen = {buckets[k]: (k, REDUCED_DTYPES[name]) for k in SELECTED}
        state.selected = tracer_state.selected = chosen
        state.probe = step == 4
        _backward(everyone, batch(rank, step))
        names = [n for n, _ in reducer_parameters(ours)]
        for k, params in sorted(buckets.items()):
            ref = stock[name] if k in SELECTED else exact
            ref_grads = dict((n, p.grad) for n, p in reducer_parameters(ref))
            for d in (ours, traced):
                grads = dict((n, p.grad) for n, p in reducer_parameters(d))
                checks.append((step, name, k, k in SELECTED,
                               all(torch.equal(grads[names[i]], ref_grads[names[i]]) for i in params)))
    user_hook_exact = all(torch.equal(a.grad, b.grad) for a, b in zip(exact.parameters(), mine.parameters()))
    return {"buckets": len(buckets), "checks": checks, "user_hook": (user_hook_kept, user_hook_exact),
            "errors": dict(state.errors),
            "gloo": {n: reduced_allreduce_works(n) for n in REDUCED_DTYPES}}


@pytest.fixture(scope="module")
def ranks(two_rank_job) -> list[dict]:
    return two_rank_job("compression")


def test_compressed_buckets_equal_stock_hook_and_the_others_stock_ddp_bitwise(ranks):
    for per_rank in ranks:
        assert per_rank["buckets"] == 3
        checks = per_rank["checks"]
        assert {c[3] for c in checks} == {True, False}
        bad = [c for c in checks if not c[4]]
        assert not bad, f"(step, dtype, bucket, compressed, equal) not bitwise equal: {bad}"


def test_a_users_comm_hook_replaces_gdats_compression(ranks):
    assert all(r["user_hook"] == (True, True) for r in ranks)


def test_the_error_probe_measures_compressed_buckets_only(ranks):
    errors = ranks[0]["errors"]
    assert sorted(errors) == list(SELECTED)
    assert all(0 < e < 2 ** -9 for e in errors.values()), errors  # fp16: 11 significant bits
    assert ranks[1]["errors"] == errors


def test_gloo_sums_both_reduced_dtypes_on_this_torch(ranks):
    assert ranks[0]["gloo"] == {"bf16": None, "fp16": None}


def test_option_values():
    assert GdatConfig.from_env({"GDAT_COMPRESS": "bf16"}).compress == "bf16"
    assert GdatConfig.from_env({"GDAT_COMPRESS": ""}).compress == ""
    assert GdatConfig.from_env({}).compress == ""
    assert GdatConfig.from_env(GdatConfig(compress="fp16").to_env()).compress == "fp16"
    with pytest.raises(UsageError, match="--gdat-compress must be one of bf16, fp16"):
        GdatConfig.from_env({"GDAT_COMPRESS": "int8"})


def test_plan_records_compression_and_old_plans_load_exact(tmp_path):
    plan = BucketPlan((Bucket((1, 0), 8, "float32"), Bucket((2,), 4, "float32")), "x")
    squeezed = plan.with_compression([1], "bf16", "x+bf16")
    assert squeezed.compressed and not plan.compressed
    assert not squeezed.same_buckets(plan)
    path = str(tmp_path / "p.json")
    squeezed.save(path)
    assert BucketPlan.load(path) == squeezed
    plan.save(path)
    assert "compress" not in open(path).read()
    assert BucketPlan.load(path) == plan
    with pytest.raises(PlanError, match="only float32"):
        BucketPlan((Bucket((0,), 2, "float16", "bf16"),))
