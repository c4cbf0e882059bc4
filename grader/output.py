"""The batch output layout (DESIGN.md) and the one writer of every file a student has in it."""

from __future__ import annotations

from pathlib import Path

from grader.intake.naming import safe_id
from grader.render.gradescope import render_gradescope
from grader.render.html import render_html
from grader.render.markdown import render_markdown
from grader.report import Report, write_atomic

GRADESCOPE_FILE = "results.json"


def student_dir(out: Path, student: str) -> Path:
    return out / "students" / safe_id(student)


def write_student(out: Path, report: Report, gradescope: bool = False) -> None:
    """Write all of a student's outputs from `report`: pictures, report.md, report.html, results.json (with
    `gradescope`, or whenever the folder already has one, so that no step leaves it behind) and report.json
    last: its presence means the student is done. Every step that changes a report (grading, rescoring,
    merging TA scores) writes through here, so a student's files always agree."""
    folder = student_dir(out, report.student)
    for stale in folder.glob("*.png"):  # from an earlier grading of this student: not this report's
        if stale.name not in report.attachments:
            stale.unlink()
    for name, png in report.attachments.items():
        write_atomic(folder / name, png)
    write_atomic(folder / "report.md", render_markdown(report))
    write_atomic(folder / "report.html", render_html(report))
    if gradescope or (folder / GRADESCOPE_FILE).exists():
        write_atomic(folder / GRADESCOPE_FILE, render_gradescope(report))
    write_atomic(folder / "report.json", report.to_json())
