"""The assignment's notebooks (student and solution, ja and en), built from the handout's source file."""

from __future__ import annotations

import re
from pathlib import Path

import jupytext
import nbformat

from assignments import PROJECT_ROOT, assignment_dir

LANGUAGES = ("ja", "en")
NOTEBOOK_STEM = "vit_cifar10"
LANG_COMMENT = re.compile(r"^(\s*)# (ja|en): ?(.*)$")
BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
INCLUDE = re.compile(r"^# INCLUDE (\S+)$")
PLACEHOLDER = {"ja": "ここを実装してください（課題のコード）", "en": "write this part of the assignment"}


def handout_source() -> Path:
    return assignment_dir() / "handout" / f"{NOTEBOOK_STEM}.py"


def notebook_name(lang: str, version: str) -> str:
    return f"{NOTEBOOK_STEM}_{lang}.ipynb" if version == "student" else f"{NOTEBOOK_STEM}_{lang}_solution.ipynb"


def build_notebook(lang: str, version: str, source: Path | None = None) -> nbformat.NotebookNode:
    """One notebook from the handout source: `lang` in ja/en, `version` in student/solution."""
    if lang not in LANGUAGES or version not in ("student", "solution"):
        raise ValueError(f"unknown language {lang!r} or version {version!r}")
    handout = jupytext.read(source or handout_source(), fmt="py:percent")
    cells = []
    for cell in handout.cells:
        meta = dict(cell.metadata)
        if meta.pop("lang", lang) != lang or meta.pop("version", version) != version:
            continue
        text = cell.source
        if cell.cell_type == "code":
            text = _code_for(text, lang, version, notebook_name(lang, version))
            new = nbformat.v4.new_code_cell(text, metadata=meta)
        else:
            new = nbformat.v4.new_markdown_cell(text, metadata=meta)
        new.id = f"cell-{len(cells) + 1:02d}"  # the same ids in both languages
        cells.append(new)
    notebook = nbformat.v4.new_notebook(cells=cells, metadata={
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "vitgrade": {"assignment": NOTEBOOK_STEM, "lang": lang, "version": version},
    })
    nbformat.validate(notebook)
    return notebook


def _code_for(text: str, lang: str, version: str, name: str) -> str:
    out: list[str] = []
    region: list[str] | None = None  # lines of the solution region being read
    for line in text.splitlines():
        stripped = line.strip()
        include = INCLUDE.match(stripped)
        if include:
            out.extend(_included(include.group(1)))
            continue
        comment = LANG_COMMENT.match(line)
        if comment:
            if comment.group(2) != lang:
                continue
            line = f"{comment.group(1)}# {comment.group(3)}"
        if stripped == BEGIN:
            region = []
            indent = line[: len(line) - len(line.lstrip())]
            continue
        if stripped == END:
            if version == "solution":
                out.extend(region)
            else:
                out.extend(r for r in region if r.strip().startswith("#"))  # the hints
                out.append(f'{indent}raise NotImplementedError("{PLACEHOLDER[lang]}")')
            region = None
            continue
        (out if region is None else region).append(line.replace("NOTEBOOK_NAME", name))
    if region is not None:
        raise ValueError(f"{BEGIN} without {END} in the handout source")
    return "\n".join(out)


def _included(relative: str) -> list[str]:
    """A package file's code without its `from __future__` line (it must open a module, not a cell)."""
    path = PROJECT_ROOT / relative
    return [line for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("from __future__")]
