"""Bucket plans: DDP's bucketing rule, exact caps, other formats, applying plans to real DDP."""
from __future__ import annotations

import random

import pytest
import torch
import torch.distributed as dist
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel as DDP

from gdat.core.layout import FIXED_ORDER, GradientLayout, model_layout, params_of
from gdat.core.plan import MIB, Bucket, BucketPlan, plan_from_caps
from gdat.errors import PlanError, PlanNotExpressible
from gdat.reducer.ddp_model import reducer_parameters
from gdat.reducer.plan_switch import PlanApproximated, ddp_bucket_arguments, switch_buckets
from tests.models import batch, mlp

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}

def layout(order, nbytes, dtypes) -> GradientLayout:
    return GradientLayout(tuple(order), tuple(nbytes), tuple(dtypes))


cases = st.integers(1, 14).flatmap(lambda n: st.tuples(
    st.lists(st.integers(0, 60), min_size=n, max_size=n),
    st.lists(st.sampled_from(sorted(DTYPES)), min_size=n, max_size=n),
    st.lists(st.integers(0, 500), min_size=1, max_size=4)))


@settings(max_examples=300, deadline=None)
@given(cases)
def test_ddp_bucketing_rule_matches_torch(case):
    numels, dtypes, caps = case
    tensors = [torch.empty(k, dtype=DTYPES[d]) for k, d in zip(numels, dtypes)]
    nbytes = [t.numel() * t.element_size() for t in tensors]
    order = list(range(len(tensors)))
    want, _ = dist._compute_bucket_assignment_by_size(tensors, caps, [], order)
    assert layout(order, nbytes, dtypes).ddp_buckets(caps) == want


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=14), st.data())
def test_caps_reproduce_any_single_dtype_plan_exactly(numels, data):
    n = len(numels)
    order = list(range(n - 1, -1, -1))
    nbytes = [4 * numels[p] for p in order]
    cuts = data.draw(st.lists(st.booleans(), min_size=n - 1, max_size=n - 1))
    ends = [j + 1 for j, c in enumerate(cuts) if c] + [n]
    grads = layout(order, nbytes, ["float32"] * n)
    plan = BucketPlan.from_ends(grads, ends)
    caps = plan.ddp_caps_mb(grads)
    tensors = [torch.empty(numels[p]) for p in order]
    formed, _ = dist._compute_bucket_assignment_by_size(tensors, [int(c * MIB) for c in caps], [], list(range(n)))
    assert [[order[i] for i in g] for g in formed] == [list(b.params) for b in plan.buckets]


@settings(max_examples=300, deadline=None)
@given(cases)
def test_fixed_bucket_rule_matches_the_buckets_ddp_constructs(case):
    """find_unused_parameters=True: the buckets DDP's constructor forms (assignment in
    registration order, then reversed) are the ``"fixed"`` rule's."""
    numels, dtypes, caps = case
    tensors = [torch.empty(k, dtype=DTYPES[d]) for k, d in zip(numels, dtypes)]
    infos = params_of([(str(i), t) for i, t in enumerate(tensors)])
    want, _ = dist._compute_bucket_assignment_by_size(tensors, caps, [False] * len(tensors))
    grads = model_layout(infos, FIXED_ORDER)
    got = [sorted(grads.order[j] for j in g) for g in grads.ddp_buckets(caps)]
    assert got == [sorted(g) for g in reversed(want)]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=14), st.data())
def test_caps_reproduce_any_plan_of_the_fixed_order_exactly(numels, data):
    n = len(numels)
    tensors = [torch.empty(k) for k in numels]
    grads = model_layout(params_of([(str(i), t) for i, t in enumerate(tensors)]), FIXED_ORDER)
    cuts = data.draw(st.lists(st.booleans(), min_size=n - 1, max_size=n - 1))
    plan = BucketPlan.from_ends(grads, [j + 1 for j, c in enumerate(cuts) if c] + [n])
    caps = plan.ddp_caps_mb(grads)
    formed, _ = dist._compute_bucket_assignment_by_size(tensors, [int(c * MIB) for c in caps], [False] * n)
    assert [sorted(g) for g in reversed(formed)] == [sorted(b.params) for b in plan.buckets]


