"""The batch output layout (DESIGN.md) and the one writer of every file a student has in it."""

from __future__ import annotations

from pathlib import Path

from grader.intake.naming import safe_id
from grader.render.gradescope import render_gradescope
from grader.render.html import render_html
from grader.render.markdown import render_markdown
from grader.render.safe import clean_report
from grader.report import Report, write_atomic

GRADESCOPE_FILE = "results.json"
CODE_NAME = "code.txt"  # beside report.json: the code that ran, read by the class summary
RUBRIC_COPY = "rubric.toml"  # the rubric an output folder was graded with, kept beside the reports


def student_dir(out: Path, student: str) -> Path:
    return out / "students" / safe_id(student)


def write_student(out: Path, report: Report, gradescope: bool = False) -> None:
    """Write all of a student's outputs from `report`: pictures, report.md, report.html, results.json (with
    `gradescope`, or whenever the folder already has one, so that no step leaves it behind) and report.json
    last: its presence means the student is done. Every step that changes a report (grading, rescoring,
    merging TA scores) writes through here, so a student's files always agree."""
    folder = student_dir(out, report.student)
    clean_report(report)  # reports from a cluster executor come here without passing grade_submission
    for stale in folder.glob("*.png"):  # from an earlier grading of this student: not this report's
        if stale.name not in report.attachments:
            stale.unlink()
    for name, png in report.attachments.items():
        write_atomic(folder / name, png)
    write_atomic(folder / "report.md", render_markdown(report))
    write_atomic(folder / "report.html", render_html(report))
    if gradescope or (folder / GRADESCOPE_FILE).exists():
        write_atomic(folder / GRADESCOPE_FILE, render_gradescope(report, visibility=_visibility(out)))
    if report.code:
        write_atomic(folder / CODE_NAME, report.code)
    else:
        (folder / CODE_NAME).unlink(missing_ok=True)
    write_atomic(folder / "report.json", report.to_json())


def write_student_safely(out: Path, report: Report, gradescope: bool = False) -> str | None:
    """write_student, where a failure becomes that student's error report, never the batch's end;
    returns a note when even that report could not be written."""
    try:
        write_student(out, report, gradescope)
        return None
    except Exception as exc:  # whatever the submission made the writing do, the batch goes on
        problem = f"internal grader error: the report could not be written ({type(exc).__name__}: {exc})"
    try:
        write_student(out, Report.failure(report.student, report.submission, problem, fault="grader"), gradescope)
        return None
    except Exception as exc:  # the failure report itself: noted, the batch goes on
        return f"{report.student}: no report could be written ({type(exc).__name__}: {exc}); regrade this student"


def _visibility(out: Path) -> dict[str, str]:
    """The [visibility] of the rubric the folder was graded with: Gradescope shows each test accordingly."""
    from grader.rubric import load_rubric

    copy = out / RUBRIC_COPY
    return load_rubric(copy).visibility if copy.is_file() else {}
