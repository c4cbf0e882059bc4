"""TA grading of the written answers: the TA sheet, merging it back, and the TA's scores kept for good.

A TA's points live in `ta_scores.json` in the output folder, keyed by student and check and tied to
a digest of the answer they were given for. They are re-applied to every new report of that student
(a regrade after a rubric change, a resubmission), so TA work is never lost; an answer that changed
since is flagged for the TA again instead of silently keeping the old points.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from grader.batch.output import student_dir, write_student
from grader.intake.naming import safe_id
from grader.report import CheckResult, Report, load_report, write_atomic
from grader.spec import PERSON_GRADED
from grader.tables.spreadsheet import read_text_csv, to_safe_csv

TA_SCORES = "ta_scores.json"
TA_SHEET = "ta_sheet.csv"
SHEET_COLUMNS = ("student_id", "check_id", "points")  # what --manual reads (and `comment` when present)
TA_COLUMNS = ["student_id", "check_id", "points", "comment", "max_points", "state", "answer", "pictures"]


@dataclass
class TAScore:
    points: float
    comment: str
    answer_digest: str
    max_points: float
    merged: str = ""


Scores = dict[tuple[str, str], TAScore]


def answer_digest(report: Report, check: CheckResult) -> str:
    """What the TA graded: the answer's text and the bytes of its pictures (loaded with the report)."""
    digest = hashlib.sha256(str(check.details.get("answer", "")).encode())
    for name in check.details.get("pictures", []):
        digest.update(b"\x00" + name.encode() + b"\x00" + report.attachments.get(name, b"(missing)"))
    return digest.hexdigest()


def load_scores(out: Path) -> Scores:
    path = out / TA_SCORES
    if not path.exists():
        return {}
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))["scores"]
        return {(row.pop("student"), row.pop("check")): TAScore(**row) for row in rows}
    except (OSError, ValueError, KeyError, TypeError) as exc:  # never grade over TA work we cannot read
        raise ValueError(f"{path}: the TA scores cannot be read ({exc}); restore it before grading") from None


def save_scores(out: Path, scores: Scores) -> None:
    rows = [{"student": student, "check": check, **asdict(score)} for (student, check), score in sorted(scores.items())]
    write_atomic(out / TA_SCORES, json.dumps({"schema_version": 1, "scores": rows}, indent=2, ensure_ascii=False))


def apply_scores(report: Report, scores: Scores) -> list[str]:
    """Put the TA's points into `report`'s manual checks; return notes about scores that no longer fit
    (answer changed, or above the check's new maximum): those checks await a TA again."""
    notes = []
    for check in report.checks:
        score = scores.get((report.student, check.id))
        if score is None or check.status != "manual":
            continue
        reason = None
        if score.answer_digest != answer_digest(report, check):
            reason = "the answer changed since"
        elif score.points > check.max_points:
            reason = f"the check is now worth {check.max_points:g} points, and"
        if reason:
            check.points = None
            check.message = (f"awaiting a TA again: {reason} a TA gave {score.points:g}/{score.max_points:g} "
                             f"(see the TA sheet)")
            check.details["ta_previous"] = {"points": score.points, "comment": score.comment}
            check.details.pop("ta", None)
            notes.append(f"{report.student} {check.id}: {check.message}")
            continue
        check.points = score.points
        check.message = f"graded by a TA: {score.points:g}/{check.max_points:g}" + (
            f" — {score.comment}" if score.comment else "")
        check.details["ta"] = {"points": score.points, "comment": score.comment}
        check.details.pop("ta_previous", None)
    return notes


def awaiting(check: CheckResult) -> bool:
    return check.status == "manual" and check.points is None


@dataclass
class SheetRow:
    line: int
    student: str
    check: str
    points: float | None
    comment: str
    state: str = ""  # as written by write_ta_sheet; "graded" rows are the record of a merged score


@dataclass
class MergeResult:
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # rows that could not be applied: exit 1


