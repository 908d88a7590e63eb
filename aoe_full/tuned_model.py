"""The tuned-model files and loading them back.

Under ``<work>/aoe_workspace/<model>_<timestamp>/tunespace/result/``:

* ``<model>_<timestamp>_tune.pt``: the weights, a ``torch.save`` of
  ``{"state_dict": ...}`` (read with ``weights_only=True``);
* ``<model>_<timestamp>_tune.json``: its header, a JSON document
  (:mod:`gdat.core.jsonio`, schema ``aoe_full.tuned_model``, version 2)::

      {"mode": "opat" | "sgat", "scene": "infer" | "train",
       "source": {kind, path, factory, sha256}, "capture": "fx" | "export",
       "inputs": [{name, shape, dtype, low, high}, ...], "choices": {...},
       "torch": "<version>", "weights_sha256": "<SHA-256 of the .pt file>"}

* in scene infer, when the delivered configuration allows it, the offline
  package ``<model>_<timestamp>_tune.pt2`` (:mod:`aoe_full.offline`).

Neither the ``.pt`` nor its header contains code.  :func:`load_tuned` rebuilds
the model from the source file **the caller names** (never from a path read out
of the header), and only when that file's SHA-256 is the recorded one::

    model = aoe_full.load_tuned(".../m_20250101_tune.pt", source="models.py:build")
    offline = aoe_full.load_tuned(".../m_20250101_tune.pt2")   # no source needed

It checks, before running anything: the header (bounded JSON reader), the
source's kind, factory name and SHA-256, and the weights file's SHA-256.  Any
mismatch raises :class:`TunedModelError` and nothing is imported.  Then it
builds the model from the verified bytes, captures it as tuning did (torch.export
on the recorded sample inputs when tuning had to export it), loads the weights,
sets the scene's mode and installs the recorded choices.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from aoe_full.choices import Choices, apply_choices
from aoe_full.errors import TunedModelError
from aoe_full.graph_capture import CAPTURES, graphable
from aoe_full.inputs import InputSpec, make_inputs
from aoe_full.model_source import ModelSource, file_sha256, load_model, parse_model_spec
from aoe_full.offline import OfflineModel, load_package
from aoe_full.pipeline import SCENES, TuningRun, set_mode
from gdat.core.jsonio import atomic_file, check_document, read_json, require, write_document
from gdat.errors import GdatError

__all__ = ["save_tuned", "load_tuned", "read_header", "header_path", "SCHEMA", "VERSION"]

SCHEMA = "aoe_full.tuned_model"
VERSION = 2
_MODES = ("opat", "sgat")
_KINDS = {"factory": "pytorch", "exported": "pytorch"}


def header_path(weights_path: str) -> str:
    """The header beside a ``_tune.pt`` weights file."""
    return os.path.splitext(weights_path)[0] + ".json"


def save_tuned(path: str, run: TuningRun, source: ModelSource, capture: str,
               inputs: list[InputSpec], model: torch.nn.Module) -> None:
    """Write the weights file ``path`` (``..._tune.pt``) and its header for ``run``
    (weights taken from ``model``, the module that was tuned)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_file(path, "wb") as f:
        torch.save({"state_dict": model.state_dict()}, f)
    write_document(header_path(path), SCHEMA, VERSION, {
        "mode": run.mode, "scene": run.scene, "source": source.to_dict(), "capture": capture,
        "inputs": [s.to_dict() for s in inputs], "choices": run.choices.to_dict(),
        "torch": str(torch.__version__), "weights_sha256": file_sha256(path)})


