"""Gradescope's autograder: `vitgrade gradescope --out autograder.zip` builds it, and Gradescope's
run_autograder calls `python3 -m grader.lms.gradescope_autograder` to grade one submission.

The zip (Gradescope's layout, like Otter's `generate`):
    setup.sh          Gradescope runs it once when building the image: installs bubblewrap when apt
                      can, this package from vit_autograder/ (its dependencies from PyPI), and CIFAR-10
    run_autograder    grades $ROOT/submission into $ROOT/results/results.json
    rubric.toml       the rubric to grade with (checks, points, visibility, deadline)
    config.json       the grading options chosen when the zip was built (accuracy mode, timeout)
    vit_autograder/   this package's source (grader/, reference/, assignments/ without the example
                      submissions) and a pyproject.toml, so the image runs the version that built it

$ROOT is /autograder; VITGRADE_AUTOGRADER_ROOT moves it (the tests lay the tree out in a temporary
folder) and VITGRADE_PYTHON picks the interpreter. Gradescope runs everything as root, often in a
container without user namespaces: the grader uses the best isolation the machine allows and the
results say which (`extra_data.sandbox` and the output's first lines).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from assignments import PROJECT_ROOT
from grader import __version__
from grader.lms.common import needs_regrade
from grader.lms.release import zip_bytes
from grader.pyproject import PROJECT, Distribution, project_requirements
from grader.report import Report, write_atomic
from grader.rubric import Rubric, load_rubric

DEFAULT_ROOT = Path("/autograder")
PACKAGES = ("grader", "reference", "assignments")
SOURCE_DIR = "vit_autograder"

SETUP_SH = """\
#!/usr/bin/env bash
# Gradescope runs this once, as root, in /autograder/source, when it builds the autograder image.
set -euo pipefail
cd "$(dirname "$0")"
if command -v apt-get >/dev/null 2>&1; then
  # bubblewrap: the sandbox's best isolation (used only where the container allows namespaces).
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \\
    python3 python3-pip python3-venv bubblewrap >/dev/null || echo "setup.sh: apt-get failed; continuing"
fi
python3 -m pip install --quiet --disable-pip-version-check --break-system-packages ./{source} 2>/dev/null \\
  || python3 -m pip install --quiet --disable-pip-version-check ./{source}
# CIFAR-10 for the accuracy check; without it the check is reported skipped with the reason.
VITGRADE_DATA=/autograder/source/data python3 -m grader data download \\
  || echo "setup.sh: CIFAR-10 not downloaded; train.accuracy will be skipped"
"""

RUN_AUTOGRADER = """\
#!/usr/bin/env bash
# Gradescope runs this, as root, for each submission: grade $ROOT/submission into
# $ROOT/results/results.json. VITGRADE_AUTOGRADER_ROOT / VITGRADE_PYTHON override the root and interpreter.
set -uo pipefail
ROOT="${{VITGRADE_AUTOGRADER_ROOT:-/autograder}}"
export VITGRADE_DATA="${{VITGRADE_DATA:-$ROOT/source/data}}"
exec "${{VITGRADE_PYTHON:-python3}}" -m grader.lms.gradescope_autograder --root "$ROOT"
"""


def distribution() -> Distribution:
    """What the copy of the grader in the zip says of itself: the project's name, version and requirements."""
    return Distribution(PROJECT, __version__, tuple(project_requirements()), PACKAGES,
                        {"assignments": ("**/*",), "grader": ("**/*.html", "**/*.j2", "**/*.css", "*.npz")})


def build_autograder(dest: Path, rubric: Rubric, *, accuracy: str = "auto", timeout: float | None = None) -> Path:
    """Write Gradescope's autograder zip to `dest` (see the module docstring for its layout)."""
    entries: dict[str, bytes] = {}
    ignore = re.compile(r"(^|/)(__pycache__|examples)(/|$)|\.pyc$")
    for package in PACKAGES:
        root = PROJECT_ROOT / package
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(PROJECT_ROOT).as_posix()
            if path.is_file() and not ignore.search(relative):
                entries[f"{SOURCE_DIR}/{relative}"] = path.read_bytes()
    entries[f"{SOURCE_DIR}/pyproject.toml"] = distribution().pyproject().encode()
    entries["rubric.toml"] = rubric.path.read_bytes()
    entries["config.json"] = json.dumps({"accuracy": accuracy, "timeout": timeout, "built_with": __version__},
                                        indent=2).encode()
    entries["setup.sh"] = SETUP_SH.format(source=SOURCE_DIR).encode()
    entries["run_autograder"] = RUN_AUTOGRADER.format().encode()
    data = zip_bytes(entries, executable={"setup.sh", "run_autograder"})
    write_atomic(dest, data)
    return dest


