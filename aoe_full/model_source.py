"""Where a model comes from, and loading it.

Two sources (``--model``; ``--framework`` is ``pytorch``):

* ``pytorch`` with ``path/to/file.py:factory``: the file is imported as a module
  (its directory first on ``sys.path`` while it loads) and ``factory()`` is called
  with no arguments; it must return a ``torch.nn.Module``;
* ``pytorch`` with ``path/to/model.pt2``: a program saved by ``torch.export.save``,
  loaded with ``torch.export.load(path).module()``.  Such a module runs in the mode
  it was exported in (torch does not support ``.train()``/``.eval()`` on it);

ONNX input (AOE's ``--framework 5``) is refused with the reason: the converter
it would need, ``onnx2torch``, requires torchvision, whose PyPI wheels are CUDA
builds that pull a second torch and do not import beside the CPU-only torch this
project pins.  (ONNX Runtime is still one of the engines a model is tuned on:
see :mod:`aoe_full.engines`.)

A :class:`ModelSource` records the absolute path and the file's SHA-256.
:func:`load_model` reads the file's bytes once, refuses them unless their SHA-256
is the recorded one, and builds the model from those same bytes (the code that
runs is the code that was hashed, even if the file changes meanwhile).
"""
from __future__ import annotations

import hashlib
import io
import os
import sys
import types
from dataclasses import asdict, dataclass
from typing import Any

import torch

from aoe_full.errors import ModelLoadError
from gdat.errors import UsageError

__all__ = ["ModelSource", "parse_model_spec", "load_model", "FRAMEWORKS"]

#: ``--framework`` values: PyTorch (a factory file or an exported program).
FRAMEWORKS = ("pytorch",)


@dataclass(frozen=True)
class ModelSource:
    """A model's origin: ``kind`` is ``factory`` or ``exported``."""

    kind: str
    path: str
    factory: str | None
    sha256: str

    @property
    def spec(self) -> str:
        """The ``--model`` text that names this source."""
        return f"{self.path}:{self.factory}" if self.factory else self.path

    @property
    def name(self) -> str:
        """The model's name in output paths: the file name without extension,
        followed by ``_<factory>`` for a factory."""
        stem = os.path.splitext(os.path.basename(self.path))[0]
        return f"{stem}_{self.factory}" if self.factory else stem

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "ModelSource":
        return ModelSource(kind=str(d["kind"]), path=str(d["path"]),
                           factory=d.get("factory"), sha256=str(d["sha256"]))


def file_sha256(path: str) -> str:
    """SHA-256 of a file's bytes, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _existing_file(path: str, what: str) -> str:
    full = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(full):
        raise UsageError(f"{what} {path!r} does not exist or is not a file")
    if not os.access(full, os.R_OK):
        raise UsageError(f"{what} {path!r} is not readable")
    return full


def parse_model_spec(model: str, framework: str) -> ModelSource:
    """Check ``--model`` for ``--framework`` without loading anything."""
    if framework == "5":
        raise UsageError("--framework 5 (ONNX) is not supported: its converter, onnx2torch, "
                         "needs torchvision, which does not install beside the CPU-only torch; "
                         "tune the PyTorch model instead")
    if framework not in FRAMEWORKS:
        raise UsageError(f"unknown --framework {framework!r}; expected pytorch")
    if model.endswith(".pt2"):
        path = _existing_file(model, "model file")
        return ModelSource("exported", path, None, file_sha256(path))
    file_part, sep, factory = model.rpartition(":")
    if not sep or not file_part.endswith(".py") or not factory.isidentifier():
        raise UsageError(f"--model {model!r}: expected path/to/file.py:factory or a .pt2 file")
    path = _existing_file(file_part, "model file")
    return ModelSource("factory", path, factory, file_sha256(path))


def _read_verified(source: ModelSource) -> bytes:
    try:
        with open(source.path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ModelLoadError(f"cannot read {source.path}: {e.strerror}") from None
    if hashlib.sha256(data).hexdigest() != source.sha256:
        raise ModelLoadError(f"{source.path} changed since it was checked "
                             "(its SHA-256 differs); nothing was loaded")
    return data


def _load_factory(source: ModelSource, data: bytes) -> torch.nn.Module:
    module_name = f"aoe_user_model_{source.sha256[:16]}"
    module = sys.modules.get(module_name)
    if module is None:
        module = types.ModuleType(module_name)
        module.__file__ = source.path
        directory = os.path.dirname(source.path)
        sys.path.insert(0, directory)
        sys.modules[module_name] = module
        try:
            exec(compile(data, source.path, "exec"), module.__dict__)
        except Exception as e:
            del sys.modules[module_name]
            raise ModelLoadError(f"importing {source.path} failed: "
                                 f"{type(e).__name__}: {e}") from None
        finally:
            sys.path.remove(directory)
    factory = getattr(module, source.factory or "", None)
    if not callable(factory):
        raise ModelLoadError(f"{source.path} has no callable {source.factory!r}")
    try:
        model = factory()
    except Exception as e:
        raise ModelLoadError(f"{source.path}:{source.factory}() failed: "
                             f"{type(e).__name__}: {e}") from None
    if not isinstance(model, torch.nn.Module):
        raise ModelLoadError(f"{source.path}:{source.factory}() returned "
                             f"{type(model).__name__}, not a torch.nn.Module")
    return model


def _load_exported(source: ModelSource, data: bytes) -> torch.nn.Module:
    try:
        return torch.export.load(io.BytesIO(data)).module()
    except Exception as e:
        raise ModelLoadError(f"cannot load exported program {source.path}: "
                             f"{type(e).__name__}: {e}") from None


def load_model(source: ModelSource) -> torch.nn.Module:
    """Build the module ``source`` describes from the file's bytes, refused
    unless they have the recorded SHA-256 (raises :class:`ModelLoadError`)."""
    loaders = {"factory": _load_factory, "exported": _load_exported}
    return loaders[source.kind](source, _read_verified(source))
