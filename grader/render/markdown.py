"""report.md: the report as Markdown, for LMS comments and plain-text reading.

Everything a submission wrote (messages, warnings, answers, output, even its file name) is shown
as text: HTML is escaped, links and pictures cannot be formed, and verbatim blocks use a fence
longer than any run of backticks inside them, so no student text can end its block.
"""

from __future__ import annotations

import re

from grader.report import Report

_SPECIAL = re.compile(r"[&<>\[\]\\`|]")
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def escape(text: str) -> str:
    """Inline text that Markdown shows as written: no HTML, links, pictures, code spans or table cells."""
    return _SPECIAL.sub(lambda m: _ESCAPES.get(m.group(0), "\\" + m.group(0)), text)


def _cell(text: str) -> str:
    return escape(text).replace("\r", " ").replace("\n", " ")


def fenced(text: str) -> list[str]:
    """`text` as a fenced block its content cannot close (CommonMark: a closing fence is at least as long)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence, text, fence]


def render_markdown(report: Report) -> str:
    lines = [f"# vitgrade report: {escape(report.student)}", "", f"- submission: {_cell(report.submission)}",
             f"- status: **{report.status}**"]
    if report.status != "graded":
        lines += [f"- problem: {_cell(report.error)}", ""]
        return "\n".join(lines)
    lines += [f"- score: **{report.score:g} / {report.max_score:g}**",
              *([f"- late: {escape(str(report.late.get('reason', '')))}: raw {report.score:g}, penalty {report.penalty:g}, "
                 f"final **{report.final_score:g} / {report.max_score:g}** (submitted {report.late.get('submitted_at')}, "
                 f"due {report.late.get('deadline')})"] if report.late else []),
              f"- sandbox: {escape(str(report.sandbox.get('isolation', '?')))}", "",
              "| check | status | points | message |", "|---|---|---|---|"]
    for c in report.checks:
        points = "–" if c.points is None else f"{c.points:g}"
        lines.append(f"| `{c.id}` | {c.status} | {points} / {c.max_points:g} | {_cell(c.message)} |")
    if report.warnings:
        lines += ["", "## Warnings", ""] + [f"- {_cell(w)}" for w in report.warnings]
    if report.answers:
        lines += ["", "## Written answers", ""]
        for tag, text in report.answers_to_show:
            lines += [f"### {escape(tag)}", "", *fenced(text), ""]
            lines += [f"![{name}]({name})" for name in report.answer_pictures(tag)]
    for name in report.model_pictures:
        lines += ["", f"![{name}]({name})"]
    if report.output:
        lines += ["", "## Output of your code while grading", "", *fenced(report.output[-20000:])]
    return "\n".join(lines) + "\n"
