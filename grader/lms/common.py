"""What every LMS export shares: the graded folder's reports, which of them may go out, the outcome."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from grader.report import Report, load_report
from grader.rubric import Rubric


class ExportError(ValueError):
    """An export cannot be written as asked; the message names the file and what to do."""


def graded_reports(graded: Path) -> dict[str, Report]:
    """The reports of a `vitgrade grade` output folder by student id (report.json is the source of truth),
    with the pictures beside them (the student-facing pages show them)."""
    if not (graded / "students").is_dir():
        raise ExportError(f"{graded}: not a vitgrade output folder (no students/ inside); run vitgrade grade first")
    reports, problems = {}, []
    for path in sorted((graded / "students").glob("*/report.json")):
        try:
            report = load_report(path, pictures=True)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            problems.append(f"{path}: unreadable report ({exc}); regrade that student")
            continue
        reports[report.student] = report
    if problems:
        raise ExportError("; ".join(problems))
    return reports


def needs_regrade(report: Report) -> bool:
    """A report that a grader fault left unfinished: its score is not the student's."""
    checks_fault = any(getattr(c, "fault", None) == "grader" or c.details.get("fault") == "grader"
                       for c in report.checks)
    return (getattr(report, "fault", None) == "grader" or checks_fault
            or report.error.startswith("internal grader error"))


def pending(report: Report) -> list[str]:
    """Ids of manual checks still awaiting a person."""
    return [c.id for c in report.checks if c.status == "manual" and c.points is None]


def why_not_exported(report: Report, allow_pending: bool) -> str | None:
    """None when the report's final score may go to the LMS, else the reason it stays out."""
    if report.status == "missing":
        return "no submission"
    if needs_regrade(report):
        return "needs regrade (grader fault)"
    if report.status != "graded":
        return f"not graded: {report.error or report.status}"
    waiting = pending(report)
    if waiting and not allow_pending:
        return f"{len(waiting)} written answer(s) await a TA ({', '.join(waiting)}); merge the TA sheet or " \
               "pass --allow-pending"
    return None


def format_points(value: float) -> str:
    """Points as an LMS reads them: at most two decimals, no trailing zeros, no exponent."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


@dataclass
class ExportResult:
    """What an export wrote, and every student it did not fill, with the reason (printed on stdout)."""

    written: list[Path] = field(default_factory=list)
    filled: dict[str, str] = field(default_factory=dict)  # LMS row label -> value written
    untouched: list[str] = field(default_factory=list)  # LMS rows left as exported, with the reason
    unmatched: list[str] = field(default_factory=list)  # reports with no row in the LMS file
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        lines = [*self.notes, f"filled {len(self.filled)} student(s); wrote {', '.join(map(str, self.written))}"]
        if self.untouched:
            lines.append(f"left untouched ({len(self.untouched)}):")
            lines += [f"  {line}" for line in self.untouched]
        if self.unmatched:
            lines.append(f"graded but not in the LMS file ({len(self.unmatched)}):")
            lines += [f"  {line}" for line in self.unmatched]
        return "\n".join(lines)


def check_rubric(reports: dict[str, Report], rubric: Rubric, explicit: bool) -> list[str]:
    """Student-facing outputs take the checks' visibility from the rubric: refuse the default rubric for
    reports graded with another one (hidden checks would show), and note a given rubric that differs."""
    other = sorted(sid for sid, r in reports.items()
                   if r.fingerprint.get("rubric") and r.fingerprint["rubric"] != rubric.verdict_digest)
    if not other:
        return []
    if not explicit:
        raise ExportError(f"{len(other)} report(s) (e.g. {other[0]}) were graded with another rubric than the "
                          f"bundled one; pass --rubric with the course rubric (its [visibility] decides what "
                          "students see)")
    return [f"note: {len(other)} report(s) were graded with another version of {rubric.path.name}; its current "
            "[visibility] and [late] are used"]
