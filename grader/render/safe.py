"""Text from a submission made safe to write anywhere: no lone surrogates, control characters or
terminal escapes, whatever the student's code printed or raised.

Applied once at the boundary (the Report a grading returns, before anything is written or printed),
so that a message like `chr(0xD800)` cannot stop writing its report, JUnit XML stays well-formed
(XML 1.0 forbids most control characters), and a terminal or TA sheet shows no escape sequences.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

# Terminal escape sequences (CSI such as colours, OSC such as titles; bounded, so the scan is linear).
_ESCAPE = re.compile(r"\x1b\[[0-?]{0,64}[ -/]{0,16}[@-~]|\x1b\][^\x07\x1b]{0,512}(?:\x07|\x1b\\)?|\x1b[@-_]?")
# C0 and C1 controls except tab, newline and carriage return; lone surrogates; the two non-characters
# XML 1.0 forbids.
_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
REPLACEMENT = "\ufffd"


def clean_text(text: str) -> str:
    """`text` without escape sequences, with other forbidden characters shown as U+FFFD."""
    if not isinstance(text, str):
        return text
    return _FORBIDDEN.sub(REPLACEMENT, _ESCAPE.sub("", text))


def clean_value(value: Any) -> Any:
    """clean_text over every string of a JSON-like value (dict keys too)."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_value(k): clean_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_value(v) for v in value]
    return value


def clean_report(report):
    """The same report with every string field cleaned (in place; returned for convenience)."""
    for item in [report, *report.checks]:
        for field in dataclasses.fields(item):
            if field.name in ("checks", "attachments"):
                continue
            setattr(item, field.name, clean_value(getattr(item, field.name)))
    return report
