"""Which submissions a `vitgrade grade` folder holds, and the student id each is graded under.

Imports no torch: the command says a path is wrong before it loads the grader (seconds)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from grader.intake.naming import safe_id, student_id_from_name

SUBMISSION_SUFFIXES = {".ipynb", ".py", ".zip"}


@dataclass(frozen=True)
class Entry:
    student_id: str
    path: Path


def discover(paths: list[Path], id_pattern: str | None = None) -> tuple[list[Entry], list[str]]:
    """One entry per student: a folder argument holds one entry (file or sub-folder) per student."""
    candidates: list[Path] = []
    notes: list[str] = []
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        if path.is_dir():
            children = sorted(p for p in path.iterdir() if not p.name.startswith((".", "_")))
            entries = [p for p in children if p.is_dir() or p.suffix.lower() in SUBMISSION_SUFFIXES]
            ignored = [p.name for p in children if p not in entries]
            if ignored:
                notes.append(f"ignored {len(ignored)} entries of {path} that are not submissions: {', '.join(ignored[:5])}")
            if not entries:
                raise ValueError(f"{path} holds no submissions (.ipynb, .py, .zip or one folder per student)")
            candidates += entries
        else:
            candidates.append(path)
    result, collisions = assign_ids(candidates, id_pattern)
    return result, notes + collisions


COLLISION_MARK = "two submissions map to student id"


def assign_ids(paths: list[Path], id_pattern: str | None = None) -> tuple[list[Entry], list[str]]:
    """A distinct student id for each path, and a message for each id claimed twice.

    Ids are compared as folder names are on a case-insensitive file system, after safe_id; a later
    claimant gets `<id>-2`, `-3`... skipping every id another path maps to, so that it can never take
    a real student's id (or overwrite their report)."""
    bases = [student_id_from_name(path, id_pattern) for path in paths]
    claimed = {safe_id(base).casefold() for base in bases}
    used: set[str] = set()
    entries, collisions = [], []
    for path, base in zip(paths, bases, strict=True):
        student = base
        if student.casefold() in used:
            number = 2
            while (student := safe_id(f"{base}-{number}")).casefold() in used | claimed:
                number += 1
            collisions.append(f"{COLLISION_MARK} {base!r}: {path.name} is graded as {student!r}; check the "
                              "file names (or --id-pattern) before uploading grades")
        used.add(student.casefold())
        entries.append(Entry(student, path))
    return entries, collisions
