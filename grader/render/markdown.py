"""report.md: the report as Markdown, for LMS comments and plain-text reading."""

from __future__ import annotations

from grader.report import Report


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Report) -> str:
    lines = [f"# vitgrade report: {report.student}", "", f"- submission: `{report.submission}`",
             f"- status: **{report.status}**"]
    if report.status != "graded":
        lines += [f"- problem: {report.error}", ""]
        return "\n".join(lines)
    lines += [f"- score: **{report.score:g} / {report.max_score:g}**",
              *([f"- late: {report.late.get('reason', '')}: raw {report.score:g}, penalty {report.penalty:g}, "
                 f"final **{report.final_score:g} / {report.max_score:g}** (submitted {report.late.get('submitted_at')}, "
                 f"due {report.late.get('deadline')})"] if report.late else []),
              f"- sandbox: {report.sandbox.get('isolation', '?')}", "",
              "| check | status | points | message |", "|---|---|---|---|"]
    for c in report.checks:
        points = "–" if c.points is None else f"{c.points:g}"
        lines.append(f"| `{c.id}` | {c.status} | {points} / {c.max_points:g} | {_cell(c.message)} |")
    if report.warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report.warnings]
    if report.answers:
        lines += ["", "## Written answers", ""]
        for tag, text in report.answers_to_show:
            lines += [f"### {tag}", "", text, ""] + [f"![{name}]({name})" for name in report.answer_pictures(tag)]
    for name in report.model_pictures:
        lines += ["", f"![{name}]({name})"]
    if report.output:
        lines += ["", "## Output of your code while grading", "", "```", report.output[-20000:], "```"]
    return "\n".join(lines) + "\n"
