"""Student ids from submission names, including the usual LMS download names."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

# Patterns tried in order; each needs a named group `id`. Instructors may pass their own.
LMS_PATTERNS: dict[str, str] = {
    # Moodle: "Jane Doe_123456_assignsubmission_file_"
    "moodle": r"^(?P<name>.+?)_(?P<id>\d+)_assignsubmission_\w*",
    # Canvas: "doejane_LATE_12345_67890_vit.ipynb" (the first number is the Canvas user id)
    "canvas": r"^(?P<name>[^_]+)_(?:late_)?(?P<id>\d+)_\d+_.*",
    # Gradescope export: "submission_123456789"
    "gradescope": r"^(?P<id>submission_\d+)$",
}

_UNSAFE = re.compile(r"[^\w.\-]+", re.UNICODE)


def safe_id(text: str) -> str:
    """A directory-safe id that keeps non-ASCII letters: spaces and symbols become '_'."""
    text = unicodedata.normalize("NFC", text).strip()
    text = _UNSAFE.sub("_", text).strip("._")
    return text or "unnamed"


def student_id_from_name(entry: str | Path, pattern: str | None = None) -> str:
    """Derive the student id from a file or folder name.

    With `pattern` (a regex with a group named `id`), only that pattern is tried; otherwise the
    LMS patterns above, then the name without its extension.
    """
    name = Path(entry).name
    stem = name
    for suffix in (".ipynb", ".py", ".zip"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    patterns = [pattern] if pattern else list(LMS_PATTERNS.values())
    for regex in patterns:
        match = re.match(regex, name, flags=re.IGNORECASE)
        if match and match.groupdict().get("id"):
            return safe_id(match.group("id"))
    return safe_id(stem)
