"""A plain DDP loop that registers a comm hook (as accelerate does for fp16
compression), which gdat cannot trace through: ``comm_hook_loop.py --steps N``."""
import argparse

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel as DDP

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=40)
args = p.parse_args()
torch.set_num_threads(1)
dist.init_process_group("gloo")
torch.manual_seed(0)
model = torch.nn.Sequential(*[torch.nn.Linear(128, 128) for _ in range(4)])
ddp = DDP(model)
ddp.register_comm_hook(None, allreduce_hook)
opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
for step in range(args.steps):
    x = torch.randn(16, 128, generator=torch.Generator().manual_seed(100 * step + dist.get_rank()))
    opt.zero_grad()
    ddp(x).pow(2).mean().backward()
    opt.step()
