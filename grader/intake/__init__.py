"""Intake: turn a submission (.ipynb, .py, .zip or folder) into code the sandbox can run."""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from grader.intake.budget import INTAKE_SECONDS, Deadline, IntakeError
from grader.intake.code import REQUIRED_CLASSES, CodeUnit, extract
from grader.intake.naming import student_id_from_name
from grader.intake.sources import SourceFiles, extract_zip, read_folder, read_notebook, read_python

__all__ = ["IntakeError", "Submission", "load_submission", "REQUIRED_CLASSES", "content_digest"]


@dataclass
class Submission:
    """Everything the grader needs from one student's submission."""

    student_id: str
    path: str
    code: str
    units: list[CodeUnit]
    answers: dict[str, str] = field(default_factory=dict)
    answer_pictures: dict[str, list[bytes]] = field(default_factory=dict)  # tag -> PNGs, see intake.pictures
    warnings: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    digest: str = ""


def content_digest(path: Path) -> str:
    """SHA-256 over a file, or over a folder's files and relative names (for resume).

    Each name and each content goes in with its length first, so that no two different folders
    give the same sequence of bytes ("a" + "bc" and "ab" + "c" once did)."""
    digest = hashlib.sha256(b"vitgrade-digest-2\0")

    def field(data: bytes) -> None:
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)

    if not path.is_file() and not path.is_dir():
        return digest.hexdigest()  # not something intake reads (a FIFO would block here)
    paths = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    for item in paths:
        field(str(item.relative_to(path) if path.is_dir() else item.name).encode("utf-8", "surrogateescape"))
        digest.update(item.stat().st_size.to_bytes(8, "big"))
        with open(item, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _read(path: Path, deadline: Deadline) -> SourceFiles:
    suffix = path.suffix.lower()
    if path.is_dir():
        return read_folder(path, deadline)
    if suffix == ".ipynb":
        return read_notebook(path, deadline=deadline)
    if suffix == ".py":
        return read_python(path)
    if suffix == ".zip":
        with tempfile.TemporaryDirectory(prefix="vitgrade-zip-") as tmp:
            return read_folder(extract_zip(path, Path(tmp)), deadline)
    raise IntakeError(f"{path.name}: unsupported file type {suffix or '(none)'}; submit a .ipynb, .py or .zip")


def load_submission(path: str | Path, student_id: str | None = None, id_pattern: str | None = None,
                    seconds: float = INTAKE_SECONDS) -> Submission:
    """Read one submission; raise IntakeError with a student-readable message if it is unusable.

    Every failure is an IntakeError: whatever a submission holds (nesting that exhausts the parser,
    an encrypted zip member, a file that vanishes), its student gets a message, never a traceback."""
    path = Path(path)
    try:
        return _load(path, student_id, id_pattern, Deadline(seconds))
    except IntakeError:
        raise
    except (MemoryError, RecursionError) as exc:
        raise IntakeError(f"{path.name} cannot be read: it is nested too deeply or too large "
                          f"({type(exc).__name__})") from None
    except Exception as exc:  # a case the intake does not know yet: still the student's clear message
        raise IntakeError(f"{path.name} cannot be read ({type(exc).__name__}: {str(exc)[:300]})") from None


def _load(path: Path, student_id: str | None, id_pattern: str | None, deadline: Deadline) -> Submission:
    if not path.exists():
        raise IntakeError(f"{path} does not exist")
    if path.is_symlink() and not path.resolve().exists():
        raise IntakeError(f"{path.name} is a broken symbolic link")
    if not path.is_dir() and not path.is_file():  # a FIFO or device would block or never end
        raise IntakeError(f"{path.name} is not a regular file or folder")
    found = _read(path, deadline)
    extracted = extract(found.units, found.local_modules, deadline)
    dropped = sum(u.dropped for u in extracted.units)
    warnings = found.warnings + extracted.warnings
    if not extracted.code.strip():
        raise IntakeError(f"{path.name}: no class or function definitions found in the code")
    submission = Submission(
        student_id=student_id or student_id_from_name(path, id_pattern),
        path=str(path),
        code=extracted.code,
        units=extracted.units,
        answers=found.answers,
        answer_pictures=found.answer_pictures,
        warnings=warnings,
        files=found.files,
        digest=content_digest(path),
    )
    if dropped:
        submission.warnings.append(
            f"{dropped} top-level statements were not run (training loops, downloads, prints, magics, and "
            "definitions the four required classes do not use)"
        )
    return submission
