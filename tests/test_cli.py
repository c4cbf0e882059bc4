"""The real `vitgrade` command on real files: exit codes, outputs, batch layout, resume and locking."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest

from .conftest import EXAMPLES, HANDOUT_SOURCE


def vitgrade(*args: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "grader", *args], capture_output=True, text=True, timeout=timeout,
                          **kwargs)


@pytest.mark.slow
def test_help_lists_the_commands():
    result = vitgrade("--help")
    assert result.returncode == 0
    for command in ("check", "grade", "data", "train", "bench", "calibrate", "assign"):
        assert command in result.stdout


@pytest.mark.slow
def test_check_correct_submission_exits_0_and_writes_json_and_junit(tmp_path, code_rubric_file):
    # s1003 rather than s1002: s1002's Conv2d patch embedding is correct math the handout's rules forbid.
    result = vitgrade("check", str(EXAMPLES / "s1003_loop_heads"), "--accuracy", "off", "--rubric", str(code_rubric_file),
                      "--json", str(tmp_path / "r.json"), "--junit", str(tmp_path / "j.xml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "equiv.self_attention" in result.stdout and "PASS" in result.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["schema_version"] == 1 and report["status"] == "graded"
    assert report["score"] == report["max_score"] > 0
    assert report["sandbox"]["isolation"] in ("bwrap", "unshare", "none")
    accuracy = next(c for c in report["checks"] if c["id"] == "train.accuracy")
    assert accuracy["status"] == "skipped" and "--accuracy off" in accuracy["message"]
    suite = ET.parse(tmp_path / "j.xml").getroot().find("testsuite")
    assert int(suite.get("failures")) == 0 and int(suite.get("tests")) == len(report["checks"])


@pytest.mark.slow
def test_check_buggy_submission_exits_1_with_a_pointed_message(tmp_path):
    result = vitgrade("check", str(EXAMPLES / "s2002_textbook_residual.py"), "--accuracy", "off",
                      "--junit", str(tmp_path / "j.xml"))
    assert result.returncode == 1
    assert "normalised input" in result.stdout
    failures = ET.parse(tmp_path / "j.xml").getroot().iter("failure")
    assert any("normalised input" in f.get("message") for f in failures)


@pytest.mark.slow
def test_check_usage_errors_exit_2(tmp_path):
    assert vitgrade("check", str(tmp_path / "missing.ipynb")).returncode == 2
    (tmp_path / "bad.ipynb").write_text("{oops", encoding="utf-8")
    result = vitgrade("check", str(tmp_path / "bad.ipynb"), "--accuracy", "off")
    assert result.returncode == 2 and "JSON error" in result.stdout
    bad_rubric = tmp_path / "rubric.toml"
    bad_rubric.write_text('[points]\n"equiv.vti" = 3\n[tolerances]\n', encoding="utf-8")
    result = vitgrade("check", str(EXAMPLES / "s1002_separate_qkv.py"), "--rubric", str(bad_rubric))
    assert result.returncode == 2 and "equiv.vti" in result.stderr and "unknown check id" in result.stderr
    # With --accuracy off the worker would be launched early; a rubric that does not load launches none, same error.
    result = vitgrade("check", str(EXAMPLES / "s1002_separate_qkv.py"), "--rubric", str(bad_rubric), "--accuracy", "off")
    assert result.returncode == 2 and "equiv.vti" in result.stderr and "unknown check id" in result.stderr


@pytest.fixture(scope="module")
def batch_dir(tmp_path_factory) -> Path:
    """A small class: two correct, one buggy, one broken, one hostile, one unreadable."""
    folder = tmp_path_factory.mktemp("class")
    (folder / "alice.py").write_text(HANDOUT_SOURCE, encoding="utf-8")  # s1002 uses a forbidden Conv2d
    shutil.copytree(EXAMPLES / "s1003_loop_heads", folder / "bob")
    shutil.copy(EXAMPLES / "s2001_softmax_axis.ipynb", folder / "carol.ipynb")
    (folder / "dave.ipynb").write_text("not a notebook", encoding="utf-8")
    # A class body runs when the class is defined, so the worker dies while loading.
    (folder / "eve.py").write_text("import os\n" + HANDOUT_SOURCE.replace(
        "class FNN(nn.Module):\n", "class FNN(nn.Module):\n    os._exit(1)\n"), encoding="utf-8")
    (folder / "notes.txt").write_text("not a submission", encoding="utf-8")
    return folder


@pytest.mark.slow
def test_grade_a_class(batch_dir, tmp_path, code_rubric_file):
    out = tmp_path / "out"
    roster = tmp_path / "roster.csv"
    roster.write_text("student_id,name\nalice,A\nbob,B\ncarol,C\ndave,D\neve,E\nfrank,F\n", encoding="utf-8")
    result = vitgrade("grade", str(batch_dir), "--out", str(out), "--accuracy", "off", "--roster", str(roster),
                      "--gradescope", "--quiet", "--rubric", str(code_rubric_file))
    assert result.returncode == 0, result.stderr
    assert "ignored 1 entries" in result.stdout and "1 missing" in result.stdout
    book = pd.read_csv(out / "gradebook.csv").set_index("student")
    assert list(book.index) == ["alice", "bob", "carol", "dave", "eve", "frank"]
    assert book.loc["alice", "score"] == book.loc["alice", "max_score"] > 0
    assert book.loc["carol", "score"] < book.loc["carol", "max_score"]
    assert book.loc["carol", "equiv.self_attention"] == 0
    assert book.loc["dave", "status"] == "error" and book.loc["frank", "status"] == "missing"
    assert book.loc["eve", "status"] == "graded"
    assert book.loc["eve", "score"] == book.loc["eve", "load.code"] + book.loc["eve", "static.forbidden"]
    eve = json.loads((out / "students/eve/report.json").read_text())
    definitions = next(c for c in eve["checks"] if c["id"] == "load.definitions")
    assert "exit" in definitions["message"]
    for student in ("alice", "bob", "carol", "dave", "eve"):
        folder = out / "students" / student
        assert {"report.json", "report.md", "report.html", "results.json"} <= {p.name for p in folder.iterdir()}
        gradescope = json.loads((folder / "results.json").read_text())
        assert gradescope["score"] == json.loads((folder / "report.json").read_text())["score"]
    summary = (out / "summary.html").read_text()
    assert "Pass rate per check" in summary and "equiv.self_attention" in summary

    # Resume: nothing is graded twice; a changed submission is regraded.
    again = vitgrade("grade", str(batch_dir), "--out", str(out), "--accuracy", "off", "--quiet",
                     "--rubric", str(code_rubric_file))
    assert again.returncode == 0 and "0 graded, 5 up to date" in again.stdout


@pytest.mark.slow
def test_grade_refuses_a_second_grader_on_the_same_output(batch_dir, tmp_path):
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-m", "grader", "grade", str(batch_dir), "--out", str(out),
                              "--accuracy", "off", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (out / ".vitgrade.lock").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)
        second = vitgrade("grade", str(batch_dir), "--out", str(out), "--accuracy", "off", "--quiet")
        assert second.returncode == 2 and "is being graded by vitgrade pid" in second.stderr
    finally:
        first.kill()
        first.wait()


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [1, 3, "random"])
def test_killed_batch_resumes_without_losing_or_regrading(batch_dir, tmp_path, kill_after):
    """SIGKILL the whole grader after N reports (or at a random moment), then resume."""
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-m", "grader", "grade", str(batch_dir), "--out", str(out),
                              "--accuracy", "off", "--quiet", "--workers", "1"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    if kill_after == "random":  # the batch of five takes about 10 s here after its imports: kill it somewhere in it
        time.sleep(random.uniform(3, 13))
    else:
        deadline = time.monotonic() + 300
        while len(list(out.glob("students/*/report.json"))) < kill_after and time.monotonic() < deadline:
            time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    finished = {p.parent.name: p.read_bytes() for p in out.glob("students/*/report.json")}
    for content in finished.values():
        json.loads(content)  # every report on disk is complete
    result = vitgrade("grade", str(batch_dir), "--out", str(out), "--accuracy", "off", "--quiet")
    assert result.returncode == 0
    assert f"{5 - len(finished)} graded, {len(finished)} up to date" in result.stdout
    for student, content in finished.items():  # finished reports untouched
        assert (out / "students" / student / "report.json").read_bytes() == content
    assert len(pd.read_csv(out / "gradebook.csv")) == 5


@pytest.mark.slow
def test_grade_usage_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    result = vitgrade("grade", str(tmp_path / "empty"), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "holds no submissions" in result.stderr
    result = vitgrade("grade", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "does not exist" in result.stderr


@pytest.mark.slow
def test_a_zip_in_a_moodle_submission_folder_is_read_as_in_canvas_layout(tmp_path):
    """Moodle delivers each upload in a folder per student; a zip handed in arrives as a zip in that folder."""
    import zipfile

    from grader.intake import load_submission

    notebook = EXAMPLES / "s2001_softmax_axis.ipynb"
    archive = tmp_path / "canvas" / "doejane_123_456_submission.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(notebook, "my_vit/vit.ipynb")
        zf.writestr("my_vit/diagram.png", b"\x89PNG not really")
    moodle = tmp_path / "Jane Doe_123_assignsubmission_file_"
    moodle.mkdir()
    shutil.copy(archive, moodle / "submission.zip")
    from_canvas, from_moodle = load_submission(archive), load_submission(moodle)
    assert from_moodle.code == from_canvas.code and from_moodle.answers == from_canvas.answers
    assert from_moodle.files == ["submission.zip/vit.ipynb"]
    (moodle / "old.zip").write_bytes(archive.read_bytes())
    os.utime(moodle / "old.zip", (0, 0))
    assert "ignored: old.zip" in " ".join(load_submission(moodle).warnings)


@pytest.mark.slow
def test_grade_refuses_a_bad_roster_or_ta_sheet_before_grading_anyone(batch_dir, tmp_path):
    out = tmp_path / "out"
    result = vitgrade("grade", str(batch_dir), "--out", str(out), "--roster", str(tmp_path / "rooster.csv"))
    assert result.returncode == 2 and "rooster.csv: no such file" in result.stderr
    sheet = tmp_path / "ta.csv"
    sheet.write_text("student_id,check_id,points,comment\nalice,task1.diagramm,3,\nalice,task3.answer,60,\n"
                     "mallory,task3.answer,1,\n", encoding="utf-8")
    result = vitgrade("grade", str(batch_dir), "--out", str(out), "--manual", str(sheet))
    assert result.returncode == 2 and "3 problem(s); nothing was graded" in result.stderr
    for words in ("'task1.diagramm' is not a check a TA grades", "60 points is above the maximum 6",
                  "unknown student 'mallory'"):
        assert words in result.stderr
    assert not (out / "students").exists()


def test_check_launches_the_worker_early_only_where_the_rubric_file_decides_its_limits(tmp_path):
    import argparse

    import tomlkit

    from grader.cli import _launch_worker
    from grader.options import resolve
    from grader.rubric import DEFAULT_RUBRIC, load_rubric
    from grader.rubric.limits import worker_limits

    def launched(accuracy: str, limits: str | None = None):
        rubric = None
        if limits is not None:  # the bundled rubric with these lines in place of its [limits]
            rubric = tmp_path / "rubric.toml"
            bundled = tomlkit.parse(DEFAULT_RUBRIC.read_text(encoding="utf-8"))
            del bundled["limits"]
            rubric.write_text(tomlkit.dumps(bundled) + "\n" + limits, encoding="utf-8")
        args = argparse.Namespace(accuracy=accuracy, submission=str(EXAMPLES / "s1002_separate_qkv.py"),
                                  rubric=rubric, isolation=None, data_dir=None)
        sandbox = _launch_worker(args)
        if sandbox is not None:
            sandbox.close()
            # grade_submission reuses the worker only if its limits are the ones it asks for (as _check calls it)
            assert sandbox.limits == worker_limits(load_rubric(rubric), resolve(accuracy)), accuracy
        return sandbox

    bundled = launched("off")
    assert bundled is not None and bundled.limits.memory_bytes == 6 * 1024**3
    assert launched("quick") is not None
    assert launched("quick", "[limits]\nmemory_gib = 2.5\n").limits.memory_bytes == int(2.5 * 1024**3)
    assert launched("auto") is None and launched("full") is None  # CUDA or not is torch's to say
    # A rubric load_rubric will refuse is not launched from (nor does "6" * 1024**3 build a 1 GB string).
    for bad in ('[limits]\nmemory_gib = "6"\n', "limits = 3\n", "[limits]\nmemory_gib = inf\n", "[limits\n"):
        assert launched("off", bad) is None, bad


def test_the_early_worker_starts_before_torch_is_imported():
    """What makes the early launch worth it: deciding its limits (rubric, options) imports no torch in the parent."""
    script = ("import argparse, sys; from grader.cli import _launch_worker; "
              f"args = argparse.Namespace(accuracy='off', submission={str(EXAMPLES / 's1002_separate_qkv.py')!r}, "
              "rubric=None, isolation=None, data_dir=None); sandbox = _launch_worker(args); "
              "print(sandbox is not None, 'torch' in sys.modules); sandbox.close()")
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["True", "False"]


def test_a_usage_error_is_reported_before_torch_is_imported(tmp_path):
    """A mistyped path, an empty folder or a broken rubric is answered at once, not after seconds of imports."""
    bad_rubric = tmp_path / "rubric.toml"
    bad_rubric.write_text('[points]\n"equiv.vti" = 3\n', encoding="utf-8")
    (tmp_path / "empty").mkdir()
    for args in (["check", str(tmp_path / "missing.ipynb")],
                 ["check", str(EXAMPLES / "s1002_separate_qkv.py"), "--rubric", str(bad_rubric)],
                 ["grade", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")],
                 ["grade", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]):
        script = "import sys; from grader.cli import main; code = main(sys.argv[1:]); print(code, 'torch' in sys.modules)"
        ran = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120)
        assert ran.stdout.split() == ["2", "False"], (args, ran.stdout, ran.stderr)
        assert "vitgrade: error:" in ran.stderr and "Traceback" not in ran.stderr


@pytest.mark.parametrize("pattern, says", [("(", "not a regular expression"), ("s\\d+", "needs a group named 'id'")])
def test_a_bad_id_pattern_is_a_usage_error(tmp_path, capsys, pattern, says):
    from grader.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["grade", str(EXAMPLES), "--out", str(tmp_path / "out"), "--id-pattern", pattern])
    assert exit_info.value.code == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
