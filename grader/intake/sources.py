"""Read submission files safely: notebooks, Python files, zip archives and folders."""

from __future__ import annotations

import json
import re
import stat
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from grader.intake.budget import MAX_FOLDER_FILES, Deadline, IntakeError
from grader.intake.code import REQUIRED_CLASSES, CodeUnit
from grader.intake.pictures import MAX_PICTURES, AnswerPictures, PictureBudget, extract_pictures, output_pictures

MAX_FILE_BYTES = 50 * 1024**2  # a notebook with many plots stays well below this
MAX_ZIP_TOTAL_BYTES = 200 * 1024**2
MAX_ZIP_MEMBERS = MAX_FOLDER_FILES
MAX_ANSWER_CHARS = 100_000  # per answer cell, pictures taken out; the report and the TA sheet show it
MAX_ZIP_RATIO = 200  # uncompressed / compressed; text compresses ~5-10x, bombs 1000x+
# Answer cells are tagged task1..task3, optionally with a part ("task1-diagram"); the tag names picture files.
ANSWER_TAG = re.compile(r"task[123](-[a-z0-9][a-z0-9-]{0,40})?")
IGNORED_PARTS = {"__MACOSX", ".ipynb_checkpoints", "__pycache__", ".git"}


@dataclass
class SourceFiles:
    """What a submission contributes: code units, tagged answers (text, and pictures as PNG) and warnings."""

    units: list[CodeUnit] = field(default_factory=list)
    answers: dict[str, str] = field(default_factory=dict)
    answer_pictures: dict[str, list[bytes]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    local_modules: frozenset[str] = frozenset()


def read_text(path: Path) -> str:
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise IntakeError(f"{path.name} is {size / 1024**2:.0f} MB, over the {MAX_FILE_BYTES // 1024**2} MB limit")
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise IntakeError(f"{path.name} is a binary file, not a notebook or Python source")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise IntakeError(f"{path.name} is not UTF-8 text (byte {exc.start})") from None


def read_notebook(path: Path, root: Path | None = None, deadline: Deadline | None = None) -> SourceFiles:
    """Code cells and tagged answers; `root` is the submission's folder when the notebook came in one
    (pictures the answers show from files must lie inside it)."""
    import nbformat  # imported here: only notebooks need it, and `vitgrade bench/train` start faster without it

    deadline = deadline or Deadline()
    text = read_text(path)
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IntakeError(f"{path.name} is not a valid notebook: JSON error at line {exc.lineno}, column {exc.colno}") from None
    except (RecursionError, MemoryError):
        raise IntakeError(f"{path.name} is not a readable notebook: its JSON is nested too deeply") from None
    if not isinstance(raw, dict) or "cells" not in raw and "worksheets" not in raw:
        raise IntakeError(f"{path.name} is JSON but not a Jupyter notebook (no cells)")
    try:
        nb = nbformat.reads(text, as_version=4)  # upgrades nbformat 3 notebooks
    except Exception as exc:  # nbformat raises several types for malformed notebooks
        raise IntakeError(f"{path.name} is not a readable notebook: {type(exc).__name__}: {str(exc)[:300]}") from None
    found = SourceFiles(files=[path.name])
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as exc:
        found.warnings.append(f"{path.name} does not fully follow the notebook format ({exc.message[:300]}); "
                              "read anyway")
    pictures = PictureBudget(deadline)
    code_cells = 0
    for index, cell in enumerate(nb.cells, start=1):
        deadline.check(f"cell {index}")
        source = cell.get("source", "")
        source = "".join(map(str, source)) if isinstance(source, list) else str(source)
        metadata = cell.get("metadata")
        tags = metadata.get("tags", []) if isinstance(metadata, dict) else []
        tags = [t for t in tags if isinstance(t, str) and ANSWER_TAG.fullmatch(t)] if isinstance(tags, list) else []
        if tags:
            # Decode no more pictures than the answers this cell belongs to still have room for.
            room = min(MAX_PICTURES - len(found.answer_pictures.get(t, [])) for t in [t for t in tags if "-" in t] or tags)
            if cell.get("cell_type") == "code":
                answer = output_pictures(source, cell.get("outputs"), pictures, room)
            else:
                answer = extract_pictures(source, cell.get("attachments"), path.parent, root, pictures, room)
            if len(answer.text) > MAX_ANSWER_CHARS:
                answer.warnings.append(f"the answer is {len(answer.text):,} characters long; only the first "
                                       f"{MAX_ANSWER_CHARS:,} are kept")
                answer.text = answer.text[:MAX_ANSWER_CHARS]
            _add_answer(found, tags, answer)
        if cell.get("cell_type") == "code":
            code_cells += 1
            if source.strip():
                found.units.append(CodeUnit(origin=code_cell_name(path.name, code_cells, cell), source=source))
    if not found.units:
        raise IntakeError(f"{path.name} has no code cells")
    return found


def code_cell_name(notebook: str, number: int, cell: dict) -> str:
    """How a student finds a code cell: its number among the code cells (markdown cells do not count), and the
    `In [n]` Jupyter shows beside it when it ran."""
    count = cell.get("execution_count")
    ran = f" (In [{count}])" if isinstance(count, int) and not isinstance(count, bool) else ""
    return f"{notebook} code cell {number}{ran}"


def _add_answer(found: SourceFiles, tags: list[str], answer: AnswerPictures) -> None:
    """Add a cell to the answers it is tagged with ("task1" and "task1-diagram"); its pictures belong to
    the most specific tags (those naming a part), so each picture is kept once."""
    for tag in tags:
        previous = found.answers.get(tag)
        found.answers[tag] = f"{previous}\n\n{answer.text}" if previous else answer.text
    found.warnings += [f"answer cell {', '.join(tags)}: {warning}" for warning in answer.warnings]
    if not answer.pictures:
        return
    for tag in [t for t in tags if "-" in t] or tags:
        pictures = found.answer_pictures.setdefault(tag, [])  # several cells may share a tag
        if len(pictures) + len(answer.pictures) > MAX_PICTURES:
            found.warnings.append(f"answer {tag}: more than {MAX_PICTURES} pictures; the first "
                                  f"{MAX_PICTURES} are shown")
        pictures += answer.pictures[: MAX_PICTURES - len(pictures)]


def read_python(path: Path) -> SourceFiles:
    text = read_text(path)
    if not text.strip():
        raise IntakeError(f"{path.name} is empty")
    # Split on "# %%" cell markers (VS Code / Jupytext), so one broken cell does not sink the file.
    chunks: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.startswith("# %%") and chunks[-1]:
            chunks.append([])
        chunks[-1].append(line)
    units = [
        CodeUnit(origin=f"{path.name}" if len(chunks) == 1 else f"{path.name} cell {i}", source="\n".join(c))
        for i, c in enumerate(chunks, start=1)
    ]
    return SourceFiles(units=units, files=[path.name])


def extract_zip(archive: Path, into: Path) -> Path:
    """Extract `archive` below `into`; every failure is an IntakeError (see _extract_zip)."""
    try:
        return _extract_zip(archive, into)
    except IntakeError:
        raise
    except (RuntimeError, NotImplementedError) as exc:  # zipfile's words for encrypted / unsupported members
        raise IntakeError(f"{archive.name}: cannot unpack it ({exc}); submit a zip without a password, "
                          "made by your system's own zip tool") from None
    except Exception as exc:  # a malformed archive can make zipfile raise ValueError, struct.error, ...
        raise IntakeError(f"{archive.name} is not a readable zip archive ({type(exc).__name__}: {exc})") from None


def _extract_zip(archive: Path, into: Path) -> Path:
    """Extract `archive` below `into`, refusing traversal, links, bombs and oversize archives."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise IntakeError(f"{archive.name} is not a readable zip archive ({exc})") from None
    with zf:
        members = zf.infolist()
        if len(members) > MAX_ZIP_MEMBERS:
            raise IntakeError(f"{archive.name} holds {len(members)} entries, over the limit of {MAX_ZIP_MEMBERS}")
        total = sum(m.file_size for m in members)
        compressed = max(1, sum(m.compress_size for m in members))
        if total > MAX_ZIP_TOTAL_BYTES:
            raise IntakeError(f"{archive.name} unpacks to {total / 1024**2:.0f} MB, over the limit")
        if total > 1024**2 and total / compressed > MAX_ZIP_RATIO:
            raise IntakeError(f"{archive.name} looks like a zip bomb (compression ratio {total / compressed:.0f}:1)")
        root = into.resolve()
        for member in members:
            name = member.filename
            target = (root / name).resolve()
            if (name.startswith(("/", "\\")) or ".." in Path(name).parts or not target.is_relative_to(root)
                    or (target == root and not member.is_dir())):
                raise IntakeError(f"{archive.name} contains an unsafe path: {name!r}")
            if stat.S_ISLNK(member.external_attr >> 16):
                raise IntakeError(f"{archive.name} contains a symbolic link: {name!r}")
        written = 0
        for member in members:
            if member.is_dir():
                continue
            target = root / member.filename
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                # Count real bytes, not the sizes the archive claims.
                with zf.open(member) as src, open(target, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > MAX_ZIP_TOTAL_BYTES:
                            raise IntakeError(f"{archive.name} unpacks to more than its declared size; refused")
                        dst.write(chunk)
            except (OSError, zipfile.BadZipFile, EOFError) as exc:  # clashing names, corrupt members
                raise IntakeError(f"{archive.name}: cannot unpack {member.filename!r} ({exc})") from None
    return root


def _score_notebook(path: Path) -> tuple[int, float, str]:
    """Rank candidates: most required classes defined, then newest, then name."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")[:MAX_FILE_BYTES]
    except OSError:
        text = ""
    defined = sum(f"class {name}" in text for name in REQUIRED_CLASSES)
    return defined, path.stat().st_mtime, path.name


