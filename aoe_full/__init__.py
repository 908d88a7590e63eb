"""aoe_full: operator (OPAT) and subgraph (SGAT) tuning with knowledge bases, and
the ``aoe`` command (job types 1 = SGAT, 2 = OPAT, 4 = GDAT through gdat.run).

Public face:

* :func:`apply_bank`: apply the banks' scene-train entries to a module in place,
  before DDP wraps it;
* :func:`load_tuned`: load a tuned-model file written by ``aoe``;
* :func:`tune_operators` / :func:`tune_subgraphs`: the tuners as functions.
"""
from aoe_full.apply import apply_bank
from aoe_full.opat import tune_operators
from aoe_full.pipeline import TuneConfig
from aoe_full.sgat import tune_subgraphs
from aoe_full.tuned_model import load_tuned

__all__ = ["apply_bank", "load_tuned", "tune_operators", "tune_subgraphs", "TuneConfig"]
