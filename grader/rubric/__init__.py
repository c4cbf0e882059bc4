"""The course's rubric: points, tolerances, forbidden APIs, limits, the training recipe, visibility and the late
policy."""

from __future__ import annotations

from grader.rubric.model import (
    DEFAULT_RUBRIC,
    LIMITS,
    Rubric,
    RubricError,
    Tolerance,
    instructor_only,
    load_rubric,
)

__all__ = ["DEFAULT_RUBRIC", "LIMITS", "Rubric", "RubricError", "Tolerance", "instructor_only", "load_rubric"]
