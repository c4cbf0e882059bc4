"""`vitgrade assign`: write the student and solution notebooks (ja/en), the rubric and the student bundle."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from assignments import assignment_dir
from grader.handout import LANGUAGES, build_notebook, notebook_name


@dataclass
class Built:
    files: list[Path] = field(default_factory=list)


def assign(out: Path, languages: tuple[str, ...] = LANGUAGES, rubric_path: Path | None = None) -> Built:
    """Write student/ (notebooks, the self-check bundle as a folder and as one wheel) and instructor/ (solutions +
    rubric) under `out`; `rubric_path` (default: the bundled rubric) is the instructor's, the bundle gets its
    public part."""
    from grader.bundle import write_bundle, write_wheel

    built = Built()
    student, instructor = out / "student", out / "instructor"
    student.mkdir(parents=True, exist_ok=True)
    instructor.mkdir(parents=True, exist_ok=True)
    for lang in languages:
        for version, folder in (("student", student), ("solution", instructor)):
            path = folder / notebook_name(lang, version)
            nbformat.write(build_notebook(lang, version), path)
            built.files.append(path)
    rubric = instructor / "rubric.toml"
    shutil.copyfile(rubric_path or assignment_dir() / "rubric.toml", rubric)
    built.files.append(rubric)
    bundle = write_bundle(student / "vitgrade_student", rubric_path)
    built.files += [bundle, write_wheel(bundle, student)]
    return built
