"""Canvas: fill one assignment's column of a gradebook CSV exported from Canvas (Grades > Export).

Canvas's export has a header row (Student, ID, SIS User ID, SIS Login ID, [Integration ID,] Section,
then one column per assignment named "Name (assignment id)", then read-only totals), a
"Points Possible" row, sometimes a posting-policy row, then one row per student. Canvas imports
the same file back and applies the changed cells. Only the chosen assignment's cells of graded
students change; every other byte stays as exported (see csvtable).
"""

from __future__ import annotations

import re
from pathlib import Path

from grader.intake.naming import safe_id
from grader.lms.common import ExportError, ExportResult, format_points, graded_reports, why_not_exported
from grader.report import Report, write_atomic
from grader.tables.csvtable import CsvFormatError, read_table

# The columns that identify a student, in the order they are tried against the report's student id:
# the Canvas user id (what Canvas's submission download puts in file names), then the SIS ids.
ID_COLUMNS = ("ID", "SIS User ID", "SIS Login ID", "Integration ID")
POINTS_POSSIBLE = "Points Possible"


def assignment_column(header: list[str], assignment: str, source: str) -> int:
    """The index of the assignment's column: by its name ("ViT" matches "ViT (12345)"), its full header,
    or its Canvas id."""
    wanted = assignment.strip()
    named = re.compile(rf"^{re.escape(wanted)} \(\d+\)$")
    by_id = re.compile(rf"^.* \({re.escape(wanted)}\)$") if wanted.isdigit() else None
    matches = [i for i, name in enumerate(header)
               if name.strip() == wanted or named.match(name.strip()) or (by_id and by_id.match(name.strip()))]
    assignments = [name for name in header if re.search(r" \(\d+\)$", name)]
    if not matches:
        raise ExportError(f"{source}: no assignment column {assignment!r}; its assignments are: "
                          f"{', '.join(assignments) or 'none'}")
    if len(matches) > 1:
        raise ExportError(f"{source}: {assignment!r} names {len(matches)} columns "
                          f"({', '.join(header[i] for i in matches)}); give the full column name")
    return matches[0]


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def export_canvas(graded: Path, gradebook: Path, assignment: str, dest: Path, *, scale: bool = False,
                  allow_pending: bool = False) -> ExportResult:
    """Write `dest`: Canvas's `gradebook` export with `assignment`'s column filled from `graded`'s reports."""
    reports = graded_reports(graded)
    try:
        table = read_table(gradebook)
    except CsvFormatError as exc:
        raise ExportError(str(exc)) from None
    header = table.header
    if "Student" not in header or "ID" not in header:
        raise ExportError(f"{gradebook}: not a Canvas gradebook export (its first row needs Student and ID columns)")
    column = assignment_column(header, assignment, str(gradebook))
    id_columns = [header.index(name) for name in ID_COLUMNS if name in header]
    student_col, canvas_id_col = header.index("Student"), header.index("ID")
    result = ExportResult()
    points_possible = None
    for record in table.records[1:]:
        if record.value(student_col).strip() == POINTS_POSSIBLE:
            points_possible = _number(record.value(column))
    used: dict[str, str] = {}
    for number, record in enumerate(table.records[1:], start=2):
        if not record.value(canvas_id_col).strip():
            continue  # Points Possible, posting policy and other rows that are not students
        label = f"{record.value(student_col)} (ID {record.value(canvas_id_col)})"
        report = _report_for(record.values, id_columns, reports)
        if report is None:
            result.untouched.append(f"{label}: no report (did not submit, or not graded under any of its ids)")
            continue
        if report.student in used:
            raise ExportError(f"{gradebook} line {number}: {label} and {used[report.student]} both match "
                              f"the report of {report.student}")
        used[report.student] = label
        reason = why_not_exported(report, allow_pending)
        if reason:
            result.untouched.append(f"{label}: {reason}")
            continue
        if len(record.raw) <= column:
            raise ExportError(f"{gradebook} line {number}: the row has {len(record.raw)} cells, fewer than the header")
        value = _score(report, points_possible, scale)
        record.set(column, value)
        result.filled[label] = value
    result.unmatched = [f"{sid}: {r.status}" for sid, r in sorted(reports.items()) if sid not in used]
    if points_possible is not None and not scale:
        differ = {r.max_score for r in reports.values() if r.status == "graded" and r.max_score != points_possible}
        if differ:
            result.notes.append(f"note: Canvas's {header[column]!r} is worth {points_possible:g} points, the reports "
                                f"{', '.join(f'{m:g}' for m in sorted(differ))}; the scores are written as they are "
                                "(pass --scale to convert them to Canvas's points)")
    write_atomic(dest, table.data())
    result.written.append(dest)
    return result


def _report_for(values: list[str], id_columns: list[int], reports: dict[str, Report]) -> Report | None:
    for index in id_columns:
        cell = values[index].strip() if index < len(values) else ""
        if cell and safe_id(cell) in reports:
            return reports[safe_id(cell)]
    return None


def _score(report: Report, points_possible: float | None, scale: bool) -> str:
    score = report.final_score
    if scale:
        if not points_possible or not report.max_score:
            raise ExportError("--scale needs the Canvas file's Points Possible for the assignment and a report "
                              "with a maximum score")
        score = score * points_possible / report.max_score
    return format_points(score)
