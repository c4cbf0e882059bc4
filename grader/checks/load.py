"""load.*: the code was found and parsed, and the required classes are defined and executable."""

from __future__ import annotations

from grader.checks.context import CheckFailed, GradingContext, Outcome
from grader.intake import REQUIRED_CLASSES
from grader.spec import DEFAULT, component_args, random_input


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
    load_error = ctx.worker.load_error
    if load_error:
        return Outcome.failed(f"running the definitions raised {load_error}", traceback=ctx.worker.load_traceback)
    missing = [name for name in REQUIRED_CLASSES if name not in ctx.classes]
    if missing:
        return Outcome.failed(f"missing class{'es' if len(missing) > 1 else ''}: {', '.join(missing)} "
                              "(the names must be exactly as in the handout)", missing=missing, defined=ctx.classes)
    return Outcome.passed(f"{', '.join(REQUIRED_CLASSES)} defined", defined=ctx.classes)


def check_interface(ctx: GradingContext) -> Outcome:
    """The constructors take the handout's keywords and attn_weights has the handout's layout.

    Other checks grade the math through an unambiguous deviation (a synonym keyword, transposed
    attention weights); this check alone is what the deviation costs."""
    problems = []
    for name, keywords in (("ViT", list(DEFAULT.kwargs())),):
        if name not in ctx.classes:
            continue
        interface = ctx.interface(name)
        for keyword in keywords:
            if keyword in interface.keywords or interface.variadic:
                continue
            renamed = interface.renames.get(keyword)
            problems.append(f"{name}.__init__ has no keyword {keyword}" + (f"; it has {renamed}" if renamed else ""))
    if "SelfAttention" in ctx.classes:
        kind = "SelfAttention"
        built = ctx.shared(kind, component_args(kind, DEFAULT))
        x = random_input(kind, DEFAULT, batch=2)
        try:
            weights = ctx.forward(built, x, "SelfAttention forward", attrs=["attn_weights"]).arrays.get("attr:attn_weights")
        except CheckFailed:
            weights = None  # the shapes and equiv checks report a forward that raises
        heads, n = DEFAULT.num_heads, x.shape[1]
        if weights is not None and weights.shape == (heads, 2, n, n):
            problems.append(f"SelfAttention stores attn_weights as (heads, B, N, N) {weights.shape}; the handout's "
                            f"layout is (B, heads, N, N) {(2, heads, n, n)}")
    if problems:
        return Outcome.failed("; ".join(problems) + " (the other checks grade your code through this difference)",
                              problems=problems)
    return Outcome.passed("constructor keywords and the attn_weights layout are the handout's")
