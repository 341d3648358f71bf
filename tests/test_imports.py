"""Every module of the package imports on its own, as the first import of a fresh interpreter,
so that no import cycle can hide behind the order in which the CLI happens to import."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import pytest

import infoutil

PACKAGE_DIR = Path(infoutil.__file__).parent


def package_modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        if parts[-1] == "__main__":  # running it is the CLI, not an import
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


def import_alone(name: str) -> str | None:
    """Import ``name`` in a forked child with no infoutil module loaded (third-party packages
    stay loaded: they cannot take part in our cycles, and forking saves a second of torch
    import per module). Returns the child's error, or None."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: forget every infoutil module, then import one
        os.close(read)
        for mod in [m for m in sys.modules if m == "infoutil" or m.startswith("infoutil.")]:
            del sys.modules[mod]
        try:
            __import__(name)
            message = b""
        except BaseException:
            message = traceback.format_exc().encode()
        os.write(write, message[-4000:])
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    return out or None


def test_the_module_list_covers_the_stages():
    names = package_modules()
    for stage in ("data", "models", "attribution", "selection", "methods", "evaluation", "io"):
        assert f"infoutil.{stage}" in names
    assert "infoutil.io.checkpoint" in names and "infoutil.cli" in names


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_every_module_imports_first_and_alone():
    import numpy  # noqa: F401  (loaded before forking, shared by every child)
    import torch  # noqa: F401

    failures = {name: err for name in package_modules() if (err := import_alone(name))}
    assert not failures, "\n".join(f"{n}:\n{e}" for n, e in failures.items())


def test_a_cycle_is_caught(tmp_path, monkeypatch):
    """The check itself: a package whose modules import each other at the top fails."""
    pkg = tmp_path / "cyclepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from cyclepkg.b import B\nA = 1\n")
    (pkg / "b.py").write_text("from cyclepkg.a import A\nB = 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    err = import_alone("cyclepkg.a")
    assert err is not None and "circular import" in err


# the floors of the house, bottom up: a package may import only from floors below its own
FLOORS = [
    {"errors"},
    {"atomic", "runtime"},
    {"data"},
    {"distributed", "models"},
    {"io", "attribution"},
    {"config"},
    {"training", "selection"},
    {"methods"},
    {"evaluation"},
    {"report"},
    {"pipeline"},
    {"demo"},
    {"cli"},
    {"__main__"},
]


def _package_imports() -> dict[str, set[str]]:
    """Package (or top-level module) -> the infoutil packages its code imports."""
    import ast

    edges: dict[str, set[str]] = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = path.relative_to(PACKAGE_DIR).with_suffix("").parts
        if parts == ("__init__",):
            continue
        src = parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                bits = name.split(".")
                if bits[0] == "infoutil" and len(bits) > 1 and bits[1] not in (src, "__init__"):
                    edges.setdefault(src, set()).add(bits[1])
    return edges


def test_no_import_runs_up_a_floor():
    floor = {name: i for i, names in enumerate(FLOORS) for name in names}
    found = _package_imports()
    assert set(found) <= set(floor), set(found) - set(floor)  # a new package needs a floor
    upward = [
        f"{src} -> {dst}"
        for src, dsts in sorted(found.items())
        for dst in sorted(dsts)
        if dst in floor and floor[dst] >= floor[src]
    ]
    assert upward == []


def test_no_function_is_over_100_lines():
    """A function that long hides stages that should each be a call (CLI option declarations
    count: typer declares options as parameters)."""
    import ast

    long = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                body = node.end_lineno - node.body[0].lineno + 1  # the signature aside
                if body > 100:
                    long.append(f"{path.relative_to(PACKAGE_DIR)}:{node.name} ({body} lines)")
    assert long == []
