"""Keep what defines the model (imports, classes, functions, constants); drop what runs things."""

from __future__ import annotations

import ast
import re
import threading
from collections import defaultdict
from dataclasses import dataclass, field

REQUIRED_CLASSES = ("ViT", "TransformerEncoderLayer", "SelfAttention", "FNN")
# CPython 3.11's ast.parse is not thread-safe ("AST constructor recursion depth mismatch" when two
# threads parse at once), and batch grading intakes submissions on several threads.
_PARSE_LOCK = threading.Lock()


def parse(source: str) -> ast.Module:
    """ast.parse, one thread at a time."""
    with _PARSE_LOCK:
        return ast.parse(source)

# IPython syntax that is not Python: line magics, shell escapes and `x = !ls`.
_MAGIC_LINE = re.compile(r"^(\s*)(?:[%!]|\w+\s*=\s*[%!])")
# Cell magics whose body is still Python and that we can unwrap.
_PYTHON_CELL_MAGICS = ("%%time", "%%timeit", "%%capture")
# Calls allowed in a kept constant, e.g. `device = torch.device("cuda" if ... else "cpu")`.
_ALLOWED_CONSTANT_CALLS = {"torch.device", "device", "torch.cuda.is_available", "cuda.is_available"}


@dataclass
class CodeUnit:
    """One cell or file: where it came from and the statements kept from it."""

    origin: str
    source: str
    kept: str = ""
    dropped: int = 0
    parsed: bool = True


@dataclass
class ExtractedCode:
    units: list[CodeUnit] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def code(self) -> str:
        """The program the sandbox runs: kept statements of every unit, in order."""
        return "\n\n".join(f"# --- {u.origin} ---\n{u.kept}" for u in self.units if u.kept.strip())


def strip_ipython(source: str) -> tuple[str, str | None]:
    """Replace IPython-only lines by `pass` (same indent); return (python, dropped cell magic).

    Source that already parses as Python is returned unchanged, so valid code is never touched.
    """
    try:
        parse(source)
        return source, None
    except SyntaxError:
        pass
    lines = source.splitlines()
    if lines and lines[0].lstrip().startswith("%%"):
        magic = lines[0].split()[0]
        if magic not in _PYTHON_CELL_MAGICS:
            return "", magic
        lines = lines[1:]
    out = []
    for line in lines:
        match = _MAGIC_LINE.match(line)
        out.append(f"{match.group(1)}pass" if match and line.strip() else line)
    return "\n".join(out), None


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _is_simple_value(node: ast.AST) -> bool:
    """Literals, names, arithmetic and `torch.device(...)`: values that are cheap and harmless."""
    for child in ast.walk(node):
        if isinstance(child, ast.Call) and _dotted(child.func) not in _ALLOWED_CONSTANT_CALLS:
            return False
        if isinstance(child, (ast.Lambda, ast.NamedExpr, ast.Await, ast.Yield, ast.YieldFrom)):
            return False
        if isinstance(child, (ast.ListComp, ast.DictComp, ast.SetComp, ast.GeneratorExp)):
            return False
    return True


def _keep(stmt: ast.stmt) -> bool:
    if isinstance(stmt, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return True
    if isinstance(stmt, ast.Assign):
        simple_targets = all(isinstance(t, (ast.Name, ast.Tuple)) for t in stmt.targets)
        return simple_targets and _is_simple_value(stmt.value)
    if isinstance(stmt, ast.AnnAssign):
        return isinstance(stmt.target, ast.Name) and (stmt.value is None or _is_simple_value(stmt.value))
    if isinstance(stmt, ast.Try):
        # `try: import x / except ImportError: ...` guards are kept when they only import.
        blocks = stmt.body + [s for h in stmt.handlers for s in h.body] + stmt.orelse
        return all(isinstance(s, (ast.Import, ast.ImportFrom, ast.Pass)) for s in blocks)
    return False


def filter_unit(unit: CodeUnit, local_modules: frozenset[str] = frozenset()) -> str | None:
    """Fill `unit.kept`; return a warning when the unit could not be used."""
    python, dropped_magic = strip_ipython(unit.source)
    if dropped_magic:
        unit.dropped = 1
        return None
    try:
        tree = parse(python)
    except SyntaxError as exc:
        unit.parsed = False
        return f"{unit.origin}: skipped, it does not parse ({exc.msg}, line {exc.lineno})"
    kept = []
    for stmt in tree.body:
        is_local_import = isinstance(stmt, ast.ImportFrom) and (stmt.module or "").split(".")[0] in local_modules
        if _keep(stmt) and not is_local_import:
            kept.append(ast.get_source_segment(python, stmt, padded=True) or ast.unparse(stmt))
        else:
            unit.dropped += 1
    unit.kept = "\n".join(kept)
    return None


def _bound_names(stmt: ast.stmt) -> set[str]:
    if isinstance(stmt, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        return {stmt.name}
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in stmt.names}
    return {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}


def _read_names(stmt: ast.stmt) -> set[str]:
    return {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def keep_what_the_model_needs(units: list[CodeUnit]) -> None:
    """Keep only the definitions the required classes reach (helpers, constants, imports).

    A notebook's other functions (plotting, heatmaps) import matplotlib, pandas or torchvision, which
    costs seconds per submission and serves no check. Without any required class, keep everything,
    so that load.definitions can say what is missing.
    """
    statements = [(unit, stmt) for unit in units if unit.kept for stmt in parse(unit.kept).body]
    if not any(isinstance(stmt, ast.ClassDef) and stmt.name in REQUIRED_CLASSES for _, stmt in statements):
        return
    needed = set(REQUIRED_CLASSES)
    keep: set[int] = set()
    changed = True
    while changed:
        changed = False
        for index, (_, stmt) in enumerate(statements):
            wildcard = isinstance(stmt, ast.ImportFrom) and any(a.name == "*" for a in stmt.names)
            if index not in keep and (wildcard or _bound_names(stmt) & needed):
                keep.add(index)
                needed |= _read_names(stmt)
                changed = True
    position = 0  # statements are visited in the order they were listed above
    for unit in units:
        if not unit.kept:
            continue
        kept = []
        for stmt in parse(unit.kept).body:
            if position in keep:
                kept.append(ast.get_source_segment(unit.kept, stmt, padded=True) or ast.unparse(stmt))
            else:
                unit.dropped += 1
            position += 1
        unit.kept = "\n".join(kept)


def extract(units: list[CodeUnit], local_modules: frozenset[str] = frozenset()) -> ExtractedCode:
    """Filter every unit; warn about unparsable units and classes defined more than once."""
    result = ExtractedCode(units=units)
    for unit in units:
        warning = filter_unit(unit, local_modules)
        if warning:
            result.warnings.append(warning)
    keep_what_the_model_needs(units)
    origins: dict[str, list[str]] = defaultdict(list)
    for unit in units:
        if unit.kept:
            for node in parse(unit.kept).body:
                if isinstance(node, ast.ClassDef):
                    origins[node.name].append(unit.origin)
    for name, where in origins.items():
        if len(where) > 1:
            result.warnings.append(
                f"class {name} is defined {len(where)} times ({', '.join(where)}); the last definition is "
                "used, as when the notebook runs from top to bottom"
            )
    return result
