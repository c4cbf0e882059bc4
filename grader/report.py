"""The report model: one CheckResult per check, one Report per student (report.json schema 1)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from grader import __version__

SCHEMA_VERSION = 1
CheckStatus = Literal["passed", "failed", "error", "skipped", "manual"]
ReportStatus = Literal["graded", "error", "missing"]
# Whose failure an `error` is: the submission's (its crash, hang or memory use) or the grader's (the
# sandbox could not be set up, a worker file is missing, the grader raised). Grader faults cost no
# points: such a check counts in neither score nor max_score, and the gradebook says "needs regrade".
Fault = Literal["grader", "submission"]


@dataclass
class CheckResult:
    """The outcome of one check; `points` is None until a person grades a manual check."""

    id: str
    title: str
    status: CheckStatus
    points: float | None
    max_points: float
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    fault: Fault | None = None  # set on `error` checks

    @property
    def counts(self) -> bool:
        """Skipped checks and the grader's own faults count in neither score nor max_score."""
        return self.status != "skipped" and self.fault != "grader"


@dataclass
class Report:
    student: str
    submission: str
    status: ReportStatus
    checks: list[CheckResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    sandbox: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    answers: dict[str, str] = field(default_factory=dict)
    output: str = ""
    error: str = ""
    fingerprint: dict[str, str] = field(default_factory=dict)
    fault: Fault | None = None  # set on `error` reports
    # The late policy applied (grader/rubric/late.py): submitted_at, deadline, late_seconds, penalty,
    # reason... Empty when no policy applies; `score` stays the raw score either way.
    late: dict[str, Any] = field(default_factory=dict)
    grader_version: str = __version__
    schema_version: int = SCHEMA_VERSION
    # Pictures (file name -> PNG bytes) written beside the report; not part of report.json. The
    # trained model's (training.png, attention.png) and the answers' (see answer_picture_name).
    attachments: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)
    # The code the sandbox ran (the intake's output): written beside the report as code.txt for the class
    # summary's similarity hints, so that the summary never reads a submission again. Not in report.json.
    code: str = field(default="", repr=False, compare=False)

    @classmethod
    def failure(cls, student: str, submission: str, message: str, status: ReportStatus = "error", **extra) -> Report:
        """The well-formed report of a submission that could not be graded at all."""
        return cls(student=student, submission=submission, status=status, error=message, **extra)

    @property
    def score(self) -> float:
        return round(sum(c.points or 0.0 for c in self.checks if c.counts), 4)

    @property
    def max_score(self) -> float:
        return round(sum(c.max_points for c in self.checks if c.counts), 4)

    @property
    def penalty(self) -> float:
        """Points taken off by the late policy (0 without one)."""
        return round(float(self.late.get("penalty", 0.0)), 4)

    @property
    def final_score(self) -> float:
        """The grade that goes to the LMS: the raw `score` less the late penalty, never below 0."""
        return round(max(0.0, self.score - self.penalty), 4)

    @property
    def automatic_checks_passed(self) -> bool:
        automatic = [c for c in self.checks if c.status not in ("skipped", "manual")]
        return self.status == "graded" and all(c.status == "passed" for c in automatic)

    @property
    def needs_regrade(self) -> bool:
        """The grader failed (not the submission): this report is no verdict; grade it again."""
        return self.fault == "grader" or any(c.fault == "grader" for c in self.checks)

    @property
    def return_code(self) -> int:
        """Exit code of `vitgrade check`: 0 every automatic check passed, 1 otherwise."""
        return 0 if self.automatic_checks_passed else 1

    @property
    def answers_to_show(self) -> list[tuple[str, str]]:
        """The answers part by part ("task1-diagram"); a whole-task tag ("task1", whose cells include the
        question) only for a task with no tagged parts."""
        tasks_with_parts = {tag.split("-")[0] for tag in self.answers if "-" in tag}
        return sorted((tag, text) for tag, text in self.answers.items() if "-" in tag or tag not in tasks_with_parts)

    def answer_pictures(self, tag: str) -> list[str]:
        """File names of the pictures in the answer tagged `tag`, in the answer's order."""
        names: list[str] = []
        while (name := answer_picture_name(tag, len(names) + 1)) in self.attachments:
            names.append(name)
        return names

    @property
    def model_pictures(self) -> list[str]:
        return sorted(name for name in self.attachments if not name.startswith(ANSWER_PICTURE_PREFIX))

    def check(self, check_id: str) -> CheckResult | None:
        return next((c for c in self.checks if c.id == check_id), None)

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k not in ("attachments", "code")}
        ordered = {"schema_version": self.schema_version, "student": self.student, "submission": self.submission,
                   "status": self.status, "score": self.score, "max_score": self.max_score,
                   "penalty": self.penalty, "final_score": self.final_score}
        ordered.update({k: v for k, v in data.items() if k not in ordered})
        return ordered

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        data = dict(data)
        data.pop("score", None)
        data.pop("max_score", None)
        data.pop("penalty", None)
        data.pop("final_score", None)
        data.pop("attachments", None)
        checks = [CheckResult(**c) for c in data.pop("checks", [])]
        known = cls.__dataclass_fields__
        return cls(checks=checks, **{k: v for k, v in data.items() if k in known})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, default=str)


ANSWER_PICTURE_PREFIX = "answer-"


def answer_picture_name(tag: str, number: int) -> str:
    """File name, beside the report, of picture `number` (from 1) of the answer tagged `tag` (a tag the
    intake accepted: letters, digits and hyphens)."""
    return f"{ANSWER_PICTURE_PREFIX}{tag}-{number}.png"


def answer_picture_files(tag: str, pictures: list[bytes]) -> dict[str, bytes]:
    """The pictures of the answer tagged `tag`, by the file names they get beside the report."""
    return {answer_picture_name(tag, number): png for number, png in enumerate(pictures, start=1)}


def _file_mode() -> int:
    """The mode `open()` gives a new file under the process's umask (0o644 under the usual 022), read once:
    os.umask can only be read by setting it, so it is set back at once, at import time."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write via a temporary file in the same folder and rename: readers never see half a file. The file gets
    the permissions of a normally created one (tempfile's are 0600, which would hide every output from the
    TAs sharing a course folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode() if isinstance(text, str) else text
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_report(path: Path, pictures: bool = False) -> Report:
    """The report in report.json; with `pictures`, also the pictures beside it (to render it again)."""
    report = Report.from_dict(json.loads(path.read_text(encoding="utf-8")))
    if pictures:
        report.attachments = {p.name: p.read_bytes() for p in sorted(path.parent.glob("*.png")) if p.is_file()}
    return report
