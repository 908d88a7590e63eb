"""A plain DDP training script (it does not know about gdat).

Run it with torchrun or gdat-run::

    torchrun --nproc-per-node 2 -m gdat.demo.train --model transformer --steps 60
    gdat-run --nproc-per-node 2 -m gdat.demo.train --model transformer --steps 60

It trains a built-in model on synthetic data with SGD (momentum) and, with
``--out FILE``, rank 0 writes the per-step losses, the final parameters' checksum,
per-step wall times and the bucket sizes DDP's own logging data reports at the
end, as JSON.
"""
from __future__ import annotations

import argparse
import gc
import json
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from gdat.demo.models import MODELS, build_model, loss_fn, synthetic_batch
from gdat.reducer.torch_internals import ddp_logging_data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=MODELS, default="transformer")
    p.add_argument("--size", choices=("tiny", "small", "large"), default="small")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--bucket-cap-mb", type=float, default=None)
    p.add_argument("--bucket-cap-mb-list", type=str, default=None,
                   help="comma-separated per-bucket caps in MiB (stock DDP's bucket_cap_mb_list)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = build_model(args.model, args.size)
    kwargs = {}
    if args.bucket_cap_mb is not None:
        kwargs["bucket_cap_mb"] = args.bucket_cap_mb
    if args.bucket_cap_mb_list:
        kwargs["bucket_cap_mb_list"] = [float(c) for c in args.bucket_cap_mb_list.split(",")]
    if args.model == "branch":  # its extra block is unused on every second step
        kwargs["find_unused_parameters"] = True
    ddp = DDP(model, **kwargs)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9)
    losses, times = [], []
    for step in range(args.steps):
        t0 = time.perf_counter()
        x, y = synthetic_batch(args.model, model, rank, step, args.batch)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(args.model, ddp(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        times.append(time.perf_counter() - t0)
    checksum = [float(p.detach().double().sum()) for p in model.parameters()]
    if rank == 0 and args.out:
        with open(args.out, "w") as f:
            json.dump({"losses": losses, "checksum": checksum, "step_times_s": times,
                       "world_size": dist.get_world_size(),
                       "bucket_sizes": ddp_logging_data(ddp).get("rebuilt_bucket_sizes")}, f)
    # free DDP (its reducer holds the process group) before tearing the group down:
    # a process group destroyed by the interpreter at exit can abort in gloo
    del ddp, opt
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
    from gdat.worker import end_process

    end_process(0)  # skip interpreter teardown, where torch's gloo can abort a finished run


if __name__ == "__main__":
    main()