def render_results(report: Report, rubric: Rubric) -> str:
    """results.json for the student: Gradescope's per-test visibility from the rubric; `hidden` checks left out
    (their results stay in the instructor's own grading), `after_due_date` ones hidden by Gradescope until then."""
    from grader.render.gradescope import render_gradescope

    visible = Report.from_dict(report.to_dict())
    visible.checks = [c for c in report.checks if rubric.visibility_of(c.id) != "hidden"]
    # The penalty is a share of the points this results.json counts (hidden checks are not among them).
    percent = float(report.late.get("penalty_percent", 0.0))
    visible.late = dict(report.late, penalty=round(visible.max_score * percent / 100, 4)) if report.late else {}
    results = json.loads(render_gradescope(visible, visibility=rubric.visibility))
    isolation = report.sandbox.get("isolation", "unknown")
    header = f"sandbox isolation: {isolation}" + (" (the container allows no namespaces)" if isolation == "none" else "")
    if visible.penalty and visible.status == "graded":  # the late policy: Gradescope shows the final score
        results["score"] = visible.final_score
        header += f"\nlate: {visible.late.get('reason', '')}; raw score {visible.score:g}, penalty " \
                  f"{visible.penalty:g}, final score {visible.final_score:g}"
    results["output"] = header + ("\n" + results["output"] if results.get("output") else "")
    results.setdefault("extra_data", {})["sandbox"] = report.sandbox
    return json.dumps(results, indent=2, ensure_ascii=False)


def grader_failure(message: str) -> str:
    """results.json when the autograder itself failed: says so, so no student takes it for their grade."""
    return json.dumps({"score": 0.0, "visibility": "visible", "tests": [], "extra_data": {"fault": "grader"},
                       "output": "The autograder failed on the grader's side, not because of your submission; "
                                 f"the course staff will regrade it.\n{message}"}, indent=2, ensure_ascii=False)


def run(root: Path = DEFAULT_ROOT) -> int:
    """Grade root/submission with root/source's rubric and options into root/results/results.json."""
    results = root / "results" / "results.json"
    try:
        source = root / "source"
        rubric = load_rubric(source / "rubric.toml")
        config = json.loads((source / "config.json").read_text("utf-8")) if (source / "config.json").is_file() else {}
        report = _grade(root / "submission", rubric, config)
        if needs_regrade(report):  # the sandbox or the grader failed: not the student's points to lose
            raise RuntimeError(report.error or "; ".join(c.message for c in report.checks if c.status == "error"))
        text = render_results(report, rubric)
    except Exception as exc:  # a grader fault must still leave a results.json that says so
        write_atomic(results, grader_failure(f"{type(exc).__name__}: {exc}"))
        print(f"vitgrade autograder: grader failure: {exc}", file=sys.stderr)
        return 1
    write_atomic(results, text)
    print(f"vitgrade autograder: {report.score:g} / {report.max_score:g}, sandbox {report.sandbox.get('isolation')}")
    return 0


def _grade(submission: Path, rubric: Rubric, config: dict) -> Report:
    from grader.batch.grading import grade_submission
    from grader.options import resolve
    from grader.rubric.late import file_time
    from grader.rubric.limits import worker_limits
    from grader.sandbox.preflight import require_preflight

    if not submission.is_dir() or not any(submission.iterdir()):
        return Report.failure("submission", "submission", "Gradescope delivered no files")
    # The container decides the isolation level: a known-good submission through the same sandbox first
    # (GraderBroken, with the sandbox's own error, ends in a results.json that says the grader failed).
    # Resolved here, on Gradescope's machine: `auto` is full where its container has a GPU.
    options = resolve(config.get("accuracy", "auto"), timeout=config.get("timeout"))
    checked = require_preflight(worker_limits(rubric, options))
    print(f"vitgrade autograder: {checked.describe()}")
    # Grade a copy: student code runs sandboxed, but the folder it came from stays as uploaded.
    with tempfile.TemporaryDirectory(prefix="vitgrade-gs-") as scratch:
        copy = Path(scratch) / "submission"
        shutil.copytree(submission, copy)
        report = grade_submission(copy, options, rubric=rubric, student_id="submission")
    report.submission = "submission"
    if rubric.late:
        metadata = submission.parent / "submission_metadata.json"
        submitted = _metadata_time(metadata) or file_time(submission)
        report.late = rubric.late.assess(submitted, report.max_score)
    return report


def _metadata_time(path: Path) -> datetime | None:
    """The submission time Gradescope records in submission_metadata.json (created_at)."""
    try:
        created = json.loads(path.read_text("utf-8")).get("created_at")
        return datetime.fromisoformat(created.replace("Z", "+00:00")).astimezone(timezone.utc) if created else None
    except (OSError, ValueError, AttributeError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Grade a Gradescope submission (run by run_autograder).")
    parser.add_argument("--root", type=Path, default=Path(os.environ.get("VITGRADE_AUTOGRADER_ROOT", DEFAULT_ROOT)))
    return run(parser.parse_args(argv).root)


if __name__ == "__main__":
    sys.exit(main())
