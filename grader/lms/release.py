"""Student-facing copies of the reports: what the visibility policy allows, nothing instructor-only.

The instructor's reports (DIR/students/*/report.json) show everything. A student's copy keeps the
checks the rubric's [visibility] shows at that time (`visible` always, `after_due_date` once the
student's deadline has passed, `hidden` never), the student's own answers and output, and drops
what belongs to the instructor: other checks, the machine's environment and timings, fingerprints,
details named private (TA notes), seeds, and absolute paths of the instructor's machine (a path
becomes its last component). `vitgrade release` and `vitgrade export folder|moodle` write these.
"""

from __future__ import annotations

import copy
import io
import re
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from grader.lms.common import ExportError, needs_regrade
from grader.report import Report, write_atomic
from grader.rubric import Rubric

# An absolute POSIX path with at least one folder, not part of a word or a relative path ("a/b").
ABSOLUTE_PATH = re.compile(r"(?<![\w.~/-])/(?:[^\s/'\"<>|:;,()\[\]]+/)+([^\s/'\"<>|:;,()\[\]]*)")
PRIVATE_DETAIL = re.compile(r"private|seed|note_to_ta", re.IGNORECASE)
RELEASE_SUMMARY = "RELEASE.md"


def scrub_paths(text: str) -> str:
    """`text` with every absolute path replaced by its last component (the file name)."""
    return ABSOLUTE_PATH.sub(lambda m: m.group(1) or "…", text)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return scrub_paths(value)
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if not PRIVATE_DETAIL.search(str(k))}
    return value


def student_due(report: Report, rubric: Rubric) -> datetime | None:
    """The deadline that applies to this student (with an extension, from the late policy's entry)."""
    if report.late.get("deadline"):
        return datetime.fromisoformat(report.late["deadline"])
    return rubric.late.deadline if rubric.late else None


def shown(check_id: str, rubric: Rubric, due: datetime | None, now: datetime) -> bool:
    visibility = rubric.visibility_of(check_id)
    if visibility == "visible":
        return True
    if visibility == "after_due_date":
        return due is not None and now >= due
    return False


def student_view(report: Report, rubric: Rubric, now: datetime | None = None) -> Report:
    """The copy of `report` its student may see at `now` (default: the current time)."""
    now = now or datetime.now(timezone.utc)
    due = student_due(report, rubric)
    view = copy.deepcopy(report)
    kept = [c for c in view.checks if shown(c.id, rubric, due, now)]
    held = [c for c in view.checks if c not in kept]
    view.checks = kept
    for check in view.checks:
        check.message = scrub_paths(check.message)
        check.details = _scrub(check.details)
    view.submission = Path(report.submission).name if report.submission else ""
    view.warnings = [scrub_paths(w) for w in view.warnings]
    if held:
        later = sum(c.max_points for c in held if rubric.visibility_of(c.id) == "after_due_date" and c.counts)
        note = f"{len(held)} check(s) are not shown here; the score counts only the checks shown"
        view.warnings.append(note + (f" ({later:g} points are shown after the deadline)" if later else ""))
    view.error = scrub_paths(view.error)
    view.output = scrub_paths(view.output)
    view.sandbox = {k: v for k, v in view.sandbox.items() if k in ("isolation", "network")}
    view.environment, view.timings, view.fingerprint = {}, {}, {}
    view.late = {k: v for k, v in view.late.items() if k in ("submitted_at", "deadline", "late_seconds", "penalty",
                                                              "reason", "extension_hours")}
    return view


@dataclass
class Release:
    """What a release wrote and what it held back (the summary the instructor reads first)."""

    dest: Path
    students: list[str] = field(default_factory=list)
    held_back: list[str] = field(default_factory=list)
    checks_shown: list[str] = field(default_factory=list)
    checks_not_shown: list[str] = field(default_factory=list)

    def describe(self, for_instructor: bool = True) -> str:
        """The summary; the copy written beside the students' folders names no check it holds back."""
        not_shown = ", ".join(self.checks_not_shown) if for_instructor else f"{len(self.checks_not_shown)} check(s)"
        lines = [f"# Release to students: {self.dest.name}", "",
                 f"- {len(self.students)} student(s) get their report (report.html, report.md, report.json)",
                 f"- checks shown: {', '.join(self.checks_shown) or 'none'}",
                 f"- checks NOT shown: {not_shown or 'none'}",
                 "- never shown: the machine's environment and timings, fingerprints, private TA notes, seeds, "
                 "absolute paths of this machine, other students"]
        if self.held_back:
            lines.append(f"- held back ({len(self.held_back)}): " + "; ".join(self.held_back))
        return "\n".join(lines) + "\n"


def student_files(view: Report) -> dict[str, bytes]:
    """The files of one student's copy, by name."""
    from grader.render.html import render_html
    from grader.render.markdown import render_markdown

    files = {"report.html": render_html(view).encode(), "report.md": render_markdown(view).encode(),
             "report.json": view.to_json().encode()}
    files.update(view.attachments)
    return files


def release(reports: list[Report], rubric: Rubric, dest: Path, now: datetime | None = None) -> Release:
    """Write each releasable student's copy to dest/<student>/ (or into the zip `dest`) and the summary."""
    from grader.intake.naming import safe_id

    now = now or datetime.now(timezone.utc)
    result = Release(dest=dest)
    ids = list(dict.fromkeys(c.id for r in reports for c in r.checks))
    for check_id in ids:
        visible_now = any(shown(check_id, rubric, student_due(r, rubric), now) for r in reports)
        (result.checks_shown if visible_now else result.checks_not_shown).append(check_id)
    entries: dict[str, bytes] = {}
    for report in sorted(reports, key=lambda r: r.student):
        if report.status == "missing" or needs_regrade(report):  # a grader fault waits for the regrade
            reason = "no submission" if report.status == "missing" else "needs regrade (grader fault)"
            result.held_back.append(f"{report.student}: {reason}")
            continue
        folder = safe_id(report.student)
        for name, data in student_files(student_view(report, rubric, now)).items():
            entries[f"{folder}/{name}"] = data
        result.students.append(report.student)
    entries[RELEASE_SUMMARY] = result.describe(for_instructor=False).encode()
    if dest.suffix.lower() == ".zip":
        write_atomic(dest, zip_bytes(entries))
    else:
        _replace_folder(dest, entries)
    return result


def _replace_folder(dest: Path, entries: dict[str, bytes]) -> None:
    """Write `entries` as the folder `dest`: built beside it, then swapped in, so a student held back this
    time keeps no copy from an earlier release. A folder that is not an earlier release is left alone."""
    import shutil
    import tempfile

    if dest.exists() and any(dest.iterdir()) and not (dest / RELEASE_SUMMARY).is_file():
        raise ExportError(f"{dest} exists and is not an earlier release (no {RELEASE_SUMMARY}); choose an empty or "
                          "new folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        for name, data in entries.items():
            write_atomic(staging / name, data)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            dest.rename(old)
            staging.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(dest)
        dest.chmod(0o755)  # mkdtemp made it private; the release is meant to be handed out
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def zip_bytes(entries: dict[str, bytes], executable: set[str] = frozenset()) -> bytes:
    """A zip of `entries` (name -> bytes) with UTF-8 names and a fixed timestamp (same input, same zip);
    the names in `executable` get mode 755."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (0o755 if name in executable else 0o644) << 16
            archive.writestr(info, data)
    return buffer.getvalue()