def _hex(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def read_header(path: str) -> dict[str, Any]:
    """The checked header of the tuned model whose weights are at ``path``
    (raises :class:`TunedModelError` on anything malformed)."""
    where = header_path(path)
    doc = check_document(read_json(where, TunedModelError), SCHEMA, VERSION, TunedModelError, where)
    require(doc, "mode", str, TunedModelError, where, lambda v: v in _MODES)
    require(doc, "scene", str, TunedModelError, where, lambda v: v in SCENES)
    require(doc, "capture", str, TunedModelError, where, lambda v: v in CAPTURES)
    require(doc, "weights_sha256", str, TunedModelError, where, _hex)
    src = require(doc, "source", dict, TunedModelError, where)
    require(src, "kind", str, TunedModelError, f"{where} source", lambda v: v in _KINDS)
    require(src, "path", str, TunedModelError, f"{where} source")
    require(src, "sha256", str, TunedModelError, f"{where} source", _hex)
    if not (src.get("factory") is None or isinstance(src.get("factory"), str)):
        raise TunedModelError(f"{where}: source factory must be a string or null")
    specs = require(doc, "inputs", list, TunedModelError, where, lambda v: len(v) > 0)
    try:
        doc["inputs"] = [InputSpec.from_dict(s, f"{where} inputs") for s in specs]
    except GdatError as e:
        raise TunedModelError(str(e)) from None
    require(doc, "choices", dict, TunedModelError, where)
    try:
        doc["choices"] = Choices.from_dict(doc["choices"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise TunedModelError(f"{where}: malformed choices ({type(e).__name__}: {e})") from None
    return doc


def _check_source(path: str, header: dict[str, Any], source: str | None) -> ModelSource:
    recorded = ModelSource.from_dict(header["source"])
    if source is None:
        raise TunedModelError(f"{path} was tuned from {recorded.spec}; pass that file as "
                              "load_tuned(path, source=...) (a tuned-model file never chooses "
                              "what is imported)")
    try:
        given = parse_model_spec(source, _KINDS[recorded.kind])
    except GdatError as e:
        raise TunedModelError(f"source: {e}") from None
    if (given.kind, given.factory) != (recorded.kind, recorded.factory):
        raise TunedModelError(f"source {source!r} is not what {path} was tuned from "
                              f"({recorded.spec}); refusing to load")
    if given.sha256 != recorded.sha256:
        raise TunedModelError(f"source {given.path} does not match the file {path} was tuned "
                              f"from (SHA-256 {given.sha256[:12]}... instead of "
                              f"{recorded.sha256[:12]}...); refusing to load")
    return given


def _load_weights(path: str, header: dict[str, Any]) -> dict[str, Any]:
    try:
        actual = file_sha256(path)
    except OSError as e:
        raise TunedModelError(f"{path}: cannot read ({e.strerror})") from None
    if actual != header["weights_sha256"]:
        raise TunedModelError(f"{path}: weights do not match their header (SHA-256 differs); "
                              "refusing to load")
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise TunedModelError(f"{path}: not a tuned-model weights file ({type(e).__name__})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("state_dict"), dict):
        raise TunedModelError(f"{path}: not a tuned-model weights file")
    return doc["state_dict"]


def load_tuned(path: str, source: str | None = None) -> torch.nn.Module | OfflineModel:
    """The tuned model saved at ``path``, ready to run (see the module docstring).

    ``path`` is a ``_tune.pt`` (then ``source`` must name the model file it was
    tuned from, as ``file.py:factory`` or ``model.pt2``) or an
    offline ``_tune.pt2`` package (no ``source``).  Raises :class:`TunedModelError`
    when anything does not match; nothing is imported then."""
    if path.endswith(".pt2"):
        if source is not None:
            raise TunedModelError(f"{path} is a self-contained package; it takes no source")
        return load_package(path)
    header = read_header(path)
    given = _check_source(path, header, source)
    state = _load_weights(path, header)
    model = load_model(given)
    scene = header["scene"]
    set_mode(model, scene)
    specs: list[InputSpec] = header["inputs"]
    if header["capture"] == "export":
        model, _ = graphable(model, list(make_inputs(specs).values()), [s.name for s in specs])
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError) as e:
        raise TunedModelError(f"{path}: weights do not fit {given.path}: "
                              f"{str(e).splitlines()[0]}") from None
    set_mode(model, scene)
    apply_choices(model, header["choices"], [s.name for s in specs])
    return model

