"""What one submission may cost the parent to read: the intake's error type, size limits and deadline.

The parent reads every submission on behalf of the whole class, so each step of the intake is
linear in the size of its input, and these limits bound the input. A limit that is hit is the
submission's problem, said in its report as an IntakeError; it never stalls the other students.
"""

from __future__ import annotations

import time

INTAKE_SECONDS = 60.0  # a real notebook is read in well under a second; pictures take the most
MAX_CODE_CHARS = 1_000_000  # all code cells / .py files together; a ViT notebook has ~20,000
MAX_CODE_LINES = 50_000  # lines (a `;` counts as one), checked before parsing; a ViT notebook has ~500
MAX_STATEMENTS = 20_000  # top-level statements of all units together; a ViT notebook has ~100
MAX_FOLDER_FILES = 2000  # entries of a submitted folder (a zip is held to the same number of members)


class IntakeError(Exception):
    """The submission cannot be read; the message is shown to the student as is."""


class Deadline:
    """The intake's wall-clock budget, checked between steps that are each bounded in size."""

    def __init__(self, seconds: float = INTAKE_SECONDS):
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def check(self, where: str) -> None:
        if time.monotonic() > self.end:
            raise IntakeError(f"reading the submission took longer than {self.seconds:.0f} s (stopped at {where}); "
                              "submit the notebook without large outputs or pictures")
