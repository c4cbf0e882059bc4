"""CSV files that people open in spreadsheets: cells that cannot run as formulas, read back as written.

OWASP's advice on CSV injection: a cell starting with `=`, `+`, `-`, `@`, a tab or a carriage return
is a formula to Excel, LibreOffice and Google Sheets, so it is written with a leading `'` (which
spreadsheets show as text). Reading strips that quote again, so a TA sheet goes back unchanged.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value: object) -> object:
    """`value` as a cell no spreadsheet evaluates (text only; numbers stay numbers)."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def restore(value: str) -> str:
    """The text `neutralise` was given."""
    return value[1:] if value.startswith("'") and value[1:].startswith(FORMULA_STARTS) else value


def to_safe_csv(frame: pd.DataFrame) -> str:
    """The frame as CSV with every text cell neutralised."""
    safe = frame.copy()
    for column in safe.columns:
        if not pd.api.types.is_numeric_dtype(safe[column]):
            safe[column] = safe[column].map(neutralise)
    return safe.to_csv(index=False)


def read_text_csv(path: Path, what: str) -> pd.DataFrame:
    """Every cell as the text written ("" for an empty cell): ids such as `NA`, `None` or `null` stay ids,
    and neutralised cells are restored. Raises ValueError naming `what` and the file."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[])
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"{what} {path}: cannot read it as CSV ({exc})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame.map(restore)
