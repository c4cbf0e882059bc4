"""The grader's import graph from its source: modules, import edges, depth, cycles, and imports that point up.

    python scripts/import_graph.py          # summary; exit 1 on a cycle or an upward import
    python scripts/import_graph.py --edges  # every edge too

Every `import` counts, also those inside functions (a lazy import is still a dependency) and under
`if TYPE_CHECKING`. Stages and their order are in `STAGES`; docs/architecture.md draws them.
"""

from __future__ import annotations

import argparse
import ast
import sys
from graphlib import TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "grader"
# The stages, top first: (module or package, stage, rank). A module may import its own stage and stages of a
# lower rank only; stages of one rank are siblings and do not import each other.
STAGES: list[tuple[str, str, int]] = [
    ("grader.__main__", "entry", 8), ("grader.cli", "entry", 7),
    ("grader.lms", "lms", 6),
    *((f"grader.{tool}", "tools", 6) for tool in ("doctor", "bundle", "assign", "selfcheck")),
    ("grader.batch", "batch", 5),
    ("grader.checks", "checks", 4),
    ("grader.rubric", "rubric", 3),
    *((f"grader.{stage}", stage, 2) for stage in ("intake", "sandbox", "expected", "training", "render")),
    *((f"grader.{stage}", stage, 1) for stage in ("report", "options", "tables", "handout", "pyproject")),
    ("grader.spec", "spec", 0), ("grader", "grader", 0),
]


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str, modules: set[str]) -> set[str]:
    """The grader modules `path` imports (a `from package import name` counts as the submodule when there is one)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import grader.x.y.z` depends on the deepest module that exists
                target = target.rpartition(".")[0]
            if target.startswith(PACKAGE) and target != name:
                found.add(target)
    return found


def stage(module: str) -> tuple[str, int]:
    return next((name, rank) for prefix, name, rank in STAGES if module == prefix or module.startswith(prefix + "."))


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    files = {module_name(p, root): p for p in sorted((root / PACKAGE).rglob("*.py"))}
    return {name: imports_of(path, name, set(files)) for name, path in files.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles: strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in edges.get(module, ()):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while not group or group[-1] != module:
                group.append(stack.pop())
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return found


def depth(edges: dict[str, set[str]]) -> int:
    """Import levels: the longest chain of imports, a cycle counted as one module (the package face `grader`,
    which holds only the version, not counted)."""
    group_of = {m: tuple(g) for g in cycles(edges) for m in g}
    condensed: dict[tuple, set[tuple]] = {}
    for module, targets in edges.items():
        own = group_of.get(module, (module,))
        condensed.setdefault(own, set()).update(group_of.get(t, (t,)) for t in targets if t != PACKAGE)
        condensed[own].discard(own)
    levels: dict[tuple, int] = {}
    for group in TopologicalSorter(condensed).static_order():
        levels[group] = 1 + max((levels[t] for t in condensed.get(group, ())), default=0)
    return max(levels.values(), default=0)


def problems(edges: dict[str, set[str]]) -> list[str]:
    found = ["import cycle: " + ", ".join(group) for group in cycles(edges)]
    for module, targets in sorted(edges.items()):
        for target in sorted(targets):
            (own, rank), (theirs, their_rank) = stage(module), stage(target)
            if their_rank > rank or (their_rank == rank and own != theirs):
                found.append(f"{module} imports {target}: stage {theirs} is not below {own}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", action="store_true", help="print every edge")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to measure (default: this one)")
    args = parser.parse_args(argv)
    edges = graph(args.root)
    found = problems(edges)
    if args.edges:
        for module, targets in sorted(edges.items()):
            print(f"{module} -> {', '.join(sorted(targets)) or '-'}")
    print(f"{len(edges)} modules, {sum(map(len, edges.values()))} import edges, {depth(edges)} import levels, "
          f"{len(cycles(edges))} import cycles, {len(found) - len(cycles(edges))} imports that point up")
    for problem in found:
        print(problem)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
