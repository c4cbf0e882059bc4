"""A readable terminal table of a report: check, status, points, message."""

from __future__ import annotations

import shutil
import textwrap
import unicodedata

from grader.report import Report

SYMBOLS = {"passed": "PASS", "failed": "FAIL", "error": "ERROR", "skipped": "SKIP", "manual": "MANUAL"}


def _padding(text: str, width: int) -> str:
    """The spaces that fill `text` to `width` terminal columns: CJK characters take two (Japanese labels line up)."""
    return " " * max(0, width - sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text))


def points_text(points: float | None, max_points: float) -> str:
    return f"{'-' if points is None else f'{points:g}'}/{max_points:g}"


def render_table(report: Report, width: int | None = None, lang: str = "en",
                 outline: list[str] | None = None) -> str:
    """The table; in `lang`'s labels (see render.student), with `outline` in place of the score line."""
    from grader.render.student import text

    words = text(lang)
    labels = {status: words.get(status, symbol) for status, symbol in SYMBOLS.items()}
    width = width or min(shutil.get_terminal_size((120, 20)).columns, 160)
    lines = [f"vitgrade report for {report.student} ({report.submission})"]
    if report.status != "graded":
        lines.append(f"status: {report.status.upper()}: {report.error}")
        return "\n".join(lines)
    id_width = max((len(c.id) for c in report.checks), default=10) + 2
    message_width = max(30, width - id_width - 8 - 10)
    heading = [words["check"], words["status"], words["points"]]
    lines.append(f"{heading[0]}{_padding(heading[0], id_width)}{heading[1]}{_padding(heading[1], 8)}"
                 f"{_padding(heading[2], 8)}{heading[2]}  {words['message']}")
    lines.append("-" * min(width, id_width + 18 + message_width))
    for check in report.checks:
        message = textwrap.wrap(check.message, message_width) or [""]
        label = labels[check.status]
        lines.append(f"{check.id:<{id_width}}{label}{_padding(label, 8)}{points_text(check.points, check.max_points):>8}"
                     f"  {message[0]}")
        lines += [" " * (id_width + 18) + more for more in message[1:]]
    lines.append("-" * min(width, id_width + 18 + message_width))
    counts = {s: sum(c.status == s for c in report.checks) for s in SYMBOLS}
    summary = ", ".join(f"{n} {labels[s]}" for s, n in counts.items() if n)
    if outline:
        lines += [*outline, f"({summary})"]
    else:
        lines.append(f"score {report.score:g} / {report.max_score:g}   ({summary})")
    for warning in report.warnings:
        lines.append(f"warning: {warning}")
    isolation = report.sandbox.get("isolation")
    if isolation and isolation != "bwrap":
        lines.append(f"note: sandbox isolation '{isolation}' (bubblewrap not available)")
    return "\n".join(lines)
