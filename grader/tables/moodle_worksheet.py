"""The columns of Moodle's offline grading worksheet ("Download grading worksheet"), read when grading (the
submission times, for the late policy) and written when exporting (grades and feedback)."""

from __future__ import annotations

import re

IDENTIFIER, GRADE, FULL_NAME, FEEDBACK = "Identifier", "Grade", "Full name", "Feedback comments"
MAXIMUM = ("Maximum Grade", "Maximum grade")
MODIFIED_GRADE = "Last modified (grade)"
CAN_CHANGE = "Grade can be changed"
SUBMITTED = "Last modified (submission)"
PARTICIPANT = re.compile(r"^\D*?(\d+)\s*$")  # "Participant 123456" (the word is translated in other languages)


def participant_id(identifier: str) -> str | None:
    match = PARTICIPANT.match(identifier.strip())
    return match.group(1) if match else None
