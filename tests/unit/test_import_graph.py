"""No import cycle anywhere in ``src/rhailambda``: modules and subpackages form a DAG.

Every import counts, the lazy ones inside functions too (a lazy import hides a cycle
from Python, not from the next reader). ``find_cycles`` is tested on a made-up tree as
well, so the check is known to fail when the rule is broken.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports (a package stands for its __init__)."""
    files = {module_name(p, root): p for p in (root / package).rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".")
                    anchor = anchor if is_pkg else anchor[:-1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def package_graph(graph: Mapping[str, Iterable[str]], depth: int = 2) -> dict[str, set[str]]:
    """The same edges between subpackages (``rhailambda.circle`` -> ``rhailambda.functions``)."""
    out: dict[str, set[str]] = {}
    for src, targets in graph.items():
        a = ".".join(src.split(".")[:depth])
        out.setdefault(a, set())
        for target in targets:
            b = ".".join(target.split(".")[:depth])
            if a != b:
                out[a].add(b)
    return out


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_module_import_cycle() -> None:
    assert find_cycles(import_graph(SRC, "rhailambda")) == []


def test_no_subpackage_import_cycle() -> None:
    assert find_cycles(package_graph(import_graph(SRC, "rhailambda"))) == []


def test_the_circle_does_not_import_the_function() -> None:
    graph = import_graph(SRC, "rhailambda")
    reach = {t for m, ts in graph.items() if m.startswith("rhailambda.circle") for t in ts}
    assert not any(t.startswith("rhailambda.functions") for t in reach)


def test_the_check_finds_a_lazy_cycle(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "a").mkdir(parents=True)
    (pkg / "b").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("from pkg.a.x import X\n")
    (pkg / "a" / "x.py").write_text("from pkg.b.y import Y\nX = 1\n")
    (pkg / "b" / "__init__.py").write_text("")
    (pkg / "b" / "y.py").write_text("def f():\n    from pkg.a import X\n    return X\nY = 2\n")
    graph = import_graph(tmp_path, "pkg")
    assert find_cycles(package_graph(graph)) == [["pkg.a", "pkg.b"]]
    assert find_cycles(graph) == [["pkg.a", "pkg.a.x", "pkg.b.y"]]