def test_mixed_dtype_plans_are_checked_against_ddp_rule():
    order, nbytes = [0, 1, 2, 3], [400, 800, 400, 800]
    dtypes = ["float32", "float64", "float32", "float64"]
    grads = layout(order, nbytes, dtypes)
    formed = plan_from_caps(grads, [400, 800])
    assert formed.ddp_caps_mb(grads)  # a plan DDP forms is expressible
    odd = BucketPlan((Bucket((0, 2), 800, "float32"), Bucket((1,), 800, "float64"), Bucket((3,), 800, "float64")))
    with pytest.raises(PlanNotExpressible):
        odd.ddp_caps_mb(grads)


def test_zero_byte_gradient_cannot_end_a_bucket():
    grads = layout([0, 1, 2], [8, 0, 8], ["float32"] * 3)
    plan = BucketPlan.from_ends(grads, [2, 3])
    with pytest.raises(PlanNotExpressible):
        plan.ddp_caps_mb(grads)


def test_json_round_trip_and_version_check(tmp_path):
    plan = BucketPlan.from_ends(layout([3, 2, 1, 0], [4, 4, 8, 8], ["float32"] * 4), [1, 4], "demo")
    path = tmp_path / "plan.json"
    plan.save(str(path))
    assert BucketPlan.load(str(path)) == plan
    text = path.read_text().replace('"version": 1', '"version": 99')
    path.write_text(text)
    with pytest.raises(PlanError, match="version 99 is not supported"):
        BucketPlan.load(str(path))


def test_plan_validation():
    with pytest.raises(PlanError):
        BucketPlan(())
    with pytest.raises(PlanError, match="more than one bucket"):
        BucketPlan((Bucket((0, 1), 8, "float32"), Bucket((1,), 4, "float32")))
    plan = BucketPlan.from_ends(layout([1, 0], [4, 4], ["float32"] * 2), [2])
    with pytest.raises(PlanError, match="does not have"):
        plan.check_matches(layout([0, 2], [4, 4], ["float32"] * 2))
    with pytest.raises(PlanError, match="claims"):
        plan.check_matches(layout([0, 1], [4, 8], ["float32"] * 2))


def test_hccl_and_mindspore_indices():
    order = list(range(9, -1, -1))  # ready order is reversed definition order
    plan = BucketPlan.from_ends(layout(order, [4] * 10, ["float32"] * 10), [3, 7, 10])
    # buckets in definition order: [0..2], [3..6], [7..9]
    assert plan.hccl_split_indices(10) == [2, 6, 9]
    assert plan.mindspore_fusion_config(10) == [3, 7]
    scrambled = BucketPlan.from_ends(layout([0, 5, 1, 2, 3, 4], [4] * 6, ["float32"] * 6), [2, 6])
    with pytest.raises(PlanNotExpressible):
        scrambled.hccl_split_indices(6)


def test_fallback_without_cap_list_approximates_with_a_warning(monkeypatch):
    grads = layout(range(8), [4 * MIB] * 8, ["float32"] * 8)
    plan = BucketPlan.from_ends(grads, [2, 4, 6, 8], "pairs")
    assert ddp_bucket_arguments(plan, grads)["bucket_cap_mb_list"] == [8.0] * 4
    monkeypatch.setattr("gdat.reducer.plan_switch.supports_cap_list", lambda: False)
    with pytest.warns(PlanApproximated, match="bucket_cap_mb=8"):
        args = ddp_bucket_arguments(plan, grads)
    assert args == {"bucket_cap_mb": 8.0}


