"""A model's training forward compiled by Inductor in segments cut at its repeated blocks.

``torch.compile`` of a whole model turns its backward into one compiled function
that hands every parameter's gradient back at its end, so data-parallel training
can start no allreduce before the backward is over.  Compiled in *segments*, the
backward keeps the block structure that DDP's buckets overlap with:

* the *repeated blocks* (:func:`repeated_blocks`) are the elements of every
  ``ModuleList``/``Sequential`` holding at least two modules of one class that is
  not part of ``torch.nn`` (a transformer's layers, a ResNet's residual blocks);
* each block's forward is compiled on its own, and the model's forward is compiled
  with a graph break at every block call, so the code around the blocks is compiled
  where Dynamo can resume after a break (a head, a loss); a function that calls the
  blocks in a loop runs its own code eagerly (Dynamo's rule for a break inside a
  loop), its blocks still compiled;
* a segment's backward returns its gradients when it ends, so the gradients of the
  last block are ready while the earlier blocks still run backward.

Inductor's ``fallback_random`` is on in every segment: dropout draws its masks with
the same random calls, in the same order, as the model as built, so the compiled
model computes the same training step (checked by :mod:`aoe_full.precision`
within the fp32 tolerance).  It is also the faster choice on the CPU: measured on
the GPT-2 LM under bf16 autocast, Inductor's own random numbers made each block's
compiled forward about 3x slower than aten's ``bernoulli_``.  In eval mode the forward runs as built (the checks
cover training).  If the first call fails (no C++ compiler on a node, an operator
Inductor cannot lower), or a later one fails in Dynamo or Inductor (compiling again
for new shapes), the model goes back to running as built for good, with one
warning, and the call is repeated as built (an error of the model's own comes back
from that call; a forward that failed after a segment ran has run that segment
twice).  An error that the model as built raises too (a bad batch, which Dynamo
reports as its own error when it compiles again) is the model's own: it is raised,
the segments kept, and so is any other error of a later call.
Before Inductor, :mod:`aoe_full.segment_rewrites` rewrites each segment's graph.
"""
from __future__ import annotations

import functools
import warnings
from typing import Any, Callable

import torch
from torch._inductor.compile_fx import compile_fx

from aoe_full.errors import first_line
from aoe_full.precision import owner_trains
from aoe_full.segment_rewrites import rewrite
from aoe_full.strategies import fresh_function

__all__ = ["INDUCTOR_OPTIONS", "repeated_blocks", "SegmentedForward", "compile_segments"]

#: Inductor options of every segment.
INDUCTOR_OPTIONS: dict[str, Any] = {"fallback_random": True}


def _is_torch_nn(module: torch.nn.Module) -> bool:
    return type(module).__module__.startswith("torch.nn")


