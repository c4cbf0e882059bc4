"""Hostile input to the PARENT process: what the grader itself reads, names and writes.

test_adversarial.py attacks from inside the sandbox; these attacks never run any code. They target
the intake (parsing, pictures, limits), student ids, and the files written from a report. Each test
is a class of attack with several variants; linearity is shown by counting work, never by timing.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import subprocess
import sys
import unicodedata
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import nbformat
import pytest
from PIL import Image

from grader.intake import IntakeError, content_digest, load_submission
from grader.intake import code as intake_code
from grader.intake import pictures as intake_pictures
from grader.intake.naming import safe_id, student_id_from_name
from grader.report import CheckResult, Report, load_report

from .conftest import HANDOUT_SOURCE

# --- texts that made a backtracking scanner quadratic -------------------------------------------------
N = 20_000
HOSTILE_ANSWERS = {
    "open brackets": "![" * N,
    "unclosed targets": "![a](x" * N,
    "one bracket, no target": "![" * N + "]",
    "targets without a parenthesis": "![](" * N + " " * N,
    "titles without an end": '![](x "' * N,
    "img tags without src": "<img " * N,
    "img tags without end": "<img src='" * N,
    "inline code and pictures": "`a` ![](x) " * (N // 4),
    "fences": "```" * N + "~~~" * N,
}


class _CountingPattern:
    """A compiled pattern that adds to `scanned` the characters each search steps over."""

    def __init__(self, pattern, scanned: list[int]):
        self.pattern, self.scanned = pattern, scanned

    def search(self, text: str, pos: int = 0, *args):
        match = self.pattern.search(text, pos, *args)
        self.scanned[0] += (match.end() if match else len(text)) - pos
        return match


def _counting_next(monkeypatch) -> list[int]:
    """Count the characters the picture scanner's searches step over."""
    scanned = [0]
    original = intake_pictures._Next.__init__

    def init(self, text: str, pattern: str) -> None:
        original(self, text, pattern)
        self.pattern = _CountingPattern(self.pattern, scanned)

    monkeypatch.setattr(intake_pictures._Next, "__init__", init)
    monkeypatch.setattr(intake_pictures, "_HTML_SRC", _CountingPattern(intake_pictures._HTML_SRC, scanned))
    return scanned


@pytest.mark.parametrize("kind", HOSTILE_ANSWERS)
def test_picture_scan_of_an_answer_is_linear(kind, monkeypatch):
    """Item 2: the scan for pictures steps over each character a bounded number of times, whatever
    the answer (before: a regular expression that restarted at every `![`, quadratic in the answer)."""
    text = HOSTILE_ANSWERS[kind]
    scanned = _counting_next(monkeypatch)
    found = intake_pictures.extract_pictures(text)
    assert scanned[0] <= 8 * len(text), f"{kind}: {scanned[0]} characters scanned for {len(text)}"
    assert found.pictures == []


def test_picture_scanner_still_finds_what_notebooks_write():
    text = ('a ![x](attachment:a.png) b <IMG width=3 SRC="attachment:b.png"> c `![](attachment:c.png)` '
            '![t](<attachment:d.png> "title") ![](https://example.org/e.png)')
    assert [src for _, _, src in intake_pictures.references(text)] == [
        "attachment:a.png", "attachment:b.png", "attachment:c.png", "attachment:d.png", "https://example.org/e.png"]


def test_answer_text_is_bounded(tmp_path):
    from grader.intake.sources import MAX_ANSWER_CHARS

    path = _notebook(tmp_path / "long.ipynb", [("markdown", "word " * MAX_ANSWER_CHARS, ["task2"])])
    submission = load_submission(path)
    assert len(submission.answers["task2"]) == MAX_ANSWER_CHARS
    assert any("only the first" in w for w in submission.warnings)