def _plans_for(grads):
    rng = random.Random(7)
    n = len(grads)
    plans = [BucketPlan.from_ends(grads, [n], "one"),
             BucketPlan.from_ends(grads, list(range(1, n + 1)), "each"),
             plan_from_caps(grads, [20000], "uniform")]
    for k in range(3):
        ends = sorted(rng.sample(range(1, n), 3)) + [n]
        plans.append(BucketPlan.from_ends(grads, ends, f"random{k}"))
    return plans


def _observed(ddp, steps, rank):
    index = {id(p): i for i, (_, p) in enumerate(reducer_parameters(ddp))}
    seen = []

    def hook(state, bucket):
        seen.append(tuple(index[id(p)] for p in bucket.parameters()))
        return allreduce_hook(None, bucket)

    ddp.register_comm_hook(None, hook)
    per_step = []
    for s in range(steps):
        seen.clear()
        ddp(batch(rank, s)).pow(2).sum().backward()
        per_step.append(list(seen))
    return per_step


def _construct_job(rank, world):
    order = list(range(11, -1, -1))
    infos = [(n, p) for n, p in reducer_parameters(DDP(mlp()))]
    grads = layout(order, [infos[i][1].numel() * 4 for i in order], ["float32"] * 12)
    out = []
    for plan in _plans_for(grads):
        ddp = DDP(mlp(), **ddp_bucket_arguments(plan, grads))
        out.append((plan.label, [list(b.params) for b in plan.buckets], [list(g) for g in _observed(ddp, 3, rank)[2]]))
    return out


def test_buckets_ddp_forms_equal_the_plans(two_ranks):
    formed = two_ranks["construct"]
    assert len(formed) == 6
    for label, want, got in formed:
        assert [tuple(b) for b in want] == [tuple(b) for b in got], label


def _switch_job(rank, world, static_graph, as_view):
    order = list(range(11, -1, -1))
    model = mlp()
    grads = layout(order, [p.numel() * 4 for p in list(model.parameters())[::-1]], ["float32"] * 12)
    plans = _plans_for(grads)
    live = DDP(model, static_graph=static_graph, gradient_as_bucket_view=as_view)
    index = {id(p): i for i, (_, p) in enumerate(reducer_parameters(live))}
    seen = []

    def user_hook(state, bucket):
        seen.append(tuple(index[id(p)] for p in bucket.parameters()))
        return allreduce_hook(None, bucket)

    live.register_comm_hook(None, user_hook)
    opt = torch.optim.SGD(live.parameters(), lr=0.05, momentum=0.9)
    results = []
    step = 0
    for plan in plans:
        args = ddp_bucket_arguments(plan, grads)
        switch_buckets(live, **args)
        ref_model = mlp()
        ref = DDP(ref_model, static_graph=static_graph, gradient_as_bucket_view=as_view, **args)
        for k in range(3):
            x = batch(rank, step)
            seen.clear()
            opt.zero_grad()
            live(x).pow(2).mean().backward()
            formed = list(seen)
            ref_model.load_state_dict(model.state_dict())
            ref_model.zero_grad()
            ref(x).pow(2).mean().backward()
            same = all(torch.equal(a.grad, b.grad) for a, b in zip(model.parameters(), ref_model.parameters()))
            opt.step()
            step += 1
            if k == 2:
                results.append((plan.label, formed == [b.params for b in plan.buckets], same))
            elif not same:
                results.append((plan.label + f" step {k}", False, same))
    return results


SWITCH_OPTIONS = [(False, False), (True, False), (False, True)]
FIND_UNUSED_MODELS = ("branch", "mlp")  # unused parameters on every second step; none


def _close(a, b):
    if a is None or b is None:
        return a is None and b is None
    return torch.allclose(a, b, rtol=1e-6, atol=1e-6 * float(b.abs().max()))


