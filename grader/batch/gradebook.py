"""The gradebook (pandas) and the class summary page, rebuilt from the reports on disk."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from grader.batch.manual import write_ta_sheet
from grader.batch.output import CODE_NAME, student_dir, write_student
from grader.intake.naming import safe_id
from grader.report import Report, load_report, write_atomic
from grader.rubric import Rubric
from grader.tables.spreadsheet import read_text_csv, to_safe_csv

ROSTER_COLUMNS = ("student_id", "id", "student", "sid")


def read_roster(path: Path) -> list[str]:
    """The roster's student ids, as text (a student called `NA` or `null` is a student); ValueError when the
    file cannot be used, so `vitgrade grade` can refuse it before grading anyone."""
    if not path.is_file():
        raise ValueError(f"roster {path}: no such file")
    table = read_text_csv(path, "roster")
    column = next((c for c in table.columns if c.strip().lower() in ROSTER_COLUMNS), None)
    if column is None:
        raise ValueError(f"roster {path}: no column named one of {', '.join(ROSTER_COLUMNS)}")
    ids = [safe_id(v) for v in table[column] if v.strip()]
    if not ids:
        raise ValueError(f"roster {path}: the {column} column is empty")
    return ids


def load_reports(out: Path) -> tuple[list[Report], list[str]]:
    reports, problems = [], []
    for path in sorted((out / "students").glob("*/report.json")):
        try:
            reports.append(load_report(path))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            problems.append(f"{path}: unreadable report ({exc}); regrade that student")
    return reports, problems


def gradebook_frame(reports: list[Report], check_ids: list[str]) -> pd.DataFrame:
    rows = []
    for report in reports:
        status = "needs regrade" if report.needs_regrade else report.status  # a grader fault, no verdict
        row = {"student": report.student, "status": status, "score": report.score,
               "max_score": report.max_score, "penalty": report.penalty, "final_score": report.final_score,
               "submission": report.submission}
        for check in report.checks:
            row[check.id] = check.points if check.status != "skipped" else None
        rows.append(row)
    # score: the raw sum of the checks; penalty: the late policy's; final_score: what goes to the LMS.
    columns = ["student", "status", "score", "max_score", "penalty", "final_score", *check_ids, "submission"]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values("student", kind="stable").reset_index(drop=True)


@dataclass
class ClassState:
    """What the summary step found: every report, the roster students without a submission, notes."""

    reports: list[Report] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def write_summary(out: Path, entries: list, roster: Path | None, rubric: Rubric,
                  problems: list[str] | tuple = ()) -> ClassState:
    """Write missing reports for roster students, gradebook.csv, summary.html and the TA sheet.

    Built from the reports alone: no submission is read again (one that broke the intake once would
    break the summary on every run)."""
    reports, unreadable = load_reports(out)
    problems = [*problems, *unreadable]
    submitted = {r.student for r in reports if r.status != "missing"}
    missing = [sid for sid in dict.fromkeys(read_roster(roster)) if sid not in submitted] if roster else []
    have_missing = {r.student for r in reports if r.status == "missing"}
    for sid in missing:
        if sid in have_missing:  # from an earlier run: still missing
            continue
        report = Report.failure(sid, "", "no submission received", status="missing")
        write_student(out, report)
        reports.append(report)
    check_ids = list(rubric.points)
    frame = gradebook_frame(reports, check_ids)
    write_atomic(out / "gradebook.csv", to_safe_csv(frame))
    codes = {}
    for entry in entries:  # the code each graded student ran, as the grading wrote it beside the report
        try:
            codes[entry.student_id] = (student_dir(out, entry.student_id) / CODE_NAME).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
    from grader.batch.similarity import similar_pairs, starter_code
    from grader.render.summary import render_summary

    pairs = similar_pairs(codes, starter=starter_code())
    write_atomic(out / "summary.html", render_summary(reports, frame, check_ids, pairs, problems))
    notes = unreadable + write_ta_sheet(out, reports)
    return ClassState(reports=reports, missing=missing, notes=notes)
