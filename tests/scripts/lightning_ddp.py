"""A Lightning script with Trainer(strategy="ddp", accelerator="cpu", devices=2),
launched by torchrun (it does not know about gdat).

``lightning_ddp.py --out DIR --steps N``: rank 0 writes ``DIR/result.json`` (losses)
and ``DIR/params.pt`` (final parameters).
"""
import argparse
import json
import os

import lightning as L
import torch

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--steps", type=int, default=40)
p.add_argument("--width", type=int, default=256)
p.add_argument("--depth", type=int, default=6)
args = p.parse_args()
torch.set_num_threads(1)


class Points(torch.utils.data.Dataset):
    def __len__(self):
        return 100_000

    def __getitem__(self, i):
        return torch.randn(args.width, generator=torch.Generator().manual_seed(i))


class Regressor(L.LightningModule):
    def __init__(self):
        super().__init__()
        layers = []
        for _ in range(args.depth):
            layers += [torch.nn.Linear(args.width, args.width), torch.nn.Tanh()]
        self.net = torch.nn.Sequential(*layers)
        self.losses = []
        self.ddp = None

    def on_train_start(self):
        self.ddp = type(self.trainer.strategy.model).__name__  # the wrapper, while training

    def training_step(self, x, _):
        loss = (self.net(x) - x.flip(-1)).pow(2).mean()
        self.losses.append(self.all_gather(loss.detach()).mean().item())
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(Points(), batch_size=32)


L.seed_everything(0)
module = Regressor()
trainer = L.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_steps=args.steps, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
trainer.fit(module)
if trainer.is_global_zero:
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump({"losses": module.losses, "ddp": module.ddp}, f)
    torch.save({k: v.detach().clone() for k, v in module.state_dict().items()}, os.path.join(args.out, "params.pt"))