def _find_unused_switch_job(rank, world, name):
    """find_unused_parameters=True: switch a live DDP through plans of its fixed
    order; after every switch each step's buckets are the plan's and the gradients
    those of a stock DDP built with the same caps (the branch model leaves its last
    block unused on every second step)."""
    from gdat.demo.models import build_model, loss_fn, synthetic_batch
    from gdat.reducer.ddp_model import param_infos

    model = build_model(name, "tiny")
    grads = model_layout(param_infos(model), FIXED_ORDER)
    plans = _plans_for(grads)
    live = DDP(model, find_unused_parameters=True)
    index = {id(p): i for i, (_, p) in enumerate(reducer_parameters(live))}
    seen, events = [], []

    def user_hook(state, bucket):
        seen.append(tuple(sorted(index[id(p)] for p in bucket.parameters())))
        events.append(("bucket", seen[-1]))
        return allreduce_hook(None, bucket)

    live.register_comm_hook(None, user_hook)
    for p in model.parameters():
        p.register_post_accumulate_grad_hook(lambda p: events.append(("grad", index[id(p)])))
    opt = torch.optim.SGD(live.parameters(), lr=0.05, momentum=0.9)
    results, step, unused_steps, early = [], 0, 0, []
    for plan in plans:
        args = ddp_bucket_arguments(plan, grads)
        switch_buckets(live, **args)
        ref_model = build_model(name, "tiny")
        ref = DDP(ref_model, find_unused_parameters=True, **args)
        for k in range(2):
            x, y = synthetic_batch(name, model, rank, step, 4)
            seen.clear()
            events.clear()
            opt.zero_grad()
            loss_fn(name, live(x), y).backward()
            formed = list(seen)
            if plan.label == "each" and any(p.grad is None for p in model.parameters()):
                # DDP marks an unused parameter ready at the first gradient hook: its
                # bucket goes before the second gradient of the step is ready
                unused = {i for i, p in enumerate(model.parameters()) if p.grad is None}
                second_grad = [k for k, e in enumerate(events) if e[0] == "grad"][1]
                early.append(all(events.index(("bucket", (i,))) < second_grad for i in unused))
            ref_model.load_state_dict(model.state_dict())
            ref_model.zero_grad()
            loss_fn(name, ref(x), y).backward()
            unused_steps += any(p.grad is None for p in model.parameters())
            same = all(_close(a.grad, b.grad) for a, b in zip(model.parameters(), ref_model.parameters()))
            results.append((f"{plan.label} step {k}", formed == [tuple(sorted(b.params)) for b in plan.buckets],
                            same))
            opt.step()
            step += 1
    return {"results": results, "unused_steps": unused_steps, "unused_ready_early": early}


def _plan_jobs(rank, world, work):
    """Everything this module checks on 2 ranks, in one job."""
    return {"construct": _construct_job(rank, world),
            "switch": {options: _switch_job(rank, world, *options) for options in SWITCH_OPTIONS},
            "find_unused": {name: _find_unused_switch_job(rank, world, name) for name in FIND_UNUSED_MODELS}}


@pytest.fixture(scope="module")
def two_ranks(two_rank_job):
    return two_rank_job("plan")[0]


@pytest.mark.parametrize("static_graph, as_view", SWITCH_OPTIONS)
def test_switching_a_live_ddp_forms_the_plan_and_keeps_gradients_exact(two_ranks, static_graph, as_view):
    results = two_ranks["switch"][(static_graph, as_view)]
    assert len(results) == 6  # every plan of _plans_for, nothing else
    for label, formed_ok, grads_ok in results:
        assert formed_ok, label
        assert grads_ok, label


@pytest.mark.parametrize("name", FIND_UNUSED_MODELS)
def test_switching_a_find_unused_ddp_forms_the_plan_and_matches_stock_gradients(two_ranks, name):
    job = two_ranks["find_unused"][name]
    assert len(job["results"]) == 12  # two steps after each switch to each plan of _plans_for
    for label, formed_ok, grads_ok in job["results"]:
        assert formed_ok, label
        assert grads_ok, label
    assert job["unused_steps"] == (6 if name == "branch" else 0)  # the branch block is idle every second step
    assert job["unused_ready_early"] == ([True] if name == "branch" else [])  # what the model assumes
