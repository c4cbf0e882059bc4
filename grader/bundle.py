"""The student bundle: the grader without the solution, with test vectors in its place (pip-installable)."""

from __future__ import annotations

import base64
import hashlib
import shutil
import zipfile
from pathlib import Path

import tomlkit

from grader import __version__
from grader.expected import PACKAGED_VECTORS, record
from grader.pyproject import Distribution, pinned

GRADER = Path(__file__).resolve().parent
# Modules that compute the solution or need it; the bundle leaves them out.
INSTRUCTOR_ONLY = ("reference.py", "assign.py", "handout.py", "bundle.py")
# Rubric entries that stay with the instructor: the multiple-choice answer key and its check.
ANSWER_KEYS = (("tasks", "task2_key"), ("points", "task2.choice"))

# The bundle's requirements by name; their pins are the project's own (grader.pyproject.pinned). The bundle
# leaves out what only the instructor's side needs (torchvision, nbconvert, jupytext, tomlkit).
DEPENDENCIES = ("torch", "numpy", "nbformat", "pandas", "matplotlib", "pillow", "jinja2", "tqdm", "tomli")
DESCRIPTION = "Self-check for the ViT on CIFAR-10 assignment (test vectors; no solution inside)."
PACKAGES = ("grader", "assignments", "reference")


def distribution() -> Distribution:
    """What the bundle's pyproject.toml and wheel metadata say."""
    return Distribution("vitgrade-student", __version__, tuple(pinned(DEPENDENCIES)), PACKAGES,
                        {"grader": (PACKAGED_VECTORS.name, "**/*.j2"), "assignments": ("**/rubric.toml",)},
                        description=DESCRIPTION)


README = """\
# vitgrade-student

The self-check for the ViT on CIFAR-10 assignment. It runs the same checks as the course's grader
on your notebook, comparing your classes with test vectors (inputs, weights and expected outputs
computed from the reference solution; the solution itself is not included). The accuracy check
and the multiple-choice answers are graded by the instructor only.

    pip install vitgrade_student-{version}-py3-none-any.whl   # or: pip install ./vitgrade_student
    vitgrade check vit_cifar10_en.ipynb

or run the notebook's self-check cell.
"""


def not_public(text: str) -> set[str]:
    """The checks the self-check leaves out: those whose [visibility] is not `visible` (a result shown only
    after the deadline, or never, cannot be kept from a student who runs the check on their own machine)."""
    return {check_id for check_id, value in tomlkit.parse(text).get("visibility", {}).items() if value != "visible"}


def student_rubric(text: str) -> str:
    """The rubric without the answer keys and the checks that are not public, its comments kept (they
    explain the checks to students too)."""
    rubric = tomlkit.parse(text)
    left_out = {}
    for section, key in ANSWER_KEYS:
        if key in rubric.get(section, {}):
            if section == "points":
                left_out[key] = rubric[section][key]
            del rubric[section][key]
    for check_id in not_public(text):
        if check_id in rubric.get("points", {}):
            del rubric["points"][check_id]
    if "visibility" in rubric:
        del rubric["visibility"]  # what is left is all visible
    if left_out:  # so the self-check can say what the instructor grades later, and the total
        if "meta" not in rubric:
            rubric["meta"] = tomlkit.table()
        rubric["meta"]["instructor_only"] = left_out
    return "# The course rubric without what stays with the instructor (answer keys, checks not shown to " \
           "students).\n" + tomlkit.dumps(rubric)


def write_bundle(dest: Path, rubric_path: Path | None = None) -> Path:
    """Write the pip-installable bundle to `dest` (replacing it) and return `dest`; its rubric comes from
    `rubric_path` (default: the bundled one) without what stays with the instructor."""
    from assignments import PROJECT_ROOT, assignment_dir
    from grader.expected.reference import ReferenceExpected

    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(GRADER, dest / "grader", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", *INSTRUCTOR_ONLY,
                                                                            PACKAGED_VECTORS.name))
    rubric_text = (rubric_path or assignment_dir() / "rubric.toml").read_text("utf-8")
    record(ReferenceExpected(), dest / "grader" / PACKAGED_VECTORS.name, leave_out=not_public(rubric_text))
    rubric_dir = dest / "assignments" / assignment_dir().name
    rubric_dir.mkdir(parents=True)
    shutil.copyfile(PROJECT_ROOT / "assignments" / "__init__.py", dest / "assignments" / "__init__.py")
    (rubric_dir / "rubric.toml").write_text(student_rubric(rubric_text), encoding="utf-8")
    # The attention-map helpers are part of the handout (they are printed in the notebook), not the solution.
    (dest / "reference").mkdir()
    (dest / "reference" / "__init__.py").write_text('"""Attention-map helpers (the student bundle has no solution)."""\n')
    shutil.copyfile(PROJECT_ROOT / "reference" / "attention_maps.py", dest / "reference" / "attention_maps.py")
    (dest / "pyproject.toml").write_text(distribution().pyproject(), encoding="utf-8")
    (dest / "README.md").write_text(README.format(version=__version__), encoding="utf-8")
    return dest


def wheel_name() -> str:
    return f"vitgrade_student-{__version__}-py3-none-any.whl"


def write_wheel(bundle: Path, folder: Path) -> Path:
    """The bundle written by `write_bundle` as one wheel in `folder`: the single file a student uploads to
    Colab and installs with `%pip install`, with no build step. A wheel is a zip with a .dist-info folder
    (PEP 427); its entries are written in name order with a fixed date, so the same bundle gives the same file."""
    dist_info = f"vitgrade_student-{__version__}.dist-info"
    entries = [(p.relative_to(bundle).as_posix(), p.read_bytes()) for p in sorted(bundle.rglob("*"))
               if p.is_file() and p.relative_to(bundle).parts[0] in PACKAGES]
    entries += [(f"{dist_info}/{name}", data) for name, data in distribution().dist_info().items()]
    record = [f"{name},sha256={_urlsafe_digest(data)},{len(data)}" for name, data in entries]
    entries.append((f"{dist_info}/RECORD", ("\n".join([*record, f"{dist_info}/RECORD,,"]) + "\n").encode()))
    path = folder / wheel_name()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            wheel.writestr(info, data)
    return path


def _urlsafe_digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
