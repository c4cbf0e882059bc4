"""Similar-submission hints: code that is nearly identical after normalising names and formatting.

Hints, not verdicts. The starter code everyone received is removed before comparing, so shared
skeletons do not make every pair look alike.
"""

from __future__ import annotations

import ast
import itertools
import re
from dataclasses import dataclass

from grader.intake.code import parse

SHINGLE = 6
MIN_SHINGLES = 15


class _Renamer(ast.NodeTransformer):
    """Replace identifiers by their order of first appearance in their function (v0, v1, ...).

    Numbering restarts in every function, so a rename in one method does not shift the names of
    the rest of the file; attributes (library calls, `self.x`) are kept.
    """

    def __init__(self) -> None:
        self.scopes: list[dict[str, str]] = [{}]

    def _name(self, name: str) -> str:
        scope = self.scopes[-1]
        return scope.setdefault(name, f"v{len(scope)}")

    def visit_Name(self, node: ast.Name) -> ast.AST:
        node.id = self._name(node.id)
        return node

    def visit_arg(self, node: ast.arg) -> ast.AST:
        node.arg = self._name(node.arg)
        node.annotation = None
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        node.name = self._name(node.name)
        if ast.get_docstring(node):
            node.body = node.body[1:] or [ast.Pass()]
        self.scopes.append({})
        self.generic_visit(node)
        self.scopes.pop()
        return node

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        if ast.get_docstring(node):
            node.body = node.body[1:] or [ast.Pass()]
        self.generic_visit(node)
        return node


def normalise(code: str) -> list[str]:
    """Tokens of the code with comments, docstrings, formatting and local names normalised away."""
    try:
        tree = _Renamer().visit(parse(code))
        text = ast.unparse(tree)
    except (SyntaxError, ValueError, RecursionError):
        text = code
    return re.findall(r"\w+|[^\w\s]", text)


def shingles(tokens: list[str]) -> set[tuple[str, ...]]:
    return {tuple(tokens[i : i + SHINGLE]) for i in range(max(0, len(tokens) - SHINGLE + 1))}


@dataclass(frozen=True)
class SimilarPair:
    first: str
    second: str
    similarity: float
    shared: int


def similar_pairs(codes: dict[str, str], starter: str = "", threshold: float = 0.8) -> list[SimilarPair]:
    """Pairs whose own (non-starter) code shingles overlap by at least `threshold` (Jaccard)."""
    common = shingles(normalise(starter)) if starter else set()
    own = {student: shingles(normalise(code)) - common for student, code in codes.items()}
    pairs = []
    for (a, sa), (b, sb) in itertools.combinations(sorted(own.items()), 2):
        if len(sa) < MIN_SHINGLES or len(sb) < MIN_SHINGLES:
            continue
        shared = len(sa & sb)
        score = shared / len(sa | sb)
        if score >= threshold:
            pairs.append(SimilarPair(a, b, round(score, 3), shared))
    return sorted(pairs, key=lambda p: -p.similarity)


def starter_code() -> str:
    """The code every student received (the student handout's cells), excluded from similarity."""
    from grader.handout import build_notebook

    return "\n\n".join(c.source for c in build_notebook("en", "student").cells if c.cell_type == "code")
