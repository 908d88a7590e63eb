"""A plain DDP training script with fault knobs, for gdat's reliability tests.

--kill-rank R --kill-step S   rank R kills itself (SIGKILL) at step S, first attempt only
--straggler-rank R --straggler-max-s X   rank R sleeps before every step, cycling through
                              0, X/4, X/2, 3X/4, X seconds (every window of 5 steps sees each once)
--mismatch-rank R             rank R builds a wider model than the others
--pause-s X --pause-steps A-B,C-   every rank sleeps X seconds before each step in the
                              ranges (inclusive; ``C-``: from C to the end)
--link-rate STEP:RATE          before step STEP rank 0 changes the rate of the loopback's tbf
                              (inside a gdat-testbed namespace: the link slows or speeds mid-run)
--out FILE                    rank 0 writes the losses and the final parameters' checksums
"""
import argparse
import json
import os
import signal
import subprocess
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from gdat.worker import end_process
from launch.netns import tool

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=60)
p.add_argument("--width", type=int, default=256)
p.add_argument("--kill-rank", type=int, default=-1)
p.add_argument("--kill-step", type=int, default=-1)
p.add_argument("--straggler-rank", type=int, default=-1)
p.add_argument("--straggler-max-s", type=float, default=0.0)
p.add_argument("--mismatch-rank", type=int, default=-1)
p.add_argument("--pause-s", type=float, default=0.0)
p.add_argument("--pause-steps", default="")
p.add_argument("--link-rate", default="")
p.add_argument("--out", default=None)
args = p.parse_args()

torch.set_num_threads(1)
dist.init_process_group("gloo")
rank = dist.get_rank()
width = args.width * (2 if rank == args.mismatch_rank else 1)
torch.manual_seed(0)
model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(8)])
ddp = DDP(model)
paused = set()
for part in filter(None, args.pause_steps.split(",")):
    lo, _, hi = part.partition("-")
    paused.update(range(int(lo), int(hi) + 1 if hi else args.steps))
opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
losses = []
link_step, _, link_rate = args.link_rate.partition(":")
for step in range(args.steps):
    if link_rate and step == int(link_step):
        dist.barrier()
        if rank == 0:
            subprocess.run([tool("tc"), "qdisc", "change", "dev", "lo", "root", "tbf", "rate", link_rate, "burst", "1mb",
                            "latency", "200ms"], check=True)
        dist.barrier()
    if first_attempt and rank == args.kill_rank and step == args.kill_step:
        os.kill(os.getpid(), signal.SIGKILL)
    if rank == args.straggler_rank:
        time.sleep(args.straggler_max_s * (step % 5) / 4)
    if step in paused:
        time.sleep(args.pause_s)
    g = torch.Generator().manual_seed(1000 * step + rank)
    x = torch.randn(32, width, generator=g)
    opt.zero_grad()
    loss = ddp(x).pow(2).mean()
    loss.backward()
    opt.step()
    losses.append(loss.item())
if rank == 0 and args.out:
    with open(args.out, "w") as f:
        json.dump({"losses": losses, "checksum": [float(q.detach().double().sum()) for q in model.parameters()]}, f)
del ddp, opt
dist.barrier()
dist.destroy_process_group()
end_process(0)  # skip interpreter teardown, where torch's gloo can abort a finished run (stock torchrun too)
