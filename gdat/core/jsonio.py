"""Versioned JSON documents: the one place that reads, checks and writes them.

Every file gdat writes (profile, plan, bank entry, report) is a JSON object with
``"schema"`` (the document kind) and ``"version"``.  Writes are atomic: the text
goes to a temporary file in the same directory, is flushed to disk and renamed
over the target, so a reader sees the old file or the new one, never half
(:func:`atomic_file`, also for files that are not JSON).  :func:`digest` is the one
stable hash of a JSON value (bank entry ids, operator and subgraph identities).

Reads are bounded, because a document may come from someone else (a shared
knowledge base, a plan or report received by mail).  :func:`read_json` opens
without blocking and accepts only a regular file (a FIFO, device or directory is
refused, never waited on), reads at most :data:`MAX_DOCUMENT_BYTES`, and refuses
JSON nested deeper than :data:`MAX_NESTING` levels (gdat's own documents nest at
most 6 deep); every failure is the caller's error type, never ``RecursionError``,
``MemoryError`` or a hang.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from contextlib import contextmanager
from typing import IO, Any, Callable, Iterator, TypeVar

__all__ = ["atomic_file", "atomic_write_text", "canonical_json", "digest", "write_document", "read_json",
           "read_document", "check_document", "require", "MAX_DOCUMENT_BYTES", "MAX_NESTING"]

T = TypeVar("T")

MAX_DOCUMENT_BYTES = 256 << 20
MAX_NESTING = 32


@contextmanager
def atomic_file(path: str, mode: str = "w") -> Iterator[IO[Any]]:
    """An open temporary file beside ``path`` (``mode`` ``"w"``: UTF-8 text, or
    ``"wb"``); when the block ends it is flushed to disk and renamed over ``path``,
    so a reader sees the old file or the new one, never half.  On an error it is
    removed and ``path`` is untouched."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`atomic_file`)."""
    with atomic_file(path) as f:
        f.write(text)


def canonical_json(value: Any) -> str:
    """``value`` as canonical JSON: sorted keys, no spaces, non-JSON values as ``str``."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def digest(value: Any, hex_digits: int) -> str:
    """A stable identifier of ``value``: the SHA-256 of :func:`canonical_json`,
    its first ``hex_digits`` hex digits."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()[:hex_digits]


def write_document(path: str, schema: str, version: int, body: dict[str, Any]) -> None:
    """Atomically write ``body`` tagged with its schema name and version."""
    doc = {"schema": schema, "version": version, **body}
    atomic_write_text(path, json.dumps(doc, indent=1, sort_keys=False) + "\n")


def _read_regular_file(path: str, error: type[Exception], max_bytes: int) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``max_bytes``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{path}: not a regular file")
        if info.st_size > max_bytes:
            raise error(f"{path}: {info.st_size} bytes is larger than the {max_bytes}-byte limit")
        chunks, size = [], 0
        while size <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror})") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise error(f"{path}: larger than the {max_bytes}-byte limit")
    return data


def _nesting(value: Any) -> int:
    """Depth of the deepest list or object in a parsed JSON value (iterative)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth > MAX_NESTING:
            break
        stack.extend((c, depth + 1) for c in children)
    return deepest


def read_json(path: str, error: type[Exception], max_bytes: int = MAX_DOCUMENT_BYTES) -> Any:
    """The parsed JSON value in ``path``, read as the module docstring says; any
    problem raises ``error`` with a one-line message naming ``path``."""
    data = _read_regular_file(path, error, max_bytes)
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON ({e.msg}, line {e.lineno} column {e.colno})") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise error(f"{path}: not valid JSON ({str(e).splitlines()[0]})") from None
    except RecursionError:
        raise error(f"{path}: JSON nested deeper than {MAX_NESTING} levels") from None
    if _nesting(value) > MAX_NESTING:
        raise error(f"{path}: JSON nested deeper than {MAX_NESTING} levels")
    return value


def read_document(
    path: str, schema: str, version: int, error: type[Exception]
) -> dict[str, Any]:
    """Read a document written by :func:`write_document` (with :func:`read_json`),
    raising ``error`` if it is missing, unreadable, not JSON, of another schema or
    of another version."""
    return check_document(read_json(path, error), schema, version, error, where=path)


def check_document(
    doc: Any, schema: str, version: int, error: type[Exception], where: str
) -> dict[str, Any]:
    """Check that ``doc`` is a JSON object of ``schema`` at ``version``."""
    if not isinstance(doc, dict):
        raise error(f"{where}: expected a JSON object, found {type(doc).__name__}")
    if doc.get("schema") != schema:
        raise error(f"{where}: not a {schema} document (schema={doc.get('schema')!r})")
    if doc.get("version") != version:
        raise error(
            f"{where}: {schema} schema version {doc.get('version')!r} is not supported "
            f"(this gdat reads version {version})"
        )
    return doc


def require(
    doc: dict[str, Any], key: str, kind: type | tuple[type, ...], error: type[Exception],
    where: str, check: Callable[[Any], bool] | None = None,
) -> Any:
    """``doc[key]`` if present and of type ``kind`` (and ``check(value)`` holds)."""
    if key not in doc:
        raise error(f"{where}: missing field {key!r}")
    value = doc[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise error(f"{where}: field {key!r} has type {type(value).__name__}")
    if check is not None and not check(value):
        raise error(f"{where}: field {key!r} has an invalid value {value!r}")
    return value