# --- every failure of the intake is an IntakeError with a message ---------------------------------------
def _encrypted_zip(path: Path) -> Path:
    """A zip whose member says it is encrypted (zipfile raises RuntimeError: password required)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("sub.py", HANDOUT_SOURCE)
    data = bytearray(buffer.getvalue())
    local = data.find(b"PK\x03\x04")
    central = data.find(b"PK\x01\x02")
    for offset in (local + 6, central + 8):  # general purpose flags: bit 0, encrypted
        struct.pack_into("<H", data, offset, struct.unpack_from("<H", data, offset)[0] | 1)
    path.write_bytes(bytes(data))
    return path


BROKEN_INTAKE = {
    "unary chain (MemoryError in ast.parse)": ("deep.py", lambda p: p.write_text("x = " + "-" * 200_000 + "1\n")),
    "binary chain (RecursionError in ast.parse)": ("chain.py", lambda p: p.write_text("x = 1" + "+1" * 200_000)),
    "lambda chain": ("lambdas.py", lambda p: p.write_text("x = " + "lambda: " * 50_000 + "1")),
    "nested JSON (RecursionError in json)": ("deep.ipynb", lambda p: p.write_text(
        '{"cells": ' + "[" * 100_000 + "]" * 100_000 + ', "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')),
    "encrypted zip member (RuntimeError)": ("locked.zip", _encrypted_zip),
    "notebook with a non-dict cell metadata": ("meta.ipynb", lambda p: p.write_text(json.dumps({
        "cells": [{"cell_type": "code", "source": "class A: pass", "metadata": [], "outputs": [],
                   "execution_count": None}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))),
}


@pytest.mark.parametrize("kind", BROKEN_INTAKE)
def test_every_intake_failure_is_an_intake_error(kind, tmp_path):
    """Item 3: whatever breaks the reading, the student gets an IntakeError with a message."""
    name, make = BROKEN_INTAKE[kind]
    path = tmp_path / name
    make(path)
    with pytest.raises(IntakeError) as raised:
        load_submission(path)
    assert str(raised.value).strip()


def test_a_fifo_named_like_a_submission_is_refused_not_read(tmp_path):
    """Reading a FIFO blocks until someone writes: the grader would wait forever."""
    import os

    os.mkfifo(tmp_path / "pipe.py")
    with pytest.raises(IntakeError, match="not a regular file"):
        load_submission(tmp_path / "pipe.py")
    assert content_digest(tmp_path / "pipe.py")


@pytest.mark.slow
def test_check_exits_2_without_a_traceback_on_broken_intake(tmp_path):
    for kind in ("unary chain (MemoryError in ast.parse)", "encrypted zip member (RuntimeError)"):
        name, make = BROKEN_INTAKE[kind]
        path = tmp_path / name
        make(path)
        done = subprocess.run([sys.executable, "-m", "grader", "check", str(path), "--accuracy", "off"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "Traceback" not in done.stdout + done.stderr


SHARED_CODE = """
def helper(a, b):
    total = 0
    for i in range(a):
        for j in range(b):
            total += i * j - (i + j) // 3
            if total > 1000:
                total = total % 97 + sum(k * k for k in range(j))
    return total * 7 + a - b, [x ** 2 for x in range(a) if x % 3 == 1]
