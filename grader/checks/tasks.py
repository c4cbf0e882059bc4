"""task*: the written tasks, from the notebook's tagged answer cells; read as text, never executed.

課題1's shape table and 課題2's multiple choice are graded here; the diagram and the free text are
`manual` checks that carry the answer for a TA (see the TA sheet written by `vitgrade grade`).
"""

from __future__ import annotations

import ast
import re

from grader.checks.context import CheckFailed, GradingContext, Outcome
from grader.intake.code import parse
from grader.report import answer_picture_files
from grader.spec import DEFAULT, ViTConfig, shape_table

# The student notebook's placeholder text in each language; an answer that is only this is no answer.
PLACEHOLDERS = re.compile(r"\*\*[^*]*\*\*|（ここに[^）]*）|\((?:paste or draw your diagram|write) here\)")
MAX_ANSWER_CHARS = 20_000
MAX_LITERAL_CHARS = 10_000  # the structured answers are a few hundred characters


def _answer(ctx: GradingContext, tag: str) -> str:
    answer = ctx.submission.answers.get(tag)
    if answer is None:
        raise CheckFailed(f"no answer cell: the notebook has no cell tagged {tag!r} (answer in the handout's cell)")
    return answer


def _literal(ctx: GradingContext, tag: str, name: str):
    """The value assigned to `name` in the answer cell, as a Python literal (never run)."""
    source = _answer(ctx, tag)
    if len(source) > MAX_LITERAL_CHARS:
        raise CheckFailed(f"the {tag} cell is {len(source):,} characters long; the answer fits in "
                          f"{MAX_LITERAL_CHARS:,}")
    try:
        tree = parse(source)  # the intake's lock: ast.parse is not thread-safe in a batch
    except (SyntaxError, RecursionError, MemoryError) as exc:
        where = f" (line {exc.lineno}: {exc.msg})" if isinstance(exc, SyntaxError) else ""
        raise CheckFailed(f"the {tag} cell is not valid Python{where}") from None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            try:
                return ast.literal_eval(node.value)
            except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
                raise CheckFailed(f"{name} must be written with literals only (numbers, strings, tuples, "
                                  f"dicts)") from None
    raise CheckFailed(f"the {tag} cell does not assign {name}")


def _normalise(shape) -> tuple[str, ...] | None:
    if not isinstance(shape, (tuple, list)):
        return None
    return tuple(str(part).strip().upper() if isinstance(part, str) else str(part) for part in shape)


def check_task1_shapes(ctx: GradingContext) -> Outcome:
    answer = _literal(ctx, "task1-shapes", "task1_shapes")
    if not isinstance(answer, dict):
        raise CheckFailed("task1_shapes must be a dict with the keys 'default' and 'second'")
    configs = {"default": DEFAULT, "second": ViTConfig(**ctx.rubric.tasks.get("task1_second", {}))}
    wrong, missing, total = [], [], 0
    for name, config in configs.items():
        given = answer.get(name)
        for stage, expected in shape_table(config).items():
            total += 1
            value = given.get(stage, ...) if isinstance(given, dict) else ...
            if value is ...:
                missing.append(f"{name}.{stage}")
            elif _normalise(value) != expected:
                wrong.append(f"{name}.{stage}")
    if missing and len(missing) == total:
        return Outcome.failed("not answered yet: every shape in task1_shapes is still ...")
    if missing or wrong:
        parts = ([f"not answered: {', '.join(missing)}"] if missing else []) + (
            [f"wrong: {', '.join(wrong)}"] if wrong else [])
        return Outcome.failed(f"{total - len(missing) - len(wrong)} of {total} shapes right; {'; '.join(parts)}",
                              wrong=wrong, missing=missing)
    return Outcome.passed(f"all {total} shapes right (default and second configuration)")


def check_task2_choice(ctx: GradingContext) -> Outcome:
    key = ctx.rubric.tasks.get("task2_key")
    if not key:
        return Outcome.skipped("the answer key stays with the instructor (this rubric has no [tasks] task2_key)")
    answer = _literal(ctx, "task2-choice", "task2_choice")
    if not isinstance(answer, dict):
        raise CheckFailed("task2_choice must be a dict")
    if all(answer.get(q, ...) is ... for q in key):
        return Outcome.failed("not answered yet: task2_choice still has ...")
    wrong = [q for q, right in key.items() if str(answer.get(q, "")).strip() not in (right, right.lower())]
    if wrong:
        return Outcome.failed(f"{len(key) - len(wrong)} of {len(key)} right; wrong or missing: {', '.join(wrong)}",
                              wrong=wrong)
    return Outcome.passed(f"all {len(key)} answers right")


def _manual(ctx: GradingContext, tag: str, what: str) -> Outcome:
    answer = _answer(ctx, tag).strip()
    if not PLACEHOLDERS.sub("", answer).strip():
        return Outcome.failed(f"not answered yet: the {what} cell still holds the placeholder")
    pictures = list(answer_picture_files(tag, ctx.submission.answer_pictures.get(tag, [])))
    shown = f", {len(pictures)} picture{'s' if len(pictures) != 1 else ''}" if pictures else ""
    return Outcome("manual", f"{what}: awaiting a TA ({len(answer)} characters{shown}); a person grades it after "
                             "you submit",
                   {"answer": answer[:MAX_ANSWER_CHARS], "truncated": len(answer) > MAX_ANSWER_CHARS,
                    "pictures": pictures})


def check_task1_diagram(ctx: GradingContext) -> Outcome:
    return _manual(ctx, "task1-diagram", "課題1 diagram")


def check_task2_explanation(ctx: GradingContext) -> Outcome:
    return _manual(ctx, "task2-explanation", "課題2 explanation")


def check_task3_answer(ctx: GradingContext) -> Outcome:
    return _manual(ctx, "task3-answer", "課題3 answer")
