"""Assignment files shipped with the package: handouts, rubrics and example submissions."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent
PROJECT_ROOT = ROOT.parent  # where the packages grader/, reference/ and assignments/ sit


def assignment_dir(name: str = "vit_cifar10") -> Path:
    """The folder of one assignment (handout sources, rubric, examples)."""
    return ROOT / name