"""


def test_the_summary_never_reads_a_submission_again(tmp_path, monkeypatch):
    """Item 3: summary.html and the TA sheet come from the reports (and code.txt beside them): a
    submission that breaks reading cannot break them, on this run or any rerun."""
    import grader.intake
    from grader.batch.gradebook import write_summary
    from grader.batch.run import Entry, write_student
    from grader.rubric import load_rubric

    for student in ("alice", "bob"):
        report = Report(student=student, submission=f"{student}.py", status="graded", checks=[])
        report.code = SHARED_CODE
        write_student(tmp_path, report, gradescope=False)
    monkeypatch.setattr(grader.intake, "_load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("read again")))
    entries = [Entry("alice", tmp_path / "gone.py"), Entry("bob", tmp_path / "gone.ipynb")]
    write_summary(tmp_path, entries, None, load_rubric())
    assert (tmp_path / "ta_sheet.csv").is_file()
    assert "shared fragments" in (tmp_path / "summary.html").read_text(encoding="utf-8")  # a pair, from code.txt


# --- intake cost: linear in statements, bounded, under a deadline ----------------------------------------
def test_intake_work_is_linear_in_statements(tmp_path, monkeypatch):
    """Item 7: a chain of 2,000 assignments the required class needs is walked once per statement
    (before: a fixpoint over all statements per newly needed name, and a split of the whole source per
    statement: quadratic)."""
    n = 2000
    chain = "x0 = 1\n" + "".join(f"x{i} = x{i - 1} + 1\n" for i in range(1, n)) + f"class FNN:\n    a = x{n - 1}\n"
    path = tmp_path / "chain.py"
    path.write_text("import torch\n" + chain)
    calls = {"bound": 0, "parse": 0}
    for name, key in (("_bound_names", "bound"), ("parse", "parse")):
        original = getattr(intake_code, name)

        def counted(*args, _original=original, _key=key):
            calls[_key] += 1
            return _original(*args)

        monkeypatch.setattr(intake_code, name, counted)
    submission = load_submission(path)
    assert f"x{n - 1} = x{n - 2} + 1" in submission.code and "x0 = 1" in submission.code
    assert calls["bound"] <= 2 * (n + 2), calls
    assert calls["parse"] <= 2, calls


def test_intake_refuses_code_past_its_limits(tmp_path):
    from grader.intake.budget import MAX_STATEMENTS

    path = tmp_path / "many.py"
    path.write_text("class FNN:\n    pass\n" + "x = 1\n" * (MAX_STATEMENTS + 1))  # under the line limit
    with pytest.raises(IntakeError, match="top-level statements"):
        load_submission(path)
    big = tmp_path / "big.py"
    big.write_text("class FNN:\n    pass\n" + "# padding " * 120_000)
    with pytest.raises(IntakeError, match="characters long"):
        load_submission(big)
    for text in ("x = 1\n" * 60_000, "x = 1;" * 60_000):  # refused before parsing: lines, `;` counted
        (tmp_path / "lines.py").write_text("class FNN:\n    pass\n" + text)
        with pytest.raises(IntakeError, match="lines"):
            load_submission(tmp_path / "lines.py")


def test_intake_runs_under_a_deadline(tmp_path):
    path = tmp_path / "ok.py"
    path.write_text(HANDOUT_SOURCE)
    with pytest.raises(IntakeError, match="took longer than"):
        load_submission(path, seconds=-1)


# --- pictures: decoded once, caps before decoding ----------------------------------------------------------
def _png(side: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (side, side), (10, 120, 200)).save(out, "PNG")
    return out.getvalue()


def _notebook(path: Path, cells: list[tuple[str, str, list[str]]], attachments: dict | None = None) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell(HANDOUT_SOURCE))
    for kind, source, tags in cells:
        cell = nbformat.v4.new_markdown_cell(source) if kind == "markdown" else nbformat.v4.new_code_cell(source)
        cell.metadata["tags"] = tags
        if attachments and kind == "markdown":
            cell.attachments = attachments
        nb.cells.append(cell)
    path.write_text(nbformat.writes(nb), encoding="utf-8")
    return path


def test_each_distinct_picture_is_decoded_once_and_caps_apply_before_decoding(tmp_path, monkeypatch):
    """Item 13: one picture referenced six times in each of many answer cells (and data URIs of many
    distinct ones) is decoded once; nothing past the per-answer, per-submission and pixel caps is
    decoded at all."""
    decodes = []
    original = intake_pictures.to_png
    monkeypatch.setattr(intake_pictures, "to_png", lambda data, allow=None: decodes.append(1) or original(data, allow))
    same = {"p.png": {"image/png": base64.b64encode(_png(64)).decode()}}
    cells = [("markdown", "![](attachment:p.png) " * 6, [f"task1-part{i}"]) for i in range(20)]
    submission = load_submission(_notebook(tmp_path / "same.ipynb", cells, same))
    assert len(decodes) == 1
    assert all(len(p) == 6 for p in submission.answer_pictures.values())

    decodes.clear()  # many distinct pictures: the submission's cap on references holds before decoding
    distinct = [("markdown", f"![](data:image/png;base64,{base64.b64encode(_png(8 + i)).decode()})",
                 [f"task2-part{i}"]) for i in range(intake_pictures.MAX_SUBMISSION_PICTURES + 10)]
    submission = load_submission(_notebook(tmp_path / "distinct.ipynb", distinct))
    assert len(decodes) == intake_pictures.MAX_SUBMISSION_PICTURES
    assert any("in the submission" in w for w in submission.warnings)

    decodes.clear()  # one answer's cap (six) applies before decoding, also across cells sharing a tag
    shared = [("markdown", f"![](data:image/png;base64,{base64.b64encode(_png(8 + i)).decode()})", ["task3-x"])
              for i in range(10)]
    load_submission(_notebook(tmp_path / "shared.ipynb", shared))
    assert len(decodes) == intake_pictures.MAX_PICTURES

    monkeypatch.setattr(intake_pictures, "MAX_SUBMISSION_PIXELS", 64 * 64 * 2)  # pixels: counted from headers
    budget = intake_pictures.PictureBudget()
    budget.png(_png(64))
    budget.png(_png(63))
    with pytest.raises(intake_pictures.PictureError, match="together"):
        budget.png(_png(62))


# --- student ids ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, expected", [
    # Moodle, in folders: the id is the number before the plugin name at the END
    ("Aaron X_200001_assignsubmission_file__300009_assignsubmission_file", "300009"),
    ("Aaron X_200001_assignsubmission_file__300009_assignsubmission_file_", "300009"),
    ("Jane Doe_300009_assignsubmission_onlinetext_", "300009"),
    # Moodle, flat: Moodle writes the name with "_" replaced by spaces; the uploaded name is the student's
    ("Aaron X 200001 assignsubmission file _300009_assignsubmission_file_vit.ipynb", "300009"),
    ("Eve_300009_assignsubmission_file_x_200001_assignsubmission_file_vit.ipynb", "300009"),
    # Canvas: login, optional late, user id, submission id, uploaded name
    ("evex_late_300009_77_200001_5_vit.ipynb", "300009"),
    ("evex_300009_77_200001_5_late_vit.ipynb", "300009"),
    ("evex_LATE_300009_77_vit-1.ipynb", "300009"),
    # Gradescope
    ("submission_4242", "submission_4242"),
])
def test_lms_ids_are_read_where_the_lms_writes_them(name, expected):
    """Item 8: text a student controls (display name, uploaded file name) cannot supply the id."""
    assert student_id_from_name(name) == expected


def test_id_collisions_never_overwrite_and_are_reported():
    """Items 8 and 14: two names that sanitise to one id (and a third that is that id plus "-2") keep
    three distinct ids, none taking another's, and each collision is reported."""
    from grader.batch.discovery import assign_ids

    paths = [Path("a b.py"), Path("a_b.ipynb"), Path("a_b-2.py"), Path("A_B.zip")]
    entries, collisions = assign_ids(paths)
    ids = [e.student_id for e in entries]
    assert len({i.casefold() for i in ids}) == len(ids)
    assert ids[2] == "a_b-2"  # the real owner of "a_b-2" keeps it
    assert len(collisions) == 2 and all("a_b" in c.lower() for c in collisions)


