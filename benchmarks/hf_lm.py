"""A plain DDP training script of a Hugging Face GPT-2 language model, as users write one.

``torchrun --nproc-per-node 2 benchmarks/hf_lm.py --steps 80 --out OUT.json``: a
``transformers.GPT2LMHeadModel`` built from a config (no download; 6 layers, width
384, vocabulary 8192: 13.8 M parameters), AdamW, synthetic learnable token batches, stock
``DistributedDataParallel`` (``--bucket-cap-mb`` sets its cap).  ``--link-rate
STEP:RATE``: before step STEP rank 0 changes the rate of the loopback's ``tbf``
(inside a gdat-testbed namespace: the link slows mid-run).  ``--autocast bf16``
runs forward and loss under ``torch.autocast`` (mixed precision, as a user opts into
it).  Rank 0 writes the
losses and each step's wall time to ``--out`` (``step_times_s``, the format of
``gdat.demo.train``).
"""
import argparse
import functools
import json
import subprocess
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from transformers import GPT2Config, GPT2LMHeadModel


def gpt2_lm(layers: int = 6, width: int = 384, vocab: int = 8192, seq: int = 64) -> GPT2LMHeadModel:
    """The LM this script trains, built from a config with seed 0 (no download)."""
    torch.manual_seed(0)
    config = GPT2Config(n_layer=layers, n_embd=width, n_head=width // 64, vocab_size=vocab,
                        n_positions=max(128, seq), use_cache=False, bos_token_id=0, eos_token_id=0,
                        loss_type="ForCausalLM")
    return GPT2LMHeadModel(config)


def token_batch(vocab: int, batch: int, seq: int, step: int, rank: int) -> torch.Tensor:
    """Rank ``rank``'s synthetic token ids at ``step`` (seeded), learnable: each
    sequence starts at a random token and follows a fixed random permutation of the
    vocabulary (token ``t`` is followed by ``P[t]``), so the loss falls as the
    model learns ``P``."""
    nxt = _successor(vocab)
    ids = torch.empty(batch, seq, dtype=torch.long)
    ids[:, 0] = torch.randint(0, vocab, (batch,), generator=torch.Generator().manual_seed(step * 2 + rank))
    for i in range(1, seq):
        ids[:, i] = nxt[ids[:, i - 1]]
    return ids


@functools.lru_cache(maxsize=4)
def _successor(vocab: int) -> torch.Tensor:
    """``P`` of :func:`token_batch`: the fixed random permutation (seed 1234), drawn once."""
    return torch.randperm(vocab, generator=torch.Generator().manual_seed(1234))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--width", type=int, default=384)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--bucket-cap-mb", type=float, default=None)
    p.add_argument("--link-rate", default="")
    p.add_argument("--autocast", choices=["bf16"], default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args()

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = gpt2_lm(args.layers, args.width, args.vocab, args.seq)
    ddp = DDP(model, **({} if args.bucket_cap_mb is None else {"bucket_cap_mb": args.bucket_cap_mb}))
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-4)
    link_step, _, link_rate = args.link_rate.partition(":")
    losses, times = [], []
    for step in range(args.steps):
        if link_rate and step == int(link_step):
            dist.barrier()
            if rank == 0:
                subprocess.run(["tc", "qdisc", "change", "dev", "lo", "root", "tbf", "rate", link_rate, "burst", "1mb",
                                "latency", "200ms"], check=True)
            dist.barrier()
        t0 = time.perf_counter()
        ids = token_batch(args.vocab, args.batch, args.seq, step, rank)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.autocast == "bf16"):
            loss = ddp(input_ids=ids, labels=ids).loss
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
