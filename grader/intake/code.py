"""Keep what defines the model (imports, classes, functions, constants); drop what runs things."""

from __future__ import annotations

import ast
import gc
import re
import threading
from collections import defaultdict
from dataclasses import dataclass, field

from grader.intake.budget import MAX_CODE_CHARS, MAX_CODE_LINES, MAX_STATEMENTS, Deadline, IntakeError
from grader.spec import REQUIRED_CLASSES

# CPython 3.11's ast.parse is not thread-safe: the counter that guards the AST's depth is shared by all
# threads, and when another thread converts an AST while ours is half-way ("AST constructor recursion depth
# mismatch", python/cpython#106905) the parse raises SystemError. A batch intakes and checks submissions on
# several threads, and the standard library parses too (3.11's traceback formatting does). So our parses take
# a lock and run with the garbage collector off (a collection runs finalizers, Python code during which another
# thread can take the GIL), and a parse that still meets the race is repeated.
_PARSE_LOCK = threading.Lock()
_RACE = "recursion depth mismatch"


def parse(source: str) -> ast.Module:
    """ast.parse, atomic with respect to the other threads of this process."""
    for _ in range(2):
        try:
            return _parse_alone(source)
        except SystemError as error:
            if _RACE not in str(error):
                raise
    return _parse_alone(source)  # a third race in a row is raised


def _parse_alone(source: str) -> ast.Module:
    with _PARSE_LOCK:
        collecting = gc.isenabled()
        gc.disable()
        try:
            return ast.parse(source)
        finally:
            if collecting:
                gc.enable()


def parse_untrusted(source: str) -> ast.Module:
    """`parse` for student code: nesting too deep for the parser (MemoryError, RecursionError) is a
    SyntaxError like any other code that does not parse."""
    try:
        return parse(source)
    except (MemoryError, RecursionError):
        raise SyntaxError("too deeply nested to parse") from None

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
    # The kept statements and their source, parsed once (re-parsing per step made intake quadratic).
    statements: list[tuple[ast.stmt, str]] = field(default_factory=list, repr=False, compare=False)


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
        parse_untrusted(source)
        return source, None
    except SyntaxError:
        pass
    return _strip_magics(source)


def _strip_magics(source: str) -> tuple[str, str | None]:
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


def segments(source: str, body: list[ast.stmt]) -> list[str]:
    """The source text of each statement, in one pass over `source`.

    ast.get_source_segment splits the whole source into lines on every call, which made intake
    quadratic in the number of statements. Offsets are in UTF-8 bytes, as the parser reports them.
    """
    data = source.encode("utf-8", "surrogatepass")
    starts = [0]
    position = data.find(b"\n")
    while position != -1:
        starts.append(position + 1)
        position = data.find(b"\n", position + 1)
    out = []
    for stmt in body:
        decorators = getattr(stmt, "decorator_list", None)
        # A definition's position is its `def`/`class` line; its decorators (`@dataclass`) come first.
        begin = starts[decorators[0].lineno - 1] if decorators else starts[stmt.lineno - 1] + stmt.col_offset
        end = starts[stmt.end_lineno - 1] + stmt.end_col_offset
        out.append(data[begin:end].decode("utf-8", "surrogatepass"))
    return out


def filter_unit(unit: CodeUnit, local_modules: frozenset[str] = frozenset()) -> str | None:
    """Fill `unit.kept`; return a warning when the unit could not be used."""
    python = unit.source
    try:
        tree = parse_untrusted(python)
    except SyntaxError:
        python, dropped_magic = _strip_magics(unit.source)
        if dropped_magic:
            unit.dropped = 1
            return None
        try:
            tree = parse_untrusted(python)
        except SyntaxError as exc:
            unit.parsed = False
            where = f", line {exc.lineno}" if exc.lineno else ""
            return f"{unit.origin}: skipped, it does not parse ({exc.msg}{where})"
    unit.statements = []
    for stmt, text in zip(tree.body, segments(python, tree.body), strict=True):
        is_local_import = isinstance(stmt, ast.ImportFrom) and (stmt.module or "").split(".")[0] in local_modules
        if _keep(stmt) and not is_local_import:
            unit.statements.append((stmt, text))
        else:
            unit.dropped += 1
    unit.kept = "\n".join(text for _, text in unit.statements)
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
    so that load.definitions can say what is missing. One pass over a name -> statements index:
    linear in the size of the code.
    """
    statements = [stmt for unit in units for stmt, _ in unit.statements]
    if not any(isinstance(stmt, ast.ClassDef) and stmt.name in REQUIRED_CLASSES for stmt in statements):
        return
    binders: dict[str, list[int]] = defaultdict(list)
    keep: set[int] = set()
    needed: set[str] = set()
    pending: list[str] = []
    for index, stmt in enumerate(statements):
        if isinstance(stmt, ast.ImportFrom) and any(a.name == "*" for a in stmt.names):
            keep.add(index)  # a wildcard import may define anything
        for name in _bound_names(stmt):
            binders[name].append(index)

    def need(names) -> None:
        for name in names:
            if name not in needed:
                needed.add(name)
                pending.append(name)

    need(REQUIRED_CLASSES)
    while pending:
        for index in binders.get(pending.pop(), ()):
            if index not in keep:
                keep.add(index)
                need(_read_names(statements[index]))
    position = 0  # statements are numbered in the order they were listed above
    for unit in units:
        kept = []
        for stmt, text in unit.statements:
            if position in keep:
                kept.append((stmt, text))
            else:
                unit.dropped += 1
            position += 1
        unit.statements = kept
        unit.kept = "\n".join(text for _, text in kept)


def extract(units: list[CodeUnit], local_modules: frozenset[str] = frozenset(),
            deadline: Deadline | None = None) -> ExtractedCode:
    """Filter every unit; warn about unparsable units and classes defined more than once.

    Refuses code past MAX_CODE_CHARS, MAX_CODE_LINES (both before parsing) or MAX_STATEMENTS
    (IntakeError), so that the cost stays bounded.
    """
    size = sum(len(unit.source) for unit in units)
    if size > MAX_CODE_CHARS:
        raise IntakeError(f"the code is {size:,} characters long, over the limit of {MAX_CODE_CHARS:,}; "
                          "submit only the notebook of the assignment")
    lines = sum(unit.source.count("\n") + unit.source.count(";") + 1 for unit in units)
    if lines > MAX_CODE_LINES:
        raise IntakeError(f"the code has {lines:,} lines, over the limit of {MAX_CODE_LINES:,}; "
                          "submit only the notebook of the assignment")
    result = ExtractedCode(units=units)
    statements = 0
    for unit in units:
        if deadline:
            deadline.check(unit.origin)
        warning = filter_unit(unit, local_modules)
        if warning:
            result.warnings.append(warning)
        statements += len(unit.statements) + unit.dropped
        if statements > MAX_STATEMENTS:
            raise IntakeError(f"the code has more than {MAX_STATEMENTS:,} top-level statements (at {unit.origin}); "
                              "a ViT notebook has about a hundred")
    keep_what_the_model_needs(units)
    origins: dict[str, list[str]] = defaultdict(list)
    for unit in units:
        for node, _ in unit.statements:
            if isinstance(node, ast.ClassDef):
                origins[node.name].append(unit.origin)
    for name, where in origins.items():
        if len(where) > 1:
            result.warnings.append(
                f"class {name} is defined {len(where)} times ({', '.join(where)}); the last definition is "
                "used, as when the notebook runs from top to bottom"
            )
    return result