@pytest.mark.parametrize("name", ["\u0958" * 80 + ".py", "x" * 250 + ".py", "\udcff" * 40 + "é" * 60 + ".ipynb",
                                  "e\u0301" * 120])
def test_student_ids_are_bounded_in_bytes_after_normalisation(name):
    """Item 10: a name under 255 bytes that grows under NFC (U+0958 decomposes) still names a folder."""
    from grader.intake.naming import MAX_ID_BYTES

    student = safe_id(student_id_from_name(name))
    assert len(student.encode()) <= MAX_ID_BYTES
    assert student == safe_id(student)  # stable: the same folder on every run
    assert unicodedata.is_normalized("NFC", student)


def test_folder_digest_separates_names_from_contents(tmp_path):
    """Item 14: "ab" holding "c" and "a" holding "bc" once had one fingerprint (resume kept a stale report)."""
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir()
    second.mkdir()
    (first / "ab").write_text("c")
    (second / "a").write_text("bc")
    assert content_digest(first) != content_digest(second)
    (first / "ab").unlink()
    (first / "a").write_text("bc")  # "a" + "bc"  vs  "a" + "b" + "c" + ""
    (second / "a").write_text("b")
    (second / "c").write_text("")
    assert content_digest(first) != content_digest(second)


# --- what a report's text can do to the files written from it --------------------------------------------------
HOSTILE_TEXT = ("boom \ud800 \x1b[31mred\x1b[0m \x00\x07 <script>alert(1)</script> [link](javascript:alert(1)) "
                "| cell | ``` \n```\n<img src=x onerror=alert(2)>\n````")


def _hostile_report(student: str = "mallory") -> Report:
    check = CheckResult("load.definitions", "Load", "failed", 0.0, 5.0, HOSTILE_TEXT, {"note": HOSTILE_TEXT})
    return Report(student=student, submission=f"/in/{student}\udcff.py", status="graded", checks=[check],
                  warnings=[HOSTILE_TEXT], answers={"task2": HOSTILE_TEXT}, output=HOSTILE_TEXT)


def test_report_md_shows_student_text_as_text():
    """Item 9: no raw HTML, no link, and the output's fence cannot be closed by the output."""
    from markdown_it import MarkdownIt

    from grader.render.markdown import render_markdown
    from grader.render.safe import clean_report

    html = MarkdownIt("commonmark").render(render_markdown(clean_report(_hostile_report())))
    assert "<script" not in html and "<img src=x" not in html
    assert 'href="javascript' not in html
    assert "&lt;script&gt;" in html


