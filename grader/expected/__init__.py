"""What a correct submission computes, from one of two sources: the reference solution (`reference.py`,
the instructor's install) or test vectors (`model.VectorExpected`, the student bundle).

The checks only see the `Expected` interface; which source they get is chosen here, once per run.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from grader.expected.model import (
    GRADIENT_SAMPLES,
    PACKAGED_VECTORS,
    Expected,
    GradientChallenge,
    VectorExpected,
    VectorsError,
    as_tensor,
    inputs,
    record,
)


@functools.lru_cache(maxsize=1)
def default_expected() -> Expected:
    """The test vectors named by $VITGRADE_VECTORS or packaged with the grader, else the reference (fixed seeds:
    a self-check; instructor grading uses `challenge_expected`)."""
    named = os.environ.get("VITGRADE_VECTORS")
    if named:
        return VectorExpected(Path(named))
    if PACKAGED_VECTORS.is_file():
        return VectorExpected(PACKAGED_VECTORS)
    from grader.expected.reference import ReferenceExpected

    return ReferenceExpected()


def challenge_expected(secret: int) -> Expected:
    """Instructor grading: the reference with weights and inputs drawn from a grading run's secret seed.

    The student bundle's vectors are for self-checking only; a submission that recognises them (a lookup
    table) meets other numbers here. Without the reference (the student bundle) this is an error.
    """
    try:
        from grader.expected.reference import ReferenceExpected
    except ImportError:
        raise VectorsError("fresh grading inputs need the reference solution (the instructor's install)") from None
    return ReferenceExpected(secret)


__all__ = ["GRADIENT_SAMPLES", "PACKAGED_VECTORS", "Expected", "GradientChallenge", "VectorExpected", "VectorsError",
           "as_tensor", "challenge_expected", "default_expected", "inputs", "record"]
