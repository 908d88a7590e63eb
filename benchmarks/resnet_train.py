"""A plain DDP training script of a ResNet-18 image classifier, as users write one.

``torchrun --nproc-per-node 2 benchmarks/resnet_train.py --steps 60 --out OUT.json``: a
Hugging Face ``ResNetForImageClassification`` built from a config (no download; basic
blocks 2-2-2-2, widths 64-512, 1000 classes: 11.7 M parameters), SGD with momentum,
synthetic images (``--batch`` x 3 x ``--size`` x ``--size``) and labels, stock
``DistributedDataParallel``.  Rank 0 writes the losses and each step's wall time to
``--out`` (``step_times_s``, the format of ``gdat.demo.train``).
"""
import argparse
import json
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from transformers import ResNetConfig, ResNetForImageClassification


def resnet18() -> ResNetForImageClassification:
    """The classifier this script trains, built from a config with seed 0 (no download)."""
    torch.manual_seed(0)
    return ResNetForImageClassification(ResNetConfig(layer_type="basic", depths=[2, 2, 2, 2],
                                                     hidden_sizes=[64, 128, 256, 512], embedding_size=64,
                                                     num_labels=1000))


def image_batch(batch: int, size: int, step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank ``rank``'s synthetic images and labels at ``step`` (seeded)."""
    gen = torch.Generator().manual_seed(step * 2 + rank)
    return torch.randn(batch, 3, size, size, generator=gen), torch.randint(0, 1000, (batch,), generator=gen)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--out", default=None)
    args = p.parse_args()

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = resnet18()
    ddp = DDP(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9)
    losses, times = [], []
    for step in range(args.steps):
        t0 = time.perf_counter()
        images, labels = image_batch(args.batch, args.size, step, rank)
        opt.zero_grad(set_to_none=True)
        loss = ddp(pixel_values=images, labels=labels).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
        times.append(time.perf_counter() - t0)
    if rank == 0 and args.out:
        with open(args.out, "w") as f:
            json.dump({"losses": losses, "step_times_s": times,
                       "parameters": sum(q.numel() for q in model.parameters())}, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
