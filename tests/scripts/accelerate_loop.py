"""A plain accelerate training loop (it does not know about gdat).

``accelerate_loop.py --out DIR --steps N``: ``Accelerator().prepare`` wraps a small
transformer language model in DDP; rank 0 writes ``DIR/result.json`` (losses) and
``DIR/params.pt`` (final parameters).
"""
import argparse
import json
import os

import torch
from accelerate import Accelerator

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--steps", type=int, default=40)
p.add_argument("--width", type=int, default=128)
p.add_argument("--layers", type=int, default=2)
args = p.parse_args()
torch.set_num_threads(1)


class LM(torch.nn.Module):
    def __init__(self, vocab=256, d=args.width, layers=args.layers):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, d)
        block = torch.nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.0, batch_first=True)
        self.blocks = torch.nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.head = torch.nn.Linear(d, vocab)

    def forward(self, ids):
        return self.head(self.blocks(self.embed(ids)))


class Tokens(torch.utils.data.Dataset):
    def __len__(self):
        return 100_000

    def __getitem__(self, i):
        return torch.randint(0, 256, (32,), generator=torch.Generator().manual_seed(i))


accelerator = Accelerator(cpu=True)  # DDP over gloo on CPU
torch.manual_seed(0)
model = LM()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
loader = torch.utils.data.DataLoader(Tokens(), batch_size=8, shuffle=False)
model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
losses = []
for step, ids in enumerate(loader):
    if step == args.steps:
        break
    optimizer.zero_grad()
    logits = model(ids[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    accelerator.backward(loss)
    optimizer.step()
    losses.append(accelerator.gather(loss.detach()).mean().item())
if accelerator.is_main_process:
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump({"losses": losses, "ddp": type(model).__name__}, f)
    torch.save({k: v.detach().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()},
               os.path.join(args.out, "params.pt"))
accelerator.end_training()
