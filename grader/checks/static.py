"""static.forbidden: no forbidden module, API or dynamic code in the submission's source (the parent's verdict).

The verdict rests on the source alone, read in the parent. A run-time count of forbidden calls
would live in the student's process, where the student's code can find it and switch it off, so
there is none. Instead every name is resolved fully: import aliases, `torch.nn.modules.x.Y` paths
(matched by identity with the rubric's APIs in the parent's own torch), `getattr(m, "Y")`, and
star imports; and, by default, code that could reach an API without naming it (`exec`, computed
`getattr`, `vars(nn)[...]`, `torch.ops`, `torch._C`, `gc`, `sys.modules`, ...) is itself forbidden.
A plain string such as 'TransformerEncoderLayer' is data, never a finding.
"""

from __future__ import annotations

import ast
import fnmatch
import inspect
import sys
import types
from dataclasses import dataclass

from grader.checks.context import GradingContext, Outcome
from grader.intake import Submission
from grader.intake.code import parse
from grader.rubric import Rubric

# Built-ins that run or look up code by a computed name (forbidden while the rubric's
# `forbidden.dynamic_code` is true).
DYNAMIC_BUILTINS = ("exec", "eval", "compile", "__import__", "globals", "locals", "vars", "breakpoint")
# Attributes that reach objects by introspection rather than by name: class trees, module and
# function globals, frames.
INTROSPECTION_ATTRIBUTES = frozenset({
    "__dict__", "__subclasses__", "__globals__", "__builtins__", "__getattribute__", "__getattr__", "__import__",
    "__loader__", "__spec__", "__code__", "__closure__", "__mro__", "__bases__", "__base__", "__self__", "__func__",
    "__wrapped__", "__reduce__", "__reduce_ex__", "__traceback__", "tb_frame", "f_globals", "f_locals",
    "f_builtins", "f_back", "gi_frame", "cr_frame", "ag_frame",
})
INTROSPECTION_NAMES = frozenset({"__builtins__", "__loader__", "__spec__"})
# Roots whose private names (`torch._C`, `torch._native_multi_head_attention`, `F._in_projection`)
# are internals that compute what the public APIs compute.
PRIVATE_ROOTS = ("torch",)


@dataclass(frozen=True)
class Finding:
    what: str
    line: int


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


def _lookup(path: str) -> object | None:
    """The object a dotted path names in the parent's own (already imported) modules, or None.

    `inspect.getattr_static` reads attributes without running module `__getattr__` hooks or
    descriptors, and nothing is imported: resolving a name never executes anything.
    """
    root, *rest = path.split(".")
    obj = sys.modules.get(root)
    for part in rest:
        if obj is None:
            return None
        try:
            obj = inspect.getattr_static(obj, part)
        except AttributeError:
            return None
    return obj


def _canonical(obj: object) -> str | None:
    """The name an object was defined under (`torch.nn.modules.pooling.MaxPool2d`), for the rubric's patterns."""
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    module, name = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    return f"{module}.{name}" if isinstance(module, str) and isinstance(name, str) else None


class Policy:
    """The rubric's [forbidden] table, with each API resolved to the object it names."""

    def __init__(self, modules: list[str], apis: list[str], dynamic_code: bool):
        import torch  # noqa: F401 - the APIs are resolved in the parent's torch

        self.modules, self.apis, self.dynamic_code = modules, apis, dynamic_code
        self.by_identity: dict[int, str] = {}
        self._keep: list[object] = []  # keeps the resolved objects (and so their ids) alive
        for api in apis:
            obj = None if "*" in api else _lookup(api)
            if obj is not None and (callable(obj) or isinstance(obj, (types.ModuleType, dict))):
                self.by_identity.setdefault(id(obj), api)
                self._keep.append(obj)
        # Distinctive layer and function names (`MultiheadAttention`, `scaled_dot_product_attention`; not a
        # plain word such as `attention`), also flagged on an object the scan cannot resolve.
        self.leaves = {leaf: api for api in apis if "*" not in api and api.startswith("torch.nn.")
                       and ((leaf := api.rsplit(".", 1)[-1]) != leaf.lower() or "_" in leaf)}

    def module(self, name: str) -> str | None:
        return next((m for m in self.modules if name == m or name.startswith(f"{m}.")), None)

    def api(self, path: str) -> str | None:
        """The rubric entry a fully resolved dotted path falls under, or None."""
        for api in self.apis:
            if "*" in api and fnmatch.fnmatchcase(path, api):
                return api
            if path == api or path.startswith(f"{api}."):
                return api
        parts = path.split(".")
        if self.dynamic_code and parts[0] in PRIVATE_ROOTS:
            private = next((p for p in parts[1:] if p.startswith("_") and not _is_dunder(p)), None)
            if private:
                return "a private torch internal"
        # The same object under another path: torch.nn.modules.activation.MultiheadAttention.
        obj = sys.modules.get(parts[0])
        for part in parts[1:]:
            if obj is None:
                break
            try:
                obj = inspect.getattr_static(obj, part)
            except AttributeError:
                obj = None
                break
            if id(obj) in self.by_identity:
                return self.by_identity[id(obj)]
        canonical = _canonical(obj) if obj is not None and len(parts) > 1 else None
        if canonical and canonical != path:
            return next((api for api in self.apis if "*" in api and fnmatch.fnmatchcase(canonical, api)), None)
        return None