def read_folder(folder: Path, deadline: Deadline | None = None, archives_too: bool = True) -> SourceFiles:
    """Pick the submission inside a folder (documented in the README's intake section).

    One notebook: that one. Several: the one defining the most required classes, then the newest;
    the others are named in a warning. No notebook: every .py file, in name order. Neither: the
    .zip inside (how Moodle delivers an upload: one folder per student holding the zip the student
    handed in), read as if it were the submission.
    """
    warnings: list[str] = []
    notebooks: list[Path] = []
    scripts: list[Path] = []
    deadline = deadline or Deadline()
    entries, total = [], 0
    for path in folder.rglob("*"):  # the same limits as a zip: a folder is often an unpacked one
        entries.append(path)
        total += path.lstat().st_size if path.is_file() else 0
        if len(entries) > MAX_FOLDER_FILES:
            raise IntakeError(f"{folder.name} holds more than {MAX_FOLDER_FILES} files and folders; submit only "
                              "the notebook (and the pictures it shows)")
        if total > MAX_ZIP_TOTAL_BYTES:
            raise IntakeError(f"{folder.name} holds more than {MAX_ZIP_TOTAL_BYTES // 1024**2} MB of files; submit "
                              "only the notebook (and the pictures it shows)")
    archives: list[Path] = []
    for path in sorted(entries):
        relative = path.relative_to(folder)
        if IGNORED_PARTS & set(relative.parts) or any(p.startswith("._") for p in relative.parts):
            continue
        if path.is_symlink():
            warnings.append(f"{relative} is a symbolic link and was ignored")
            continue
        if path.suffix.lower() == ".ipynb" and path.is_file():
            notebooks.append(path)
        elif path.suffix.lower() == ".py" and path.is_file():
            scripts.append(path)
        elif path.suffix.lower() == ".zip" and path.is_file():
            archives.append(path)
    if notebooks:
        deadline.check("choosing the notebook")
        chosen = max(notebooks, key=_score_notebook)
        if len(notebooks) > 1:
            others = ", ".join(str(p.relative_to(folder)) for p in notebooks if p != chosen)
            warnings.append(
                f"{len(notebooks)} notebooks found; graded {chosen.relative_to(folder)} (defines the most "
                f"required classes, then newest); ignored: {others}"
            )
        found = read_notebook(chosen, root=folder, deadline=deadline)
    elif scripts:
        found = SourceFiles(local_modules=frozenset(p.stem for p in scripts))
        for script in scripts:
            part = read_python(script)
            found.units += part.units
            found.files += [str(script.relative_to(folder))]
    elif archives and archives_too:
        return _read_inner_archive(folder, archives, warnings, deadline)
    else:
        raise IntakeError(f"{folder.name} contains no notebook (.ipynb) or Python (.py) file"
                          + (" (a .zip inside a .zip is not opened)" if archives else ""))
    found.warnings = warnings + found.warnings
    return found


def _read_inner_archive(folder: Path, archives: list[Path], warnings: list[str], deadline: Deadline) -> SourceFiles:
    """The submission in the folder's zip (the newest when there are several, named in a warning); a zip
    inside that zip is not opened."""
    chosen = max(archives, key=lambda p: (p.stat().st_mtime, p.name))
    if len(archives) > 1:
        others = ", ".join(str(p.relative_to(folder)) for p in archives if p != chosen)
        warnings.append(f"{len(archives)} zip archives found; graded the newest, {chosen.relative_to(folder)}; "
                        f"ignored: {others}")
    with tempfile.TemporaryDirectory(prefix="vitgrade-zip-") as tmp:
        found = read_folder(extract_zip(chosen, Path(tmp)), deadline, archives_too=False)
    found.files = [f"{chosen.relative_to(folder)}/{name}" for name in found.files]
    found.warnings = warnings + found.warnings
    return found
