"""The package reads top-down: every module imports, and the import graph (imports inside functions
included, as `../shared/tools/import_cycles.py` counts them) has no cycle and no upward edge from the
bottom layer."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import compress

ROOT = Path(compress.__file__).parent
# The bottom layer: loading, saving, configs, registries, selection/swap and surgery helpers. None of these
# may import the machinery, the passes or anything above them.
BOTTOM = {"compress.errors", "compress.config", "compress.registry", "compress.modules", "compress.surgery",
          "compress.artifacts", "compress.models", "compress.data"}
UPPER = ("compress.passes", "compress.pipeline", "compress.recipe", "compress.report", "compress.cli",
         "compress.train", "compress.distillation", "compress.pruning", "compress.quantization")


def _modules() -> dict[str, Path]:
    mods = {}
    for f in ROOT.rglob("*.py"):
        rel = f.relative_to(ROOT.parent).with_suffix("")
        mods[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = f
    return mods


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its file (a submodule's edge to its own
    package `__init__`, registration on import, is not counted, as in the shared tool)."""
    mods = _modules()
    graph = {m: set() for m in mods}
    for m, f in mods.items():
        is_pkg = f.name == "__init__.py"
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                if node.level:
                    base = m.split(".") if is_pkg else m.split(".")[:-1]
                    mod = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != m and not m.startswith(t + "."):
                    graph[m].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (iterative Tarjan)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]; counter[0] += 1; stack.append(root); on.add(root)  # noqa: E702
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]; counter[0] += 1; stack.append(w); on.add(w)  # noqa: E702
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop(); on.discard(x); comp.append(x)  # noqa: E702
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_every_module_imports():
    # `compress.__main__` runs the CLI when imported, so it is the one module left out.
    names = [m.name for m in pkgutil.walk_packages([str(ROOT)], prefix="compress.") if m.name != "compress.__main__"]
    assert len(names) > 40
    for name in names:
        importlib.import_module(name)


def test_import_graph_has_no_cycle():
    found = cycles(import_graph())
    assert found == [], f"import cycles: {found}"


def test_cycle_finder_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_bottom_layer_imports_nothing_above_it():
    graph = import_graph()
    upward = {m: sorted(t for t in graph[m] if t.startswith(UPPER)) for m in BOTTOM}
    assert {m: t for m, t in upward.items() if t} == {}
