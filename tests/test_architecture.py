"""The house: gdat's folders follow the loop, imports flow one way, torch's private
members are touched in one module, modules stay small (read from the source, no run)."""
from __future__ import annotations

import ast
import os

import pytest

GDAT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gdat")

# gdat's units in the order data flows; a unit imports only from itself and units before it
ORDER = ["errors", "options", "core", "reducer", "profiling", "schedule", "decide", "bank", "report", "tune", "ddp",
         "job_end", "worker", "mpi_launch", "demo", "run", "cli_simulate", "cli"]
INTERNALS = "gdat.reducer.torch_internals"
# the interpreter's own ending, which gdat.worker.end_process reproduces (not torch's)
STDLIB_PRIVATE = {("os", "_exit"), ("threading", "_shutdown"), ("atexit", "_run_exitfuncs")}


def _modules() -> dict[str, ast.Module]:
    out = {}
    for folder, _, files in os.walk(GDAT):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                name = "gdat." + os.path.relpath(path, GDAT)[:-3].replace(os.sep, ".")
                with open(path) as fh:
                    out[name.removesuffix(".__init__")] = ast.parse(fh.read(), path)
    return out


MODULES = _modules()


def _own_private_names() -> set[str]:
    """Private names gdat defines itself (methods, functions, attributes set on ``self``)."""
    names = set()
    for tree in MODULES.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and \
                    isinstance(node.value, ast.Name) and node.value.id == "self":
                names.add(node.attr)
    return {n for n in names if n.startswith("_")}


OWN = _own_private_names()


def _imports(tree: ast.Module) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "gdat":
            found.update(f"gdat.{a.name}" for a in node.names) if node.module == "gdat" else found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "gdat")
    return found


def _unit(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "__init__"


def test_the_top_level_is_the_public_face_and_the_folders_are_the_loop():
    top = sorted(f for f in os.listdir(GDAT) if f.endswith(".py"))
    folders = sorted(d for d in os.listdir(GDAT) if os.path.isfile(os.path.join(GDAT, d, "__init__.py")))
    assert len(top) <= 12, top
    assert folders == sorted(u for u in ORDER if os.path.isdir(os.path.join(GDAT, u)))
    assert {_unit(m) for m in MODULES} - {"__init__"} <= set(ORDER)


def test_imports_flow_one_way():
    upward = [(m, t) for m, tree in MODULES.items() for t in _imports(tree)
              if "__init__" not in (_unit(m), _unit(t)) and ORDER.index(_unit(t)) > ORDER.index(_unit(m))]
    assert not upward, upward


def test_no_import_cycle():
    graph = {m: {t for t in _imports(tree) if t in MODULES and t != m} for m, tree in MODULES.items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in graph[m]:
            assert state.get(t) != 1, " -> ".join([*path, m, t])
            if t not in state:
                visit(t, [*path, m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_torch_privates_are_touched_in_one_module(module):
    if module == INTERNALS:
        return
    private = []
    for node in ast.walk(MODULES[module]):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value
            owner = base.id if isinstance(base, ast.Name) else None
            if owner not in ("self", "cls") and (owner, node.attr) not in STDLIB_PRIVATE and node.attr not in OWN:
                private.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            private += [f"line {node.lineno}: import {n}" for n in names
                        if n.startswith("torch") and any(p.startswith("_") for p in n.split("."))]
    assert not private, private


def test_no_module_over_300_lines():
    long = {}
    for folder, _, files in os.walk(GDAT):
        for f in files:
            if f.endswith(".py"):
                with open(os.path.join(folder, f)) as fh:
                    n = sum(1 for _ in fh)
                if n > 300:
                    long[f] = n
    assert not long, long
