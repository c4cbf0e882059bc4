"""Merge TA scores for manual checks (CSV: student_id, check_id, points[, comment]) into the reports."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from grader.intake.naming import safe_id
from grader.report import Report, load_report, write_atomic


def merge_manual(out: Path, csv_path: Path) -> list[str]:
    """Apply each row to that student's report (each report read and rendered once, however many of its
    rows the sheet has); return notes about rows that could not be applied."""
    from grader.batch import student_dir
    from grader.render.html import render_html
    from grader.render.markdown import render_markdown

    try:
        table = pd.read_csv(csv_path, dtype={"student_id": str, "check_id": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"manual scores {csv_path}: cannot read it as CSV ({exc})") from None
    missing = {"student_id", "check_id", "points"} - set(table.columns)
    if missing:
        raise ValueError(f"manual scores {csv_path}: missing column(s) {', '.join(sorted(missing))}")
    notes = []
    ungraded = 0
    reports: dict[Path, Report | None] = {}  # by folder: each report is read and written once
    changed: set[Path] = set()
    for line, row in enumerate(table.itertuples(index=False), start=2):
        where = f"{csv_path.name} line {line}"
        if pd.isna(row.points):  # a TA sheet row nobody has graded yet
            ungraded += 1
            continue
        folder = student_dir(out, safe_id(str(row.student_id)))
        if folder not in reports:
            try:
                reports[folder] = load_report(folder / "report.json", pictures=True)
            except (OSError, ValueError):
                reports[folder] = None
        report = reports[folder]
        if report is None:
            notes.append(f"{where}: no report for student {row.student_id}")
            continue
        check = report.check(str(row.check_id))
        if check is None or check.status != "manual":
            notes.append(f"{where}: {row.check_id} is not a manual check of {row.student_id}")
            continue
        try:
            points = float(row.points)
        except (TypeError, ValueError):
            notes.append(f"{where}: points {row.points!r} is not a number")
            continue
        if not 0 <= points <= check.max_points:
            notes.append(f"{where}: {points} points is outside 0..{check.max_points:g} for {row.check_id}")
            continue
        check.points = points
        comment = getattr(row, "comment", "")
        if isinstance(comment, str) and comment.strip():
            check.message = f"{check.message} — TA: {comment.strip()}".strip(" —")
        changed.add(folder)
    for folder in changed:  # renderings first, report.json last, as when grading
        report = reports[folder]
        write_atomic(folder / "report.md", render_markdown(report))
        write_atomic(folder / "report.html", render_html(report))
        write_atomic(folder / "report.json", report.to_json())
    if ungraded:
        notes.append(f"{csv_path.name}: {ungraded} row(s) without points were left for later")
    return notes
