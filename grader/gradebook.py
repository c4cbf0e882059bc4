"""The gradebook (pandas) and the class summary page, rebuilt from the reports on disk."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from grader.intake import IntakeError, load_submission
from grader.intake.naming import safe_id
from grader.report import Report, load_report, write_atomic
from grader.rubric import Rubric

ROSTER_COLUMNS = ("student_id", "id", "student", "sid")


def read_roster(path: Path) -> list[str]:
    try:
        table = pd.read_csv(path, dtype=str)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"roster {path}: cannot read it as CSV ({exc})") from None
    column = next((c for c in table.columns if c.strip().lower() in ROSTER_COLUMNS), None)
    if column is None:
        raise ValueError(f"roster {path}: no column named one of {', '.join(ROSTER_COLUMNS)}")
    return [safe_id(v) for v in table[column].dropna().astype(str)]


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
        row = {"student": report.student, "status": report.status, "score": report.score,
               "max_score": report.max_score, "penalty": report.penalty, "final_score": report.final_score,
               "submission": report.submission}
        for check in report.checks:
            row[check.id] = check.points if check.status != "skipped" else None
        rows.append(row)
    # score: the raw sum of the checks; penalty: the late policy's; final_score: what goes to the LMS.
    columns = ["student", "status", "score", "max_score", "penalty", "final_score", *check_ids, "submission"]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values("student", kind="stable").reset_index(drop=True)


def write_summary(out: Path, entries: list, roster: Path | None, rubric: Rubric) -> list[str]:
    """Write missing reports for roster students, gradebook.csv and summary.html; return the missing ids."""
    from grader.batch import student_dir

    reports, problems = load_reports(out)
    have = {r.student for r in reports}
    missing = [sid for sid in read_roster(roster) if sid not in have] if roster else []
    for sid in missing:
        report = Report.failure(sid, "", "no submission received", status="missing")
        write_atomic(student_dir(out, sid) / "report.json", report.to_json())
        reports.append(report)
    check_ids = list(rubric.points)
    frame = gradebook_frame(reports, check_ids)
    write_atomic(out / "gradebook.csv", frame.to_csv(index=False))
    codes = {}
    for entry in entries:
        try:
            codes[entry.student_id] = load_submission(entry.path, entry.student_id).code
        except IntakeError:
            continue
    from grader.render.summary import render_summary

    write_atomic(out / "summary.html", render_summary(reports, frame, check_ids, codes, problems))
    write_ta_sheet(out, reports)
    return missing


TA_COLUMNS = ["student_id", "check_id", "points", "comment", "max_points", "answer", "pictures"]


def write_ta_sheet(out: Path, reports: list[Report]) -> None:
    """ta_sheet.csv (fill in points and comment, then merge with --manual) and ta_sheet.html (for reading).

    One row per manual check still awaiting a person; the CSV's first four columns are what
    `--manual` reads, so the sheet goes back as it is. `pictures`: the answer's pictures, as paths
    relative to `out` (the HTML sheet shows them).
    """
    from grader.batch import student_dir
    from grader.render.html import render_page

    rows = [{"student_id": r.student, "check_id": c.id, "points": "", "comment": "", "max_points": c.max_points,
             "answer": c.details.get("answer", ""),
             "pictures": [(student_dir(out, r.student) / name).relative_to(out).as_posix()
                          for name in c.details.get("pictures", [])]}
            for r in sorted(reports, key=lambda r: r.student) for c in r.checks
            if c.status == "manual" and c.points is None]
    frame = pd.DataFrame(rows, columns=TA_COLUMNS)
    frame["pictures"] = frame["pictures"].map(" ".join)
    write_atomic(out / "ta_sheet.csv", frame.to_csv(index=False))
    groups = [(check_id, [row for row in rows if row["check_id"] == check_id])
              for check_id in dict.fromkeys(row["check_id"] for row in rows)]
    write_atomic(out / "ta_sheet.html", render_page("ta_sheet.html.j2", rows=rows, groups=groups,
                                                    students=len({row["student_id"] for row in rows}),
                                                    assignment="ViT on CIFAR-10"))
