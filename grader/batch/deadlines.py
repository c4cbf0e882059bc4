"""Apply the rubric's late policy to a graded folder: submission times, extensions, penalties.

Submission times, first found wins: a `--submitted` CSV (student_id, submitted_at), Moodle's
grading worksheet ("Last modified (submission)"), then the submission's file time, with a warning
in the report (a copy or an unzip can change it). Canvas marks late files in their names
(`name_late_userid_...`); Canvas gives no time, so the mark is compared with the time used and a
disagreement is a warning. Extensions (student_id, extension_hours) move that student's deadline.
Run on every `vitgrade grade`, on graded and resumed reports alike: a new extension needs no regrade.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from grader.batch.output import student_dir, write_student
from grader.intake.naming import safe_id
from grader.report import Report, load_report
from grader.rubric import Rubric
from grader.rubric.late import LatePolicyError, extensions, file_time, submitted_times
from grader.tables.csvtable import CsvFormatError, read_table

CANVAS_LATE = re.compile(r"^[^_]+_late_\d+_", re.IGNORECASE)
MOODLE_TIME_FORMATS = ("%A, %d %B %Y, %I:%M %p", "%A, %d %B %Y, %H:%M")
FILE_TIME_WARNING = "late policy: submission time taken from the file's modification time (no LMS time given)"


def moodle_times(worksheet: Path, zone) -> dict[str, datetime]:
    """participant id -> "Last modified (submission)" of Moodle's grading worksheet, read in `zone` (Moodle
    writes the time in the downloading user's time zone without saying which: the rubric's [late] timezone)."""
    from grader.tables.moodle_worksheet import IDENTIFIER, SUBMITTED, participant_id

    try:
        table = read_table(worksheet)
    except CsvFormatError as exc:
        raise LatePolicyError(str(exc)) from None
    if IDENTIFIER not in table.header or SUBMITTED not in table.header:
        raise LatePolicyError(f"{worksheet}: no {IDENTIFIER!r} and {SUBMITTED!r} columns (a Moodle grading worksheet?)")
    id_col, time_col = table.header.index(IDENTIFIER), table.header.index(SUBMITTED)
    times = {}
    for record in table.records[1:]:
        participant, text = participant_id(record.value(id_col)), record.value(time_col).strip()
        if participant is None or text in ("", "-"):
            continue
        for fmt in MOODLE_TIME_FORMATS:
            try:
                times[participant] = datetime.strptime(text, fmt).replace(tzinfo=zone)
                break
            except ValueError:
                continue
        else:
            raise LatePolicyError(f"{worksheet}: {record.value(id_col)}: cannot read the time {text!r}")
    return times


@dataclass
class LateInputs:
    """The submission times and extensions, read and checked before any grading starts."""

    times: dict[str, datetime] = field(default_factory=dict)  # --submitted
    lms_times: dict[str, datetime] = field(default_factory=dict)  # Moodle's worksheet
    extensions: dict[str, timedelta] = field(default_factory=dict)


def read_late_inputs(rubric: Rubric, *, submitted: Path | None = None, extension_csv: Path | None = None,
                     worksheet: Path | None = None) -> LateInputs:
    """Read the late policy's CSVs; raise LatePolicyError (a ValueError) naming the file and row."""
    if rubric.late is None:
        if submitted or extension_csv or worksheet:
            raise LatePolicyError("--submitted/--extensions/--worksheet need a deadline: add a [late] section to "
                                  f"the rubric {rubric.path}")
        return LateInputs()
    zone = rubric.late.deadline.tzinfo
    return LateInputs(
        times={safe_id(k): v for k, v in (submitted_times(submitted, zone) if submitted else {}).items()},
        lms_times=moodle_times(worksheet, zone) if worksheet else {},
        extensions={safe_id(k): v for k, v in (extensions(extension_csv) if extension_csv else {}).items()})


def apply_late_policy(out: Path, rubric: Rubric, submissions: dict[str, Path], inputs: LateInputs) -> list[str]:
    """Write each graded report's `late` entry (and its renderings) under `out`; return notes for the console.

    `submissions` maps student ids to their submission paths (for file times and Canvas's late mark).
    """
    policy = rubric.late
    times, lms_times, extra = inputs.times, inputs.lms_times, inputs.extensions
    notes, file_timed, penalised = [], 0, 0
    for student, path in sorted(submissions.items()):
        folder = student_dir(out, student)
        try:
            report = load_report(folder / "report.json")  # the pictures only when it is rewritten
        except (OSError, ValueError, TypeError, KeyError):
            continue
        if report.status != "graded":
            continue
        warnings = [w for w in report.warnings if not w.startswith("late policy:")]
        if policy is None:  # no [late] (any more): no penalty, and none left from an earlier policy
            if report.late or warnings != report.warnings:
                report.late, report.warnings = {}, warnings
                _write(out, folder, report)
            continue
        when = times.get(student) or lms_times.get(student)
        if when is None:
            when = file_time(path)
            warnings.append(FILE_TIME_WARNING)
            file_timed += 1
        late = policy.assess(when, report.max_score, extra.get(student, timedelta(0)))
        penalised += late["penalty"] > 0
        if CANVAS_LATE.match(path.name) and late["late_seconds"] == 0:
            warnings.append("late policy: Canvas marked this submission late, but its time "
                            f"{when.isoformat()} is on time; check the time source")
        if late == report.late and warnings == report.warnings:
            continue
        report.late, report.warnings = late, warnings
        _write(out, folder, report)
    if file_timed:
        notes.append(f"warning: late policy: {file_timed} submission time(s) taken from file times (a copy or unzip "
                     "can change them); pass --submitted CSV or --worksheet for the LMS's times")
    unknown = sorted(set(extra) - set(submissions))
    if unknown:
        notes.append(f"warning: extensions for students with no submission: {', '.join(unknown)}")
    if penalised:
        notes.append(f"late policy: {penalised} late submission(s) penalised (gradebook.csv: penalty, final_score)")
    return notes


def _write(out: Path, folder: Path, report: Report) -> None:
    """Through the one writer of a student's outputs, with the pictures the pages show."""
    report.attachments = load_report(folder / "report.json", pictures=True).attachments
    write_student(out, report)
