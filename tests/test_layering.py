"""The package is laid out by concern, one layer per folder, and reads top-down (STYLE.md §4):

    core < data < models < runtime < {evaluation | export} < training < techniques < passes < pipeline < cli

Every import of a `compress` module, imports inside functions included, goes to the same package or to a lower
layer; packages on one layer never import each other (nor do the techniques: a pass combines them); `report`
imports only `core` and only `cli` imports `report`; decoder code (`<package>/causal.py`) may import its
neighbours, never the reverse, except the package's entry module, where the classifier/causal fork happens once.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import compress

ROOT = Path(compress.__file__).parent
ORDER = [["core"], ["data"], ["models"], ["runtime"], ["evaluation", "export"], ["training"], ["techniques"],
         ["passes"], ["pipeline"], ["cli"]]
RANK = {package: i for i, layer in enumerate(ORDER) for package in layer}
TECHNIQUES = ("distill", "prune", "quantize", "factorize")
# The one module per package that may fork to the decoder-specific neighbour: the technique's entry function, and
# the loader (which reads a model's task from its files).
ENTRIES = {"compress.models.load", "compress.techniques.distill.api", "compress.techniques.prune.api",
           "compress.techniques.quantize.api", "compress.export.api"}


def _modules(root: Path = ROOT) -> dict[str, Path]:
    mods = {}
    for f in root.rglob("*.py"):
        rel = f.relative_to(root.parent).with_suffix("")
        mods[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = f
    return mods


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its file (a submodule's edge to its own package
    `__init__`, registration on import, is not counted)."""
    mods = _modules(root)
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


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that breaks the layer rules, as 'importer -> imported: why'."""
    bad = []
    for m, targets in graph.items():
        parts = m.split(".")
        here = parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] != "__main__") else None
        for t in targets:
            tparts = t.split(".")
            there = tparts[1] if len(tparts) > 1 else None
            if here is None or there is None:
                continue
            why = None
            if here == "report" and there not in ("core", "report"):
                why = "report imports only core"
            elif there == "report" and here not in ("cli", "report"):
                why = "only cli imports report"
            elif here != there and here in RANK and there in RANK and RANK[there] >= RANK[here]:
                why = "same layer" if RANK[there] == RANK[here] else "upward"
            elif here == there == "techniques" and len(parts) > 3 and len(tparts) > 3 and parts[2] != tparts[2]:
                why = "techniques never import each other (a pass combines them)"
            elif (tparts[-1] == "causal" and parts[-1] != "causal" and tparts[:-1] == parts[:-1]
                  and m not in ENTRIES and here != "report"):
                # (the report has no model to fork on: it renders the decoder tables of causal results.json)
                why = "a general module imports its decoder neighbour (only the entry module forks)"
            if why:
                bad.append(f"{m} -> {t}: {why}")
    return sorted(bad)


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
    assert len(names) > 60
    for name in names:
        importlib.import_module(name)


def test_the_root_holds_only_the_package_entry_points():
    assert sorted(p.name for p in ROOT.glob("*.py")) == ["__init__.py", "__main__.py"]
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(RANK) | {"report"}
    assert {p.name for p in (ROOT / "techniques").iterdir() if (p / "__init__.py").exists()} == set(TECHNIQUES)


def test_every_import_goes_down_the_layers():
    assert violations(import_graph()) == []


def test_import_graph_has_no_cycle():
    found = cycles(import_graph())
    assert found == [], f"import cycles: {found}"


def test_the_checks_find_planted_violations():
    # setup: one edge of each kind the rules forbid, and one of each kind they allow
    graph = {
        "compress.data.examples": {"compress.models.load"},  # upward
        "compress.evaluation.accuracy": {"compress.export.onnx"},  # same layer
        "compress.techniques.prune.structured": {"compress.techniques.distill.recover"},  # sibling technique
        "compress.report.render": {"compress.pipeline.recipe"},  # report reaches above core
        "compress.pipeline.runner": {"compress.report.build"},  # only cli imports report
        "compress.runtime.predict": {"compress.runtime.causal"},  # general -> decoder neighbour
        "compress.techniques.prune.api": {"compress.techniques.prune.causal"},  # the entry forks: allowed
        "compress.runtime.causal": {"compress.runtime.ort", "compress.models.causal"},  # allowed
        "compress.passes.prune_structured": {"compress.techniques.prune.api", "compress.techniques.distill.recover"},
    }
    # execute
    found = violations(graph)
    # assert: exactly the six forbidden edges
    assert [v.split(":")[0] for v in found] == sorted([
        "compress.data.examples -> compress.models.load", "compress.evaluation.accuracy -> compress.export.onnx",
        "compress.techniques.prune.structured -> compress.techniques.distill.recover",
        "compress.report.render -> compress.pipeline.recipe", "compress.pipeline.runner -> compress.report.build",
        "compress.runtime.predict -> compress.runtime.causal"])
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_lazy_imports_count(tmp_path):
    # setup: a package whose only upward import hides inside a function
    pkg = tmp_path / "compress"
    (pkg / "core").mkdir(parents=True)
    (pkg / "cli").mkdir()
    for f in ("__init__.py", "core/__init__.py", "cli/__init__.py", "cli/app.py"):
        (pkg / f).write_text("")
    (pkg / "core" / "errors.py").write_text("def f():\n    from compress.cli.app import x\n")
    # execute / assert
    assert violations(import_graph(pkg)) == ["compress.core.errors -> compress.cli.app: upward"]
