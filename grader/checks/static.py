"""static.forbidden: no forbidden module or API, found in the code (trusted) and at run time (best effort)."""

from __future__ import annotations

import ast
from dataclasses import dataclass

from grader.checks.context import GradingContext, Outcome
from grader.intake.code import parse


@dataclass(frozen=True)
class Finding:
    what: str
    line: int


def _resolve(node: ast.AST, aliases: dict[str, str]) -> str:
    """`nn.functional.x` -> `torch.nn.functional.x`, following the code's import aliases."""
    if isinstance(node, ast.Name):
        return aliases.get(node.id, node.id)
    if isinstance(node, ast.Attribute):
        base = _resolve(node.value, aliases)
        return f"{base}.{node.attr}" if base else ""
    return ""


def find_forbidden(code: str, modules: list[str], apis: list[str]) -> list[Finding]:
    """Imports of forbidden modules and uses of forbidden APIs under any alias."""
    tree = parse(code)
    aliases: dict[str, str] = {}
    findings: list[Finding] = []

    def forbidden_module(name: str) -> bool:
        return any(name == m or name.startswith(f"{m}.") for m in modules)

    def forbidden_api(name: str) -> str | None:
        return next((api for api in apis if name == api or name.startswith(f"{api}.")), None)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if forbidden_module(alias.name):
                    findings.append(Finding(f"import {alias.name}", node.lineno))
                aliases[(alias.asname or alias.name).split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.level == 0 and forbidden_module(node.module):
                findings.append(Finding(f"from {node.module} import ...", node.lineno))
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                aliases[alias.asname or alias.name] = full
                if forbidden_api(full) or forbidden_module(full):
                    findings.append(Finding(f"from {node.module} import {alias.name}", node.lineno))
    api_names = {api.rsplit(".", 1)[-1] for api in apis}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            api = forbidden_api(_resolve(node, aliases))
            if api:
                findings.append(Finding(api, node.lineno))
            elif node.attr in api_names and _resolve(node.value, aliases) not in ("self", ""):
                # `F.scaled_dot_product_attention` where F's import is not in the graded code
                findings.append(Finding(f"{_resolve(node.value, aliases)}.{node.attr}", node.lineno))
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            api = forbidden_api(aliases.get(node.id, ""))
            if api:
                findings.append(Finding(api, node.lineno))
        elif isinstance(node, ast.Constant) and node.value in api_names:
            findings.append(Finding(f"the string {node.value!r} (e.g. getattr)", node.lineno))
        elif isinstance(node, ast.Call) and _resolve(node.func, aliases) in ("__import__", "importlib.import_module"):
            findings.append(Finding("dynamic import (__import__ / importlib)", node.lineno))
    unique = {(f.what, f.line): f for f in findings}
    return sorted(unique.values(), key=lambda f: f.line)


def origin_of(code: str, line: int) -> str:
    """The cell or file a line of the graded code came from (intake writes a header per unit)."""
    origin = "the code"
    for text in code.splitlines()[:line]:
        if text.startswith("# --- ") and text.endswith(" ---"):
            origin = text[6:-4]
    return origin


def check_forbidden(ctx: GradingContext) -> Outcome:
    rubric = ctx.rubric
    findings = find_forbidden(ctx.submission.code, rubric.forbidden_modules, rubric.forbidden_apis)
    runtime = {label: n for label, n in ctx.sandbox.forbidden_calls.items() if n}
    details = {"static": [f"line {f.line}: {f.what}" for f in findings], "runtime_calls": runtime,
               "modules": rubric.forbidden_modules, "apis": rubric.forbidden_apis}
    if findings or runtime:
        parts = [f"{f.what} (in {origin_of(ctx.submission.code, f.line)})" for f in findings[:5]]
        parts += [f"{label} called {n} times while grading" for label, n in runtime.items()]
        return Outcome.failed("forbidden: " + "; ".join(parts) + " — implement attention yourself", **details)
    return Outcome.passed("no forbidden module or API used", **details)
