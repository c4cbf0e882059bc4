"""The course's rubric: points, tolerances, the training recipe, visibility and the late policy."""

from __future__ import annotations

from grader.rubric.model import (
    COMPILE_MODES,
    DEFAULT_RUBRIC,
    Rubric,
    RubricError,
    Tolerance,
    instructor_only,
    load_rubric,
)

__all__ = ["COMPILE_MODES", "DEFAULT_RUBRIC", "Rubric", "RubricError", "Tolerance", "instructor_only", "load_rubric"]
