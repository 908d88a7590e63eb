"""A plain DDP training loop with torch.compile, as users write it.

``--compile ddp``: ``torch.compile(DDP(model))`` (Dynamo's DDPOptimizer splits the
graph at DDP's bucket boundaries); ``--compile module``: ``DDP(torch.compile(model))``.
``--model mlp`` (small) or ``lm`` (a GPT-2-sized transformer language
model: vocabulary 8192, width 384, 6 layers, 13.8 M parameters).
Rank 0 writes the losses, the final parameters and the step times to ``--out``.
"""
import argparse
import json
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

p = argparse.ArgumentParser()
p.add_argument("--compile", choices=("ddp", "module", "none"), default="ddp")
p.add_argument("--backend", default="inductor")
p.add_argument("--steps", type=int, default=40)
p.add_argument("--width", type=int, default=256)
p.add_argument("--depth", type=int, default=8)
p.add_argument("--batch", type=int, default=32)
p.add_argument("--model", choices=("mlp", "lm"), default="mlp")
p.add_argument("--seq", type=int, default=128)
p.add_argument("--layers", type=int, default=6, help="the LM's layers")
p.add_argument("--dim", type=int, default=384, help="the LM's width")
p.add_argument("--bucket-cap-mb", type=float, default=None, help="DDP's bucket_cap_mb (default: DDP's)")
p.add_argument("--out", default=None)
args = p.parse_args()

torch.set_num_threads(1)
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)


class LM(torch.nn.Module):
    def __init__(self, vocab=8192, d=384, layers=6):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, d)
        block = torch.nn.TransformerEncoderLayer(d, d // 64, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = torch.nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.head = torch.nn.Linear(d, vocab, bias=False)
        self.head.weight = self.embed.weight
        torch.nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, ids):
        return self.head(self.blocks(self.embed(ids)))


if args.model == "lm":
    model = LM(d=args.dim, layers=args.layers)
else:
    layers = []
    for _ in range(args.depth):
        layers += [torch.nn.Linear(args.width, args.width), torch.nn.GELU()]
    model = torch.nn.Sequential(*layers)
caps = {} if args.bucket_cap_mb is None else {"bucket_cap_mb": args.bucket_cap_mb}
if args.compile == "module":
    ddp = DDP(torch.compile(model, backend=args.backend), **caps)
    step_model = ddp
else:
    ddp = DDP(model, **caps)
    step_model = torch.compile(ddp, backend=args.backend) if args.compile == "ddp" else ddp
opt = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9)
losses, times = [], []
for step in range(args.steps):
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(1000 * step + rank)
    opt.zero_grad(set_to_none=True)
    if args.model == "lm":
        ids = torch.randint(0, 8192, (args.batch, args.seq + 1), generator=g)
        logits = step_model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    else:
        loss = step_model(torch.randn(args.batch, args.width, generator=g)).pow(2).mean()
    loss.backward()
    opt.step()
    losses.append(loss.item())
    times.append(time.perf_counter() - t0)
if rank == 0 and args.out:
    with open(args.out, "w") as f:
        json.dump({"losses": losses, "params": [q.detach().double().flatten().tolist()[:64] for q in model.parameters()],
                   "step_times_s": times}, f)
