"""Student ids from submission names, including the usual LMS download names."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path

# Patterns tried in order; each needs a named group `id`. Instructors may pass their own. Each reads
# the id at the position the LMS writes it, so that text a student controls (a display name, an
# uploaded file's name) cannot put another student's id there.
LMS_PATTERNS: dict[str, str] = {
    # Moodle, "download submissions in folders" (the default since 3.1): the folder is
    # "<full name>_<participant id>_assignsubmission_file" and nothing follows the plugin name, so the id
    # is read from the end (a display name with "_200001_assignsubmission_file_" in it cannot win).
    "moodle-folder": r"^(?P<name>.+)_(?P<id>\d+)_assignsubmission_[a-z]+_?$",
    # Moodle, one flat folder: "<full name>_<participant id>_assignsubmission_file_<uploaded name>". The
    # uploaded name is the student's, so the id is read from the front: Moodle writes the full name with
    # every "_" replaced by a space (mod/assign downloader), so the first "_" ends the name.
    "moodle": r"^(?P<name>[^_]+)_(?P<id>\d+)_assignsubmission_[a-z]+_.+$",
    # Canvas: "<login>_<user id>_<submission id>_<uploaded name>", with "late_" (or "LATE_") after the login
    # for late work; the login has no "_", the uploaded name comes last.
    "canvas": r"^(?P<name>[^_]+)_(?:late_)?(?P<id>\d+)_\d+_.+$",
    # Gradescope export: one folder "submission_<submission id>" per submission.
    "gradescope": r"^(?P<id>submission_\d+)$",
}

_UNSAFE = re.compile(r"[^\w.\-]+", re.UNICODE)
# Bytes of a student id, and so of its folder name (file systems allow 255), after normalisation.
MAX_ID_BYTES = 96


def safe_id(text: str) -> str:
    """A directory-safe id that keeps non-ASCII letters: spaces and symbols become '_'.

    At most MAX_ID_BYTES bytes of UTF-8: a longer id keeps its start and ends with a digest of the
    whole, so that two long ids stay apart."""
    text = unicodedata.normalize("NFC", text).strip()
    text = _UNSAFE.sub("_", text).strip("._")  # also lone surrogates (undecodable file names): not \w
    if len(text.encode()) > MAX_ID_BYTES:
        tail = "-" + hashlib.sha256(text.encode()).hexdigest()[:10]
        head = text.encode()[: MAX_ID_BYTES - len(tail)].decode("utf-8", "ignore").rstrip("._-")
        text = head + tail
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
        match = re.match(regex, name, flags=re.IGNORECASE | re.DOTALL)
        if match and match.groupdict().get("id"):
            return safe_id(match.group("id"))
    return safe_id(stem)
