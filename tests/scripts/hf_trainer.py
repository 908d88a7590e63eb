"""A Hugging Face Trainer script with default TrainingArguments (it does not know
about gdat).  Under torchrun the Trainer wraps the model in DDP through accelerate
with find_unused_parameters=True (the default for a PreTrainedModel without
activation checkpointing), clips gradients (max_grad_norm=1.0) and accumulates 2
micro-batches through no_sync.

``hf_trainer.py --out DIR --steps N``: a tiny GPT-2 built from a config (no
download) on synthetic tokens; rank 0 writes ``DIR/result.json`` (logged losses)
and ``DIR/params.pt`` (final parameters).
"""
import argparse
import json
import os
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--steps", type=int, default=40)
p.add_argument("--layers", type=int, default=2)
p.add_argument("--width", type=int, default=64)
p.add_argument("--seq", type=int, default=32)
p.add_argument("--batch", type=int, default=4)
p.add_argument("--vocab", type=int, default=256)
p.add_argument("--heads", type=int, default=2)
args = p.parse_args()
torch.set_num_threads(1)


class Tokens(torch.utils.data.Dataset):
    def __len__(self):
        return 100_000

    def __getitem__(self, i):
        ids = torch.randint(0, args.vocab, (args.seq,), generator=torch.Generator().manual_seed(i))
        return {"input_ids": ids, "labels": ids}


torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(vocab_size=args.vocab, n_positions=args.seq, n_embd=args.width,
                                   n_layer=args.layers, n_head=args.heads))


class StepTimes(TrainerCallback):
    """Wall time of each optimizer step (start to start of the next)."""

    def __init__(self):
        self.starts = []

    def on_step_begin(self, *_, **__):
        self.starts.append(time.perf_counter())

    def on_train_end(self, *_, **__):
        self.starts.append(time.perf_counter())


times = StepTimes()
training_args = TrainingArguments(output_dir=os.path.join(args.out, "trainer"), max_steps=args.steps,
                                  per_device_train_batch_size=args.batch, gradient_accumulation_steps=2,
                                  logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
                                  use_cpu=True)  # DDP over gloo on CPU
trainer = Trainer(model=model, args=training_args, train_dataset=Tokens(), callbacks=[times])
trainer.train()
if trainer.is_world_process_zero():
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump({"losses": losses, "ddp": type(trainer.model_wrapped).__name__,
                   "find_unused_parameters": getattr(trainer.model_wrapped, "find_unused_parameters", None),
                   "step_times_s": [b - a for a, b in zip(times.starts, times.starts[1:])]}, f)
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, os.path.join(args.out, "params.pt"))
