"""A CSV file edited in place: only the cells that change are rewritten, every other byte stays as exported.

Python's csv module normalises quoting and line endings when it writes a file back, and pandas
reformats numbers ("7" -> "7.0") and empty cells. An LMS export goes back to the LMS, so its rows
must come back as they were: this module keeps each field's raw text (quotes included), the
separators, the line endings and a byte-order mark, and rewrites only the fields that are set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BOM = "\ufeff"


class CsvFormatError(ValueError):
    """The file is not a CSV this module can edit; the message names the file and the line."""


@dataclass
class Record:
    """One CSV record: raw field texts (quotes kept) and the line ending that closed it ("" at EOF)."""

    raw: list[str]
    ending: str

    @property
    def values(self) -> list[str]:
        return [unquote(text) for text in self.raw]

    def value(self, index: int) -> str:
        return unquote(self.raw[index]) if index < len(self.raw) else ""

    def set(self, index: int, value: str) -> None:
        if index >= len(self.raw):
            raise IndexError(f"record has {len(self.raw)} fields, cannot set field {index + 1}")
        self.raw[index] = quote(value, was_quoted=self.raw[index].startswith('"'))


def unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return text[1:-1].replace('""', '"')
    return text


def quote(value: str, was_quoted: bool = False) -> str:
    """CSV text for `value`: quoted when it must be, or when the exporter quoted this field."""
    if was_quoted or any(ch in value for ch in ',"\r\n') or value != value.strip():
        return '"' + value.replace('"', '""') + '"'
    return value


@dataclass
class CsvTable:
    """The records of a CSV file with the bytes around them, so `text()` gives the file back."""

    records: list[Record]
    bom: bool = False

    @property
    def header(self) -> list[str]:
        return self.records[0].values

    def text(self) -> str:
        body = "".join(",".join(r.raw) + r.ending for r in self.records)
        return (BOM if self.bom else "") + body

    def data(self) -> bytes:
        return self.text().encode("utf-8")


def parse(text: str, source: str = "CSV") -> list[Record]:
    """Split CSV text into records, keeping each field's raw text (RFC 4180: quotes, doubled quotes,
    separators and line breaks inside quotes). Linear in the length of the text."""
    records: list[Record] = []
    raw: list[str] = []
    start = 0  # start of the current field
    i, n = 0, len(text)
    in_quotes = False
    line = 1
    while i < n:
        ch = text[i]
        if in_quotes:
            if ch == '"':
                if i + 1 < n and text[i + 1] == '"':
                    i += 2
                    continue
                in_quotes = False
                if i + 1 < n and text[i + 1] not in ",\r\n":
                    raise CsvFormatError(f"{source} line {line}: text after a closing quote")
            elif ch == "\n":
                line += 1
            i += 1
            continue
        if ch == '"':
            if i != start:
                raise CsvFormatError(f"{source} line {line}: a quote inside an unquoted field")
            in_quotes = True
            i += 1
        elif ch == ",":
            raw.append(text[start:i])
            i += 1
            start = i
        elif ch in "\r\n":
            ending = "\r\n" if text.startswith("\r\n", i) else ch
            raw.append(text[start:i])
            records.append(Record(raw, ending))
            raw = []
            i += len(ending)
            start = i
            line += 1
        else:
            i += 1
    if in_quotes:
        raise CsvFormatError(f"{source}: a quoted field is never closed")
    if start < n or raw:
        raw.append(text[start:n])
        records.append(Record(raw, ""))
    return records


def read_table(path: Path) -> CsvTable:
    """Read an LMS export (UTF-8, with or without a byte-order mark)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CsvFormatError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CsvFormatError(f"{path}: not UTF-8 ({exc}); export it again from the LMS as UTF-8") from None
    bom = text.startswith(BOM)
    records = parse(text[1:] if bom else text, source=str(path))
    if not records:
        raise CsvFormatError(f"{path}: empty file")
    return CsvTable(records=records, bom=bom)