class _Scanner:
    def __init__(self, tree: ast.Module, policy: Policy):
        self.tree, self.policy = tree, policy
        self.aliases: dict[str, str] = {}
        self.star_modules: list[str] = []
        self.findings: list[Finding] = []
        self.import_roots: set[str] = set()
        # Names the submission binds itself (a function called `compile` is not the builtin).
        self.defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                           ast.ClassDef))}

    def add(self, what: str, node: ast.AST) -> None:
        self.findings.append(Finding(what, getattr(node, "lineno", 0)))

    # -- names ----------------------------------------------------------------------------
    def resolve(self, node: ast.AST) -> str:
        """`nn.functional.x` -> `torch.nn.functional.x`, following imports, aliases and getattr(m, "x")."""
        if isinstance(node, ast.Name):
            if node.id in self.aliases:
                return self.aliases[node.id]
            if node.id in self.defined:  # the submission's own TransformerEncoderLayer shadows a star import
                return node.id
            for module in self.star_modules:
                if _lookup(f"{module}.{node.id}") is not None:
                    return f"{module}.{node.id}"
            return node.id
        if isinstance(node, ast.Attribute):
            base = self.resolve(node.value)
            return f"{base}.{node.attr}" if base else ""
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)):
            base = self.resolve(node.args[0])
            return f"{base}.{node.args[1].value}" if base else ""
        return ""

    def collect_imports(self) -> None:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if self.policy.module(alias.name) or self.policy.api(alias.name):
                        self.add(f"import {alias.name}", node)
                    if alias.asname:
                        self.aliases[alias.asname] = alias.name
                    else:
                        root = alias.name.split(".")[0]
                        self.aliases[root] = root
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if self.policy.module(node.module):
                    self.add(f"from {node.module} import ...", node)
                for alias in node.names:
                    if alias.name == "*":
                        self.star_modules.append(node.module)
                        continue
                    full = f"{node.module}.{alias.name}"
                    self.aliases[alias.asname or alias.name] = full
                    found = self.policy.module(full) or self.policy.api(full)
                    if found:
                        self.add(f"from {node.module} import {alias.name} ({found})", node)
        self.import_roots = {value.split(".")[0] for value in self.aliases.values()} | {
            module.split(".")[0] for module in self.star_modules}
        # `m = torch.nn` makes m an alias too (assignments of a resolvable dotted name).
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                    and isinstance(node.value, (ast.Name, ast.Attribute)):
                value = self.resolve(node.value)
                if value and value.split(".")[0] in self.import_roots and value != node.targets[0].id:
                    self.aliases.setdefault(node.targets[0].id, value)

    # -- uses -----------------------------------------------------------------------------
    def check_path(self, path: str, node: ast.AST) -> bool:
        api = self.policy.api(path)
        if api:
            self.add(path if api == path or "*" in api else f"{path} ({api})", node)
            return True
        module = self.policy.module(path)
        if module and path.split(".")[0] in self.import_roots:
            self.add(f"{path} (module {module})", node)
            return True
        return False

    def scan(self) -> list[Finding]:
        self.collect_imports()
        dynamic = self.policy.dynamic_code
        getattr_calls = {id(n.func) for n in ast.walk(self.tree) if isinstance(n, ast.Call)
                         and isinstance(n.func, ast.Name) and n.func.id == "getattr"}
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Attribute):
                if dynamic and node.attr in INTROSPECTION_ATTRIBUTES:
                    self.add(f"dynamic code: .{node.attr} (introspection that can reach any API)", node)
                    continue
                if isinstance(node.ctx, ast.Load) and not self._inner_attribute(node):
                    path = self.resolve(node)
                    if path and self.check_path(path, node):
                        continue
                    self._check_leaf(node.value, node.attr, node)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                if dynamic and node.id in DYNAMIC_BUILTINS and node.id not in self.defined:
                    self.add(f"dynamic code: {node.id}() (runs or looks up code by a computed name)", node)
                elif dynamic and node.id in INTROSPECTION_NAMES:
                    self.add(f"dynamic code: {node.id}", node)
                elif dynamic and node.id == "getattr" and id(node) not in getattr_calls:
                    self.add("dynamic code: getattr passed as a value (a lookup by computed name)", node)
                elif node.id in self.aliases and self.aliases[node.id] != node.id:
                    self.check_path(self.aliases[node.id], node)
                elif self.star_modules:
                    path = self.resolve(node)
                    if path != node.id:
                        self.check_path(path, node)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr":
                self._check_getattr(node, dynamic)
            if dynamic and isinstance(node, ast.Call):
                self._check_unpickling(node)
        unique = {(f.what, f.line): f for f in self.findings}
        return sorted(unique.values(), key=lambda f: (f.line, f.what))

    def _inner_attribute(self, node: ast.Attribute) -> bool:
        """Only the outermost attribute of a chain is checked (`torch.nn.X.forward` once, as a whole)."""
        return any(isinstance(parent, ast.Attribute) and parent.value is node for parent in self._parents(node))

    def _parents(self, node: ast.AST) -> list[ast.AST]:
        if not hasattr(self, "_parent_map"):
            self._parent_map = {id(child): parent for parent in ast.walk(self.tree)
                                for child in ast.iter_child_nodes(parent)}
        parent = self._parent_map.get(id(node))
        return [parent] if parent is not None else []

    def _check_leaf(self, base: ast.AST, attr: str, node: ast.AST) -> None:
        """`m.MultiheadAttention` where `m` is not a known import (a parameter, a loop variable...)."""
        api = self.policy.leaves.get(attr)
        if api is None or (isinstance(base, ast.Name) and base.id == "self"):
            return
        if self.resolve(base).split(".")[0] in self.import_roots:  # resolved, and not a forbidden path
            return
        import torch

        if hasattr(torch.nn.Module, attr) or hasattr(torch.Tensor, attr):  # `model.modules()` is not sys.modules
            return
        self.add(f"{ast.unparse(base)}.{attr} (looks like {api})", node)

    def _check_unpickling(self, node: ast.Call) -> None:
        """`torch.load(..., weights_only=False)` and `np.load(..., allow_pickle=True)` run pickled code, which can
        name any API."""
        for keyword in node.keywords:
            safe = {"weights_only": True, "allow_pickle": False}.get(keyword.arg or "")
            if safe is not None and not (isinstance(keyword.value, ast.Constant) and keyword.value.value is safe):
                self.add(f"dynamic code: {keyword.arg}={ast.unparse(keyword.value)} (unpickling runs code)", node)

    def _check_getattr(self, node: ast.Call, dynamic: bool) -> None:
        if len(node.args) < 2:
            return
        name = node.args[1]
        if isinstance(name, ast.Constant) and isinstance(name.value, str):
            path = self.resolve(node)
            if not (path and self.check_path(path, node)):
                self._check_leaf(node.args[0], name.value, node)
        elif dynamic and not (isinstance(node.args[0], ast.Name) and node.args[0].id == "self"):
            self.add(f"dynamic code: getattr({ast.unparse(node.args[0])}, <computed name>)", node)


