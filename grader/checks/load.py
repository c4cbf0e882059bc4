"""load.*: the code was found and parsed, and the required classes are defined and executable."""

from __future__ import annotations

from grader.checks.context import GradingContext, Outcome
from grader.intake import REQUIRED_CLASSES


def check_code(ctx: GradingContext) -> Outcome:
    units = ctx.submission.units
    unparsed = [u.origin for u in units if not u.parsed]
    details = {"code_units": len(units), "unparsed_units": unparsed, "files": ctx.submission.files}
    if unparsed and len(unparsed) == len(units):
        return Outcome.failed("no code cell parses as Python", **details)
    message = f"{len(units)} code units read"
    if unparsed:
        message += f"; {len(unparsed)} skipped because they do not parse: {', '.join(unparsed)}"
    return Outcome.passed(message, **details)


def check_definitions(ctx: GradingContext) -> Outcome:
    load_error = ctx.notes.get("load_error")
    if load_error:
        return Outcome.failed(f"running the definitions raised {load_error}",
                              traceback=ctx.notes.get("load_traceback", ""))
    missing = [name for name in REQUIRED_CLASSES if name not in ctx.classes]
    if missing:
        return Outcome.failed(f"missing class{'es' if len(missing) > 1 else ''}: {', '.join(missing)} "
                              "(the names must be exactly as in the handout)", missing=missing, defined=ctx.classes)
    return Outcome.passed(f"{', '.join(REQUIRED_CLASSES)} defined", defined=ctx.classes)