def repeated_blocks(module: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """``(path, block)`` for every repeated block of ``module`` (module docstring),
    outermost first: a block inside a block is not listed again."""
    found: list[tuple[str, torch.nn.Module]] = []

    def visit(prefix: str, m: torch.nn.Module) -> None:
        kids = list(m.named_children())
        if isinstance(m, (torch.nn.ModuleList, torch.nn.Sequential)) and len(kids) >= 2 \
                and len({type(k) for _, k in kids}) == 1 and not _is_torch_nn(kids[0][1]):
            found.extend((f"{prefix}{name}", kid) for name, kid in kids)
            return
        for name, kid in kids:
            visit(f"{prefix}{name}.", kid)

    visit("", module)
    return found


def _inductor(gm: torch.fx.GraphModule, example_inputs: list[Any], mixed: bool) -> Callable[..., Any]:
    """Inductor with :data:`INDUCTOR_OPTIONS`, after :func:`aoe_full.segment_rewrites.rewrite`."""
    rewrite(gm, mixed)
    return compile_fx(gm, example_inputs, config_patches=INDUCTOR_OPTIONS)


def _compile(forward: Callable[..., Any], tag: str, mixed: bool) -> Callable[..., Any]:
    """``forward`` compiled through a function of its own: every block (and every
    copy of a model) keeps its own Dynamo cache, so blocks that differ in a constant
    (a layer index) never exhaust one code object's recompile limit."""
    return torch.compile(fresh_function(forward, f"segment_{tag}"), backend=functools.partial(_inductor, mixed=mixed))


#: Dynamo compiles the frames between a graph break and a block's forward (a
#: block class's own ``__call__``) once per block instance, in one code object's
#: cache: while the model runs, that cache may hold this many entries per block
#: (copies of a model, as aoe's checks make, add theirs), instead of Dynamo's 8 in
#: all, past which it would warn and leave the frame uncompiled.
_FRAMES_PER_BLOCK = 8


class _Switch:
    """Whether the compiled segments are in use (``False`` after a failed compile)."""

    def __init__(self) -> None:
        self.on = True


class _CompiledForward:
    """A forward and its compiled version (built at the first call in training);
    the forward's signature shows through (``__wrapped__``)."""

    def __init__(self, forward: Callable[..., Any], switch: _Switch, mixed: bool) -> None:
        functools.update_wrapper(self, forward)
        self.forward = forward
        self.switch = switch
        self.mixed = mixed
        self.compiled: Callable[..., Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "compiled": None}  # a copy compiles its own

    def as_built(self) -> bool:
        """Whether a call runs the forward as built: switched off, or in eval mode."""
        return not self.switch.on or not owner_trains(self.forward)


class _BlockForward(_CompiledForward):
    """A block's forward compiled on its own, behind a graph break for the
    enclosing compile; the block's own forward in eval mode or once switched off."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.as_built():
            return self.forward(*args, **kwargs)
        if self.compiled is None:
            self.compiled = torch._dynamo.disable(_compile(self.forward, "block", self.mixed), recursive=False)
        return self.compiled(*args, **kwargs)


class SegmentedForward(_CompiledForward):
    """A module's forward compiled in segments while it trains (module docstring)."""

    def __init__(self, forward: Callable[..., Any], blocks: list[torch.nn.Module], mixed: bool) -> None:
        super().__init__(forward, _Switch(), mixed)
        for block in blocks:
            block.forward = _BlockForward(block.forward, self.switch, mixed)
        self.frame_limit = _FRAMES_PER_BLOCK * (len(blocks) + 1)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.as_built():
            return self.forward(*args, **kwargs)
        limit = max(torch._dynamo.config.recompile_limit, self.frame_limit)
        first = self.compiled is None
        try:
            with torch._dynamo.config.patch(recompile_limit=limit):
                if first:
                    self.compiled = _compile(self.forward, "model", self.mixed)
                return self.compiled(*args, **kwargs)
        except Exception as e:  # a compile that fails leaves the model as built, never the job failed
            if not first and not isinstance(e, torch._dynamo.exc.TorchDynamoException):
                raise  # the model's own error at a later call (the script may catch it and go on)
            self.switch.on = False
            try:
                out = self.forward(*args, **kwargs)
            except Exception:
                self.switch.on = True  # the model as built fails too: the error is the model's own
                raise
            warnings.warn(f"compiled segments switched off, the model runs as built: {first_line(e)}",
                          RuntimeWarning, stacklevel=2)
            return out


def compile_segments(module: torch.nn.Module, mixed: bool = False) -> SegmentedForward:
    """``module.forward`` compiled in segments cut at ``module``'s repeated blocks,
    whose forwards are replaced in place; the caller installs the result as
    ``module.forward``.  ``mixed``: the segments may draw other random numbers
    than the model as built (:mod:`aoe_full.segment_rewrites`; mixed-precision
    candidates, whose check compares losses)."""
    return SegmentedForward(module.forward, [block for _, block in repeated_blocks(module)], mixed)