def test_junit_stays_well_formed_whatever_the_output():
    """Item 14: ANSI escapes and control characters in output or messages keep the XML parseable."""
    from grader.render.junit import render_junit

    ET.fromstring(render_junit([_hostile_report()]))


def test_a_report_with_hostile_text_is_written_and_read_back(tmp_path):
    """Item 10: lone surrogates and control characters never stop the writing of a report."""
    from grader.batch.run import write_student_safely

    assert write_student_safely(tmp_path, _hostile_report(), gradescope=True) is None
    report = load_report(tmp_path / "students" / "mallory" / "report.json")
    assert report.status == "graded" and "\ud800" not in report.checks[0].message
    for name in ("report.md", "report.html", "results.json"):
        (tmp_path / "students" / "mallory" / name).read_text(encoding="utf-8")


def test_a_report_that_cannot_be_written_becomes_an_error_report(tmp_path, monkeypatch):
    import grader.batch.output as output

    original = output.render_html
    monkeypatch.setattr(output, "render_html", lambda r: (_ for _ in ()).throw(OSError("disk says no"))
                        if r.status == "graded" else original(r))
    assert output.write_student_safely(tmp_path, _hostile_report(), gradescope=False) is None
    report = load_report(tmp_path / "students" / "mallory" / "report.json")
    assert report.status == "error" and "could not be written" in report.error


# --- one batch, end to end ---------------------------------------------------------------------------------------
# Runs while the classes are defined (FNN refers to Attack, so the intake keeps it).
HOSTILE_SUBMISSION = '''class Attack:
    def attack():
        print("\\x1b[31mred\\x1b[0m <script>alert(1)</script>\\n````\\n```\\n# not a heading")
        raise RuntimeError("broken on purpose \\ud800 \\x1b]0;title\\x07 <b>bold</b>")
    attack()

''' + HANDOUT_SOURCE.replace("class FNN(nn.Module):\n", "class FNN(nn.Module):\n    attack = Attack\n")


@pytest.mark.slow
def test_a_hostile_class_never_stops_the_batch(tmp_path, code_rubric_file):
    """One batch: an honest student; a submission whose name grows past 255 bytes under NFC, whose
    output holds escapes and fences and whose error holds a lone surrogate; intake-breaking files
    (deep expression, encrypted zip) whose names sanitise to one id. The batch completes with
    summary.html and the TA sheet, the collision is loud (exit 1, summary), the honest student has
    full code marks, and a rerun does not crash."""
    folder = tmp_path / "class"
    folder.mkdir()
    (folder / "honest.py").write_text(HANDOUT_SOURCE, encoding="utf-8")
    (folder / ("\u0958" * 80 + ".py")).write_text(HOSTILE_SUBMISSION, encoding="utf-8")
    BROKEN_INTAKE["unary chain (MemoryError in ast.parse)"][1](folder / "dup one.py")
    _encrypted_zip(folder / "dup_one.zip")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "grader", "grade", str(folder), "--out", str(out), "--accuracy", "off",
               "--rubric", str(code_rubric_file), "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 1, done.stdout + done.stderr  # the collision, and only it
    assert "Traceback" not in done.stderr and "ID COLLISION" in done.stdout
    assert (out / "summary.html").is_file() and (out / "ta_sheet.csv").is_file()
    assert "ID COLLISION" in (out / "summary.html").read_text(encoding="utf-8")
    honest = load_report(out / "students" / "honest" / "report.json")
    assert honest.status == "graded"
    assert all(c.status in ("passed", "skipped") for c in honest.checks), [(c.id, c.message) for c in honest.checks]
    folders = sorted(p.name for p in (out / "students").iterdir())
    assert len(folders) == 4 and {"dup_one", "dup_one-2", "honest"} <= set(folders)
    hostile = next(out / "students" / f for f in folders if f not in ("dup_one", "dup_one-2", "honest"))
    report = load_report(hostile / "report.json")
    assert report.status == "graded" and report.score < honest.score
    assert any("broken on purpose" in c.message and "\ufffd" in c.message for c in report.checks)
    assert "<script>" in report.output and "\x1b" not in report.output
    from markdown_it import MarkdownIt

    html = MarkdownIt("commonmark").render((hostile / "report.md").read_text(encoding="utf-8"))
    assert "<script" not in html and "<b>" not in html and "<h1>not a heading" not in html
    from grader.render.junit import render_junit

    ET.fromstring(render_junit([report, honest]))
    again = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert "4 up to date" in again.stdout