def read_sheet(csv_path: Path, rubric=None, students: set[str] | None = None) -> tuple[list[SheetRow], list[str]]:
    """The sheet's rows and its problems. With `rubric` and `students`, rows are also checked against
    them (so that `vitgrade grade` refuses a bad sheet before grading anyone)."""
    table = read_text_csv(csv_path, "manual scores")
    missing = set(SHEET_COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(f"manual scores {csv_path}: missing column(s) {', '.join(sorted(missing))}")
    rows, problems = [], []
    for line, row in enumerate(table.to_dict("records"), start=2):
        where = f"{csv_path.name} line {line}"
        text = row["points"].strip()
        student, check = safe_id(row["student_id"]), row["check_id"].strip()
        points = None
        if text:
            try:
                points = float(text)
            except ValueError:
                problems.append(f"{where}: points {text!r} is not a number")
                continue
            if not math.isfinite(points) or points < 0:
                problems.append(f"{where}: points {text!r} must be a number >= 0")
                continue
            if rubric is not None:
                if check not in rubric.points or check not in PERSON_GRADED:
                    graded = ", ".join(sorted(c for c in rubric.points if c in PERSON_GRADED))
                    problems.append(f"{where}: {check!r} is not a check a TA grades (those are: {graded})")
                    continue
                if points > rubric.points[check]:
                    problems.append(f"{where}: {points:g} points is above the maximum {rubric.points[check]:g} "
                                    f"of {check}")
                    continue
            if students is not None and student not in students:
                problems.append(f"{where}: unknown student {row['student_id']!r} (no submission, report or "
                                "roster entry)")
                continue
        rows.append(SheetRow(line, student, check, points, row.get("comment", "").strip(), row.get("state", "").strip()))
    return rows, problems


def merge_manual(out: Path, csv_path: Path, gradescope: bool = False) -> MergeResult:
    """Record the sheet's points in ta_scores.json and rewrite the outputs of every student they touch."""
    rows, problems = read_sheet(csv_path)
    result = MergeResult(problems=problems)
    scores = load_scores(out)
    reports: dict[str, Report | None] = {}
    changed: set[str] = set()
    ungraded = 0
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for row in rows:
        where = f"{csv_path.name} line {row.line}"
        if row.points is None:  # a row nobody has graded yet (or a row whose points stay as recorded)
            ungraded += (row.student, row.check) not in scores
            continue
        if row.student not in reports:
            try:
                reports[row.student] = load_report(student_dir(out, row.student) / "report.json", pictures=True)
            except (OSError, ValueError, TypeError, KeyError):
                reports[row.student] = None
        report = reports[row.student]
        if report is None:
            result.problems.append(f"{where}: no report for student {row.student!r}")
            continue
        check = report.check(row.check)
        if check is None or check.status != "manual":
            what = "has no check" if check is None else f"has {check.status!r} (not awaiting a TA) for"
            result.problems.append(f"{where}: {row.student} {what} {row.check!r}")
            continue
        if row.points > check.max_points:
            result.problems.append(f"{where}: {row.points:g} points is above the maximum {check.max_points:g} of "
                                   f"{row.check}")
            continue
        previous = scores.get((row.student, row.check))
        if row.state == "graded" and previous and (previous.points, previous.comment) == (row.points, row.comment):
            continue  # the sheet's record of a merged score (from an older sheet, its answer may have changed since)
        score = TAScore(row.points, row.comment, answer_digest(report, check), check.max_points, now)
        if previous is None or (previous.points, previous.comment, previous.answer_digest) != (
                score.points, score.comment, score.answer_digest):
            scores[(row.student, row.check)] = score
            changed.add(row.student)
    save_scores(out, scores)  # first: if anything below is interrupted, the next run applies them again
    for student in sorted(changed):
        report = reports[student]
        result.notes += apply_scores(report, scores)
        write_student(out, report, gradescope)
    result.notes.append(f"{csv_path.name}: {len(changed)} student(s) updated"
                        + (f"; {ungraded} row(s) without points were left for later" if ungraded else ""))
    return result


def write_ta_sheet(out: Path, reports: list[Report]) -> list[str]:
    """ta_sheet.csv (fill in points and comment, then merge with --manual) and ta_sheet.html (for reading).

    One row per written answer a TA grades, with the points and comment already merged, so the same
    file can be edited and merged again. A sheet on disk holding TA entries that are not merged yet
    keeps them (they are carried into the new sheet, or the old sheet is kept as a backup): a TA who
    edits the sheet in place never loses work. Returns notes for the console.
    """
    from grader.render.html import render_page

    scores = load_scores(out)
    rows = []
    for report in sorted(reports, key=lambda r: r.student):
        for c in report.checks:
            if c.status != "manual":
                continue
            score = scores.get((report.student, c.id))
            graded = score is not None and c.points is not None
            rows.append({"student_id": report.student, "check_id": c.id,
                         "points": f"{c.points:g}" if graded else "", "comment": score.comment if graded else "",
                         "max_points": c.max_points,
                         "state": "graded" if graded else ("answer changed" if "ta_previous" in c.details
                                                           else "awaiting"),
                         "answer": c.details.get("answer", ""),
                         "pictures": [(student_dir(out, report.student) / name).relative_to(out).as_posix()
                                      for name in c.details.get("pictures", [])]})
    notes = _keep_unmerged_entries(out / TA_SHEET, rows)
    frame = pd.DataFrame(rows, columns=TA_COLUMNS)
    frame["pictures"] = frame["pictures"].map(" ".join)
    write_atomic(out / TA_SHEET, to_safe_csv(frame))
    pending = [row for row in rows if row["state"] != "graded"]
    groups = [(check_id, [row for row in pending if row["check_id"] == check_id])
              for check_id in dict.fromkeys(row["check_id"] for row in pending)]
    write_atomic(out / "ta_sheet.html", render_page("ta_sheet.html.j2", rows=pending, groups=groups,
                                                    students=len({row["student_id"] for row in pending}),
                                                    assignment="ViT on CIFAR-10"))
    return notes


def _keep_unmerged_entries(path: Path, rows: list[dict]) -> list[str]:
    """Carry the points and comments a TA typed into the sheet on disk (and has not merged) into `rows`;
    back the old sheet up when any of them has no row to go to, or the new sheet would be shorter."""
    if not path.exists():
        return []
    try:
        old, problems = read_sheet(path)
    except ValueError:
        old, problems = None, ["unreadable"]
    by_key = {(row["student_id"], row["check_id"]): row for row in rows}
    carried, orphans = 0, 0
    for entry in old or []:
        if entry.points is None and not entry.comment:
            continue
        row = by_key.get((entry.student, entry.check))
        if row is None:
            orphans += 1
        elif (f"{entry.points:g}" if entry.points is not None else "", entry.comment) != (row["points"], row["comment"]):
            row["points"] = f"{entry.points:g}" if entry.points is not None else row["points"]
            row["comment"] = entry.comment or row["comment"]
            row["state"] = "typed, not merged"
            carried += 1
    notes = []
    if carried:
        entries = "1 TA entry" if carried == 1 else f"{carried} TA entries"
        notes.append(f"{path.name}: {entries} typed into the sheet but not merged {'was' if carried == 1 else 'were'} "
                     f"kept; merge with --manual {path}")
    if problems or orphans or len(rows) < len(old or []):  # entries that cannot be carried: keep the whole file
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        backup = path.with_name(f"ta_sheet.backup-{stamp}.csv")
        write_atomic(backup, path.read_bytes())
        why = ("rows that cannot be read" if problems else "entries with no row in the new one" if orphans
               else "more rows")
        notes.append(f"{path.name}: the old sheet had {why}; it is kept as {backup.name}")
    return notes
