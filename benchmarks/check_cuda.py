"""Check gdat's CUDA path on a GPU machine (not run in CI: CI has no GPU).

    python benchmarks/check_cuda.py

On min(2, GPUs) ranks with nccl: the device seam's CUDA clock and backend, a
profile of a small model (compute-only and overlapped steps, the allreduce ladder),
the tracing comm hook's gradients against stock DDP (bitwise), and a live plan
switch forming exactly the plan's buckets.  Prints one line per check and exits
non-zero if any fails.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _rank(rank: int, world: int, port: int) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from gdat.core.device import Clock, default_backend, device_for_local_rank
    from gdat.core.layout import GradientLayout
    from gdat.core.plan import BucketPlan
    from gdat.profiling.comm_trace import BucketTracer, tracing_allreduce_hook
    from gdat.profiling.session import profile_ddp
    from gdat.reducer.ddp_model import reducer_parameters
    from gdat.reducer.plan_switch import ddp_bucket_arguments, switch_buckets

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank))
    device = device_for_local_rank("cuda", rank)
    torch.cuda.set_device(device)
    backend = default_backend("cuda")
    dist.init_process_group(backend, rank=rank, world_size=world)
    ok = []

    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(*[torch.nn.Linear(512, 512) for _ in range(8)]).to(device)

    def batch(step):
        g = torch.Generator(device=device).manual_seed(step * 10 + rank)
        return torch.randn(64, 512, device=device, generator=g)

    clock = Clock("cuda")
    marks = [clock.mark() for _ in range(3)]
    times = clock.resolve(marks)
    ok.append(("cuda clock marks resolve in order", backend == "nccl" and times == sorted(times)))

    ddp = DDP(model(), bucket_cap_mb=1)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
    k = [0]

    def step():
        opt.zero_grad()
        ddp(batch(k[0])).pow(2).mean().backward()
        opt.step()
        k[0] += 1

    step()
    step()
    profile = profile_ddp(ddp, step, 2, 2, comm_budget_s=1.0)
    n = len(profile.params)
    complete = all(sorted(i for i, _ in s.grad_ready) == list(range(n)) for r in profile.ranks for s in r.steps)
    ok.append(("profile: every gradient once per step", complete))
    ok.append(("profile: buckets traced in overlapped steps",
               all(s.buckets for r in profile.ranks for s in r.steps if s.kind == "overlap")))
    ok.append(("allreduce fit has positive alpha and beta",
               profile.cost_model.alpha_s > 0 and profile.cost_model.beta_s_per_byte > 0))

    stock, traced = DDP(model(), bucket_cap_mb=1), DDP(model(), bucket_cap_mb=1)
    index = {id(p): i for i, (_, p) in enumerate(reducer_parameters(traced))}
    traced.register_comm_hook(BucketTracer(clock, index), tracing_allreduce_hook)
    same = True
    for s in range(4):
        for d in (stock, traced):
            d.zero_grad()
            d(batch(s)).pow(2).sum().backward()
        same &= all(torch.equal(a.grad, b.grad) for a, b in zip(stock.parameters(), traced.parameters()))
    ok.append(("tracing hook gradients bitwise equal to stock DDP", bool(same)))

    live = DDP(model())
    order = list(range(n - 1, -1, -1))
    sizes = [p.numel() * p.element_size() for p in list(live.parameters())[::-1]]
    grads = GradientLayout(tuple(order), tuple(sizes), ("float32",) * n)
    plan = BucketPlan.from_ends(grads, [2, 6, n])
    switch_buckets(live, **ddp_bucket_arguments(plan, grads))
    seen = []

    def hook(state, bucket):
        seen.append(tuple(index_live[id(p)] for p in bucket.parameters()))
        fut = dist.all_reduce(bucket.buffer().div_(world), async_op=True).get_future()
        return fut.then(lambda f: f.value()[0])

    index_live = {id(p): i for i, (_, p) in enumerate(reducer_parameters(live))}
    live.register_comm_hook(None, hook)
    for s in range(3):
        seen.clear()
        live(batch(s)).sum().backward()
    ok.append(("switched DDP forms exactly the plan's buckets", seen == [b.params for b in plan.buckets]))
    if rank == 0:
        for name, good in ok:
            print(f"{'ok  ' if good else 'FAIL'} {name}")
    dist.barrier()
    dist.destroy_process_group()
    if not all(good for _, good in ok):
        sys.exit(1)


def main() -> int:
    import torch
    import torch.multiprocessing as mp

    if not torch.cuda.is_available():
        print("check_cuda: no CUDA device here; nothing checked", file=sys.stderr)
        return 2
    world = min(2, torch.cuda.device_count())
    mp.start_processes(_rank, args=(world, 29741), nprocs=world, start_method="spawn")
    return 0


if __name__ == "__main__":
    sys.exit(main())