def find_forbidden(code: str, modules: list[str], apis: list[str], dynamic_code: bool = True) -> list[Finding]:
    """Imports of forbidden modules, uses of forbidden APIs under any alias or path, and dynamic code."""
    return _Scanner(parse(code), Policy(modules, apis, dynamic_code)).scan()


def locate(submission: Submission, line: int) -> str:
    """'model.py, line 66': where a line of the graded code came from. Intake writes a header per unit and
    keeps only some statements, so the line is looked up in the unit's own source."""
    code = submission.code.splitlines()
    origin, start = "the code", 0
    for number, text in enumerate(code[:line], start=1):
        if text.startswith("# --- ") and text.endswith(" ---"):
            origin, start = text[6:-4], number
    relative = line - start
    unit = next((u for u in submission.units if u.origin == origin), None)
    if unit is not None and 0 < line <= len(code):
        source = unit.source.splitlines()
        relative = next((i for i, text in enumerate(source, start=1) if text == code[line - 1]), relative)
    return f"{origin}, line {relative}"


def findings_for(code: str, rubric: Rubric) -> list[Finding]:
    return find_forbidden(code, rubric.forbidden_modules, rubric.forbidden_apis, rubric.forbidden_dynamic_code)


def check_forbidden(ctx: GradingContext) -> Outcome:
    rubric = ctx.rubric
    findings = findings_for(ctx.submission.code, rubric)
    details = {"static": [f"{locate(ctx.submission, f.line)}: {f.what}" for f in findings],
               "modules": rubric.forbidden_modules, "apis": rubric.forbidden_apis,
               "dynamic_code_forbidden": rubric.forbidden_dynamic_code}
    if findings:
        parts = [f"{f.what} ({locate(ctx.submission, f.line)})" for f in findings[:6]]
        more = f"; and {len(findings) - 6} more" if len(findings) > 6 else ""
        return Outcome.failed("forbidden: " + "; ".join(parts) + more + " — the assignment asks for attention written "
                              "by hand, without convolution or pooling layers, and without dynamic code that can "
                              "hide an API (the rubric's [forbidden] table)", **details)
    return Outcome.passed("no forbidden module, API or dynamic code used", **details)
