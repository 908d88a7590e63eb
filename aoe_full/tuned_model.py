"""The tuned-model file and loading it back.

``<work>/aoe_workspace/<model>_<timestamp>/tunespace/result/<model>_<timestamp>_tune.pt``
is a ``torch.save`` of a plain dict (loadable with ``weights_only=True``)::

    {"format": "aoe_full.tuned_model", "version": 1, "mode": "opat" | "sgat",
     "scene": "infer" | "train", "source": {kind, path, factory, sha256},
     "input_names": [...], "input_shapes": {...}, "choices": {...},
     "torch": "<version>", "state_dict": {...}}

It does not contain code: :func:`load_tuned` rebuilds the model from its source
(the factory file or ``.pt2`` it was tuned from, which must still exist), loads
the saved weights and buffers, sets the scene's mode and installs the recorded
choices.  One call::

    model = aoe_full.load_tuned(path)
    y = model(x)
"""
from __future__ import annotations

import os
import warnings
from typing import Any

import torch

from aoe_full.choices import Choices, apply_choices
from aoe_full.errors import TunedModelError
from aoe_full.model_source import ModelSource, file_sha256, load_model
from aoe_full.pipeline import TuningRun, set_mode
from gdat.errors import GdatError
from gdat.jsonio import atomic_file

__all__ = ["save_tuned", "load_tuned", "FORMAT", "VERSION"]

FORMAT = "aoe_full.tuned_model"
VERSION = 1


def save_tuned(path: str, run: TuningRun, source: ModelSource, input_shapes: dict[str, tuple[int, ...]],
               model: torch.nn.Module) -> None:
    """Write the tuned-model file for ``run`` (weights taken from ``model``)."""
    doc = {"format": FORMAT, "version": VERSION, "mode": run.mode, "scene": run.scene,
           "source": source.to_dict(), "input_names": list(input_shapes),
           "input_shapes": {k: list(v) for k, v in input_shapes.items()},
           "choices": run.choices.to_dict(), "torch": str(torch.__version__),
           "state_dict": model.state_dict()}
    with atomic_file(path, "wb") as f:
        torch.save(doc, f)


def _read(path: str) -> dict[str, Any]:
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TunedModelError(f"{path}: no such file") from None
    except Exception as e:
        raise TunedModelError(f"{path}: not a tuned-model file ({type(e).__name__}: {e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise TunedModelError(f"{path}: not a tuned-model file")
    if doc.get("version") != VERSION:
        raise TunedModelError(f"{path}: tuned-model version {doc.get('version')!r} is not "
                              f"supported (this aoe_full reads version {VERSION})")
    return doc


def load_tuned(path: str) -> torch.nn.Module:
    """The tuned model saved at ``path``, ready to run (see the module docstring).

    Warns when the source file changed since tuning; raises
    :class:`TunedModelError` when it is gone or no longer matches."""
    doc = _read(path)
    source = ModelSource.from_dict(doc["source"])
    if not os.path.isfile(source.path):
        raise TunedModelError(f"{path}: its source model {source.path} no longer exists")
    if file_sha256(source.path) != source.sha256:
        warnings.warn(f"{source.path} changed since it was tuned; the recorded choices are "
                      "checked against its graph", stacklevel=2)
    try:
        model = load_model(source)
        model.load_state_dict(doc["state_dict"], strict=True)
    except GdatError:
        raise
    except (RuntimeError, KeyError) as e:
        raise TunedModelError(f"{path}: weights do not fit {source.path}: {e}") from None
    set_mode(model, str(doc["scene"]))
    apply_choices(model, Choices.from_dict(doc["choices"]), list(doc["input_names"]))
    return model
