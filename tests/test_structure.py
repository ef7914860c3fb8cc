"""The package's structure, as its README's module table draws it: no import cycles (imports
inside functions included), no private name taken from another module, modules of a readable
size, and the old module paths gone only where the changelog says so."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "distilkit"
MAX_LINES = 600


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def imports(path: Path, name: str, known: set) -> list:
    """``(module, [names])`` imported anywhere in the file, relative imports resolved, each target
    reduced to the distilkit module it names (``from .x import y`` is module ``x``, or ``x.y``
    when that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.append((sub if sub in known else target, alias.name))
        elif isinstance(node, ast.Import):
            out.extend((alias.name, None) for alias in node.names)
    return [(m, n) for m, n in out if m in known]


def graph() -> dict:
    mods = modules()
    known = set(mods)
    return {m: {t for t, _ in imports(p, m, known) if t != m} for m, p in mods.items()}


def cycles(g: dict) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_lazy_imports_included():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_private_name_is_imported_from_another_module():
    mods = modules()
    known = set(mods)
    found = [(m, t, n) for m, p in mods.items() for t, n in imports(p, m, known)
             if n and n.startswith("_") and not n.startswith("__") and t != m]
    assert found == []


def test_modules_stay_readable():
    sizes = {m: len(p.read_text().splitlines()) for m, p in modules().items()}
    assert max(sizes.values()) <= MAX_LINES, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


def test_lower_rooms_never_import_the_training_loop_or_the_cli():
    """Dependencies point down: cli -> training -> losses, models, adapters, cache -> data."""
    g = graph()
    low = [m for m in g if m.split(".")[1:2] and m.split(".")[1] in (
        "losses", "models", "data", "adapters", "protocol", "hf", "checkpoint", "vocab", "cache", "decoding",
        "userdata", "stats")]
    bad = {m: sorted(t for t in g[m] if t.startswith(("distilkit.training", "distilkit.cli", "distilkit.experiments")))
           for m in low}
    assert {m: v for m, v in bad.items() if v} == {}


@pytest.mark.parametrize("old, new", [("distilkit.train", "distilkit.training"),
                                      ("distilkit.generate", "distilkit.decoding"),
                                      ("distilkit.distributed", "distilkit.training.distributed"),
                                      ("distilkit.cli_user", "distilkit.cli.inputs")])
def test_moved_modules_are_in_the_changelog(old, new):
    text = (ROOT / "CHANGELOG.md").read_text()
    assert f"`{old}`" in text and f"`{new}`" in text
    code = f"import importlib, sys\ntry:\n    importlib.import_module({old!r})\nexcept ModuleNotFoundError:\n    sys.exit(0)\nsys.exit(1)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0, f"{old} still imports"
