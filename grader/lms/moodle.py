"""Moodle: fill an assignment's grading worksheet and build its feedback-files zip.

The worksheet is what "Download grading worksheet" gives (offline grading worksheet enabled):
Identifier ("Participant 123456"), Full name, Email address, Status, Grade, Maximum Grade, Grade can
be changed, Last modified (submission), Last modified (grade), Feedback comments... Moodle's
importer finds its columns by these names and the student by the number after "Participant ", the
same number its submission download puts in folder names ("Full Name_123456_assignsubmission_file_"),
which is the student id the grader took from them. Only the Grade and Feedback comments cells of
graded students change; every other byte stays as exported (see csvtable).

The zip is what "Upload multiple feedback files in a zip" accepts: one folder per participant named
like the submission download, holding report.html (Moodle reads the participant id from the part
of the folder name between the first and second underscore, so the name part has no underscore).
"""

from __future__ import annotations

import html
import re
from datetime import datetime
from pathlib import Path

from grader.lms.common import ExportError, ExportResult, check_rubric, format_points, graded_reports, why_not_exported
from grader.lms.release import student_view, zip_bytes
from grader.report import Report, write_atomic
from grader.rubric import Rubric
from grader.tables.csvtable import CsvFormatError, read_table
from grader.tables.moodle_worksheet import (
    CAN_CHANGE,
    FEEDBACK,
    FULL_NAME,
    GRADE,
    IDENTIFIER,
    MAXIMUM,
    MODIFIED_GRADE,
    participant_id,
)

FEEDBACK_ZIP = "feedback_files.zip"


def feedback_folder(full_name: str, participant: str) -> str:
    """The zip folder Moodle maps to `participant`: like the submission download's folder name."""
    name = re.sub(r"[_/\\\x00-\x1f]+", " ", full_name).strip() or "participant"
    return f"{name}_{participant}_assignsubmission_file_"


def feedback_comment(view: Report) -> str:
    """A short HTML comment for Moodle's feedback comments (the full report is in the feedback file)."""
    lines = [f"<p>vitgrade, checks shown: {format_points(view.final_score)} / {format_points(view.max_score)}"
             + (f" (late: -{format_points(view.penalty)}, {html.escape(view.late.get('reason', ''))})"
                if view.penalty else "") + "</p>"]
    problems = [c for c in view.checks if c.status in ("failed", "error")]
    if problems:
        lines.append("<ul>" + "".join(f"<li>{html.escape(c.title or c.id)}: {html.escape(c.message[:200])}</li>"
                                      for c in problems[:10]) + "</ul>")
    lines.append("<p>The full report is in the feedback files (report.html).</p>")
    return "".join(lines)


def export_moodle(graded: Path, worksheet: Path, dest: Path, rubric: Rubric, *, now: datetime | None = None,
                  scale: bool = False, allow_pending: bool = False, rubric_given: bool = True) -> ExportResult:
    """Write dest/<worksheet name> (grades and comments filled) and dest/feedback_files.zip; `rubric_given`:
    the rubric was named by the user (else a report graded with another rubric is an error, see check_rubric)."""
    reports = graded_reports(graded)
    rubric_notes = check_rubric(reports, rubric, rubric_given)
    try:
        table = read_table(worksheet)
    except CsvFormatError as exc:
        raise ExportError(str(exc)) from None
    header = table.header
    for name in (IDENTIFIER, GRADE, MODIFIED_GRADE):
        if name not in header:
            raise ExportError(f"{worksheet}: no {name!r} column; download the grading worksheet again with "
                              "'Offline grading worksheet' enabled in the assignment's feedback types")
    id_col, grade_col = header.index(IDENTIFIER), header.index(GRADE)
    name_col = header.index(FULL_NAME) if FULL_NAME in header else None
    max_col = next((header.index(m) for m in MAXIMUM if m in header), None)
    feedback_col = header.index(FEEDBACK) if FEEDBACK in header else None
    result = ExportResult(notes=rubric_notes)
    if feedback_col is None:
        result.notes.append(f"note: {worksheet.name} has no {FEEDBACK!r} column (feedback comments are off for this "
                            "assignment): only grades are filled; the feedback is in the zip")
    zip_entries: dict[str, bytes] = {}
    used: set[str] = set()
    other_maximum: set[float] = set()
    locked: list[str] = []
    can_change_col = header.index(CAN_CHANGE) if CAN_CHANGE in header else None
    for record in table.records[1:]:
        participant = participant_id(record.value(id_col))
        if participant is None:
            continue
        full_name = record.value(name_col) if name_col is not None else ""
        label = f"{full_name} ({record.value(id_col)})"
        report = reports.get(participant)
        if report is None:
            result.untouched.append(f"{label}: no report (did not submit)")
            continue
        used.add(participant)
        reason = why_not_exported(report, allow_pending)
        if reason:
            result.untouched.append(f"{label}: {reason}")
            continue
        view = student_view(report, rubric, now)
        maximum = _number(record.value(max_col)) if max_col is not None else None
        score = report.final_score  # the grade counts every check, shown or not (as Gradescope's hidden tests)
        if scale and maximum and report.max_score:
            score = score * maximum / report.max_score
        elif maximum is not None and maximum != report.max_score:
            other_maximum.add(maximum)
        if can_change_col is not None and record.value(can_change_col).strip().lower() == "no":
            locked.append(label)
        value = format_points(score)
        record.set(grade_col, value)
        if feedback_col is not None:
            record.set(feedback_col, feedback_comment(view))
        from grader.render.html import render_html

        zip_entries[f"{feedback_folder(full_name, participant)}/report.html"] = render_html(view).encode()
        result.filled[label] = value
    result.unmatched = [f"{sid}: {r.status}" for sid, r in sorted(reports.items()) if sid not in used]
    if other_maximum:
        result.notes.append(f"note: Moodle's maximum grade is {', '.join(f'{m:g}' for m in sorted(other_maximum))}, "
                            "not the reports' maximum score; the scores are written as they are (pass --scale to "
                            "convert them)")
    if locked:
        result.notes.append(f"warning: Moodle says the grade cannot be changed (locked or overridden in the "
                            f"gradebook) for {len(locked)} student(s), so it will ignore their row: {'; '.join(locked)}")
    sheet = dest / worksheet.name
    if sheet.resolve() == worksheet.resolve():
        raise ExportError(f"--out {dest} would overwrite the worksheet itself; choose another folder")
    write_atomic(sheet, table.data())
    write_atomic(dest / FEEDBACK_ZIP, zip_bytes(zip_entries))
    result.written += [sheet, dest / FEEDBACK_ZIP]
    return result


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", "."))
    except ValueError:
        return None
