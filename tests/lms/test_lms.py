"""The LMS loop: Canvas and Moodle round trips, feedback zips, release without leaks, late policy."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from grader.report import CheckResult, Report, write_atomic
from grader.rubric import DEFAULT_RUBRIC, load_rubric

JST = timezone(timedelta(hours=9))
DEADLINE = "2026-12-01T23:59:00+09:00"
INSTRUCTOR_PATH = "/home/prof-secret/course2026"
PRIVATE_NOTE = "copied from last year, talk to them"
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")


def _checks(equiv_ok: bool = True, manual_points: float | None = 5.0, private: bool = False) -> list[CheckResult]:
    manual_details = {"answer": "Q and K score, V is mixed"}
    if private:
        manual_details["private_note"] = PRIVATE_NOTE
    return [
        CheckResult("load.code", "Code found", "passed", 2.0, 2.0, "parsed 3 cells"),
        CheckResult("equiv.self_attention", "SelfAttention", "passed", 8.0, 8.0, "max error 1e-12",
                    {"mapping": "fused proj_in", "seed": 1234}),
        CheckResult("equiv.vit", "ViT equals the reference", "passed" if equiv_ok else "failed",
                    6.0 if equiv_ok else 0.0, 6.0, "" if equiv_ok else "the class token is appended after the patches"),
        CheckResult("train.accuracy", "Test accuracy", "passed", 10.0, 10.0, "56.1 % >= 45 %"),
        CheckResult("task3.answer", "課題3", "manual", manual_points, 6.0, "graded by a TA", manual_details),
    ]


def _report(student: str, submission: str, **kw) -> Report:
    return Report(student=student, submission=submission, status="graded",
                  checks=_checks(**kw), warnings=[f"cell 4 skipped: {INSTRUCTOR_PATH}/subs/{submission}/x.py"],
                  sandbox={"isolation": "bwrap", "network": False, "root": f"{INSTRUCTOR_PATH}/venv"},
                  environment={"python": f"{INSTRUCTOR_PATH}/venv/bin/python", "host": "prof-laptop"},
                  timings={"total": 12.5}, fingerprint={"rubric": load_rubric().verdict_digest})


@pytest.fixture()
def graded(tmp_path) -> Path:
    """A graded output folder as `vitgrade grade` leaves it (report.json is the source of truth)."""
    out = tmp_path / "graded"
    reports = [
        _report("101", "Álvarez José_101_assignsubmission_file_"),  # Canvas user id 101 / Moodle participant 101
        _report("102", "田中 太郎_102_assignsubmission_file_", equiv_ok=False, private=True),
        _report("105", "Pending_105_assignsubmission_file_", manual_points=None),  # awaits a TA
        _report("999", "stranger_999_1_vit.ipynb"),  # graded but not in the LMS file
        Report.failure("103", "broken_103_assignsubmission_file_", "the notebook is not valid JSON"),
        Report.failure("104", "", "no submission received", status="missing"),
    ]
    for report in reports:
        write_atomic(out / "students" / report.student / "report.json", report.to_json())
    write_atomic(out / "students" / "101" / "training.png", PNG)
    return out


def _reports(graded: Path) -> dict[str, Report]:
    from grader.lms.common import graded_reports

    return graded_reports(graded)


# Canvas's export: a BOM, CRLF line endings, the Points Possible row, a test student, an assignment
# name with a comma, read-only totals. {a101}... are the cells of the assignment being filled.
CANVAS_TEMPLATE = (
    "\ufeffStudent,ID,SIS User ID,SIS Login ID,Section,Homework 1 (5501),\"ViT, CIFAR-10 (5502)\","
    "Current Points,Final Points,Current Score,Final Score\r\n"
    "    Points Possible,,,,,10.00,70.00,(read only),(read only),(read only),(read only)\r\n"
    "\"Álvarez, José\",101,S-0101,jalvarez,Section A,9.50,{a101},9.50,9.50,95.00,11.88\r\n"
    "\"田中, 太郎\",102,S-0102,ttanaka,\"Section A, B\",8.00,{a102},8.00,8.00,80.00,10.00\r\n"
    "\"Broken, Bea\",103,S-0103,bbroken,Section A,7.00,{a103},7.00,7.00,70.00,8.75\r\n"
    "\"Missing, Max\",104,S-0104,mmissing,Section A,,{a104},,,,\r\n"
    "\"Pending, Pat\",105,S-0105,ppending,Section A,10.00,{a105},10.00,10.00,100.00,12.50\r\n"
    "\"Never, Submitted\",106,S-0106,nsub,Section A,6.00,{a106},6.00,6.00,60.00,7.50\r\n"
    "\"Student, Test\",900001,,a1b2c3,Section A,,{a900001},,,,\r\n"
)
CANVAS_BEFORE = {"a101": "", "a102": "", "a103": "", "a104": "", "a105": "3.00", "a106": "", "a900001": ""}


def test_canvas_round_trip_fills_only_the_graded_students_cells(graded, tmp_path):
    from grader.lms.canvas import export_canvas
    from grader.lms.common import format_points

    exported = tmp_path / "Grades-VIT101.csv"
    exported.write_bytes(CANVAS_TEMPLATE.format(**CANVAS_BEFORE).encode("utf-8"))
    dest = tmp_path / "import.csv"
    result = export_canvas(graded, exported, "ViT, CIFAR-10", dest)
    reports = _reports(graded)
    expected = dict(CANVAS_BEFORE, a101=format_points(reports["101"].final_score),
                    a102=format_points(reports["102"].final_score))
    # Byte for byte: the file as exported with exactly the two graded students' cells filled.
    assert dest.read_bytes() == CANVAS_TEMPLATE.format(**expected).encode("utf-8")
    assert expected["a101"] == "31" and expected["a102"] == "25"
    rows = list(csv.reader(io.StringIO(dest.read_text("utf-8-sig"), newline="")))
    assert rows[2][6] == "31" and rows[3][6] == "25"
    assert result.filled == {"Álvarez, José (ID 101)": "31", "田中, 太郎 (ID 102)": "25"}
    untouched = "\n".join(result.untouched)
    for name in ("Broken, Bea", "Missing, Max", "Pending, Pat", "Never, Submitted", "Student, Test"):
        assert name in untouched
    assert "await a TA" in untouched and "no submission" in untouched and "did not submit" in untouched
    assert result.unmatched == ["999: graded"]
    assert any("worth 70 points" in note for note in result.notes)  # the rubric here totals 32


def test_canvas_matches_by_sis_login_and_scales(graded, tmp_path):
    from grader.lms.canvas import export_canvas

    # Student ids taken from SIS logins instead of Canvas ids (graded with a roster of logins).
    for sid, login in (("101", "jalvarez"), ("102", "ttanaka")):
        folder = graded / "students" / sid
        folder.rename(graded / "students" / login)
        path = graded / "students" / login / "report.json"
        path.write_text(path.read_text("utf-8").replace(f'"student": "{sid}"', f'"student": "{login}"'), "utf-8")
    exported = tmp_path / "export.csv"
    exported.write_bytes(CANVAS_TEMPLATE.format(**CANVAS_BEFORE).encode("utf-8"))
    result = export_canvas(graded, exported, "5502", tmp_path / "out.csv", scale=True)
    rows = list(csv.reader(io.StringIO((tmp_path / "out.csv").read_text("utf-8-sig"), newline="")))
    assert rows[2][6] == "67.81"  # 31 / 32 * 70
    assert rows[3][6] == "54.69"  # 25 / 32 * 70
    assert len(result.filled) == 2


@pytest.mark.slow
def test_canvas_bad_assignment_names_the_choices(graded, tmp_path):
    from grader.lms.canvas import export_canvas
    from grader.lms.common import ExportError

    exported = tmp_path / "export.csv"
    exported.write_bytes(CANVAS_TEMPLATE.format(**CANVAS_BEFORE).encode("utf-8"))
    with pytest.raises(ExportError, match=r"Homework 1 \(5501\)"):
        export_canvas(graded, exported, "Homework 2", tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()
    done = subprocess.run([sys.executable, "-m", "grader", "export", "canvas", str(graded), "--gradebook",
                           str(exported), "--assignment", "ViT, CIFAR-10", "--out", str(tmp_path / "out.csv")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "filled 2 student(s)" in done.stdout and "left untouched (5)" in done.stdout
    assert "Never, Submitted (ID 106): no report" in done.stdout and "graded but not in the LMS file (1)" in done.stdout


# Moodle's worksheet: fields with spaces quoted (PHP's fputcsv), LF endings, no BOM.
MOODLE_TEMPLATE = (
    'Identifier,"Full name","Email address",Status,Grade,"Maximum Grade","Grade can be changed",'
    '"Last modified (submission)","Last modified (grade)","Feedback comments"\n'
    '"Participant 101","Álvarez José",jose@example.edu,"Submitted for grading",{g101},32.00,Yes,'
    '"Tuesday, 1 December 2026, 11:03 PM",-,{f101}\n'
    '"Participant 102","田中 太郎",tanaka@example.jp,"Submitted for grading",{g102},32.00,Yes,'
    '"Wednesday, 2 December 2026, 9:15 AM",-,{f102}\n'
    '"Participant 103","Bea Broken",bea@example.edu,"Submitted for grading",{g103},32.00,Yes,'
    '"Tuesday, 1 December 2026, 8:00 PM",-,{f103}\n'
    '"Participant 106","Never Submitted",never@example.edu,"No submission",{g106},32.00,Yes,-,-,{f106}\n'
)


def test_moodle_round_trip_and_feedback_zip(graded, tmp_path):
    from grader.lms.common import format_points
    from grader.lms.moodle import export_moodle

    blank = {f"{k}{sid}": "" for k in "gf" for sid in ("101", "102", "103", "106")}
    worksheet = tmp_path / "Grades-ViT-12345.csv"
    worksheet.write_bytes(MOODLE_TEMPLATE.format(**blank).encode("utf-8"))
    rubric = load_rubric()
    result = export_moodle(graded, worksheet, tmp_path / "moodle", rubric)
    reports = _reports(graded)
    out = (tmp_path / "moodle" / worksheet.name).read_text("utf-8")
    rows = list(csv.reader(io.StringIO(out, newline="")))
    before = list(csv.reader(io.StringIO(MOODLE_TEMPLATE.format(**blank), newline="")))
    grade, feedback = rows[0].index("Grade"), rows[0].index("Feedback comments")
    assert rows[1][grade] == format_points(reports["101"].final_score) == "31"
    assert rows[2][grade] == format_points(reports["102"].final_score) == "25"
    assert "the class token is appended after the patches" in rows[2][feedback]
    for row, old in zip(rows, before, strict=True):  # nothing else changed
        same = [i for i in range(len(old)) if i not in (grade, feedback)] if row[0] in (
            "Participant 101", "Participant 102") else range(len(old))
        assert [row[i] for i in same] == [old[i] for i in same]
    # Byte for byte outside the two filled rows.
    assert out.splitlines()[0] == MOODLE_TEMPLATE.splitlines()[0]
    assert out.splitlines()[3:] == MOODLE_TEMPLATE.format(**blank).splitlines()[3:]
    assert "Bea Broken" in "\n".join(result.untouched) and "Never Submitted" in "\n".join(result.untouched)
    with zipfile.ZipFile(tmp_path / "moodle" / "feedback_files.zip") as archive:
        names = archive.namelist()
        page = archive.read(names[0]).decode()
    assert sorted(names) == ["Álvarez José_101_assignsubmission_file_/report.html",
                             "田中 太郎_102_assignsubmission_file_/report.html"]
    # Moodle's importer: explode('_', folder, 5)[1] is the participant id.
    assert [name.split("/")[0].split("_", 4)[1] for name in sorted(names)] == ["101", "102"]
    assert INSTRUCTOR_PATH not in page and "<html" in page.lower()
    assert not result.notes  # the worksheet's maximum grade is the reports' 32
    # A worksheet worth 100 with one locked grade: said on stdout; --scale converts.
    other = tmp_path / "other.csv"
    other.write_text(MOODLE_TEMPLATE.format(**blank).replace("32.00", "100.00").replace(
        'tanaka@example.jp,"Submitted for grading",,100.00,Yes', 'tanaka@example.jp,"Submitted for grading",,100.00,No'),
        "utf-8")
    notes = "\n".join(export_moodle(graded, other, tmp_path / "other", rubric).notes)
    assert "maximum grade is 100" in notes and "cannot be changed" in notes and "田中 太郎" in notes
    scaled = export_moodle(graded, other, tmp_path / "scaled", rubric, scale=True)
    assert scaled.filled["Álvarez José (Participant 101)"] == "96.88"  # 31 / 32 * 100


def _visibility_rubric(tmp_path: Path) -> Path:
    text = DEFAULT_RUBRIC.read_text("utf-8") + (
        '\n[visibility]\n"equiv.vit" = "hidden"\n"train.accuracy" = "after_due_date"\n'
        f'\n[late]\ndeadline = {DEADLINE}\ngrace_minutes = 15\npenalty_percent = 10\nunit = "day"\ncap_percent = 30\n')
    path = tmp_path / "rubric.toml"
    path.write_text(text, "utf-8")
    return path


def _files(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_bytes().decode("utf-8", "replace")
            for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_release_leaks_nothing_instructor_only(graded, tmp_path):
    rubric = load_rubric(_visibility_rubric(tmp_path))
    dest = tmp_path / "release"
    before_due = subprocess.run([sys.executable, "-m", "grader", "release", str(graded), "--out", str(dest),
                                 "--rubric", str(_visibility_rubric(tmp_path)), "--now", "2026-12-01T12:00:00+09:00"],
                                capture_output=True, text=True, timeout=120)
    assert before_due.returncode == 0, before_due.stderr
    assert "checks NOT shown: equiv.vit, train.accuracy" in before_due.stdout
    files = _files(dest)
    students = sorted({name.split("/")[0] for name in files if "/" in name})
    assert students == ["101", "102", "103", "105", "999"]  # 104 has no submission: nothing to release
    assert (dest / "101" / "training.png").read_bytes() == PNG and "data:image/png" in files["101/report.html"]
    for name, text in files.items():
        assert INSTRUCTOR_PATH not in text and "prof-laptop" not in text, name
        assert PRIVATE_NOTE not in text and "1234" not in text, name  # TA note, seeds
        assert "equiv.vit" not in text and "ViT equals the reference" not in text, name  # the hidden check
        assert "train.accuracy" not in text, name  # after the due date only
        if "/" in name:
            own = name.split("/")[0]
            assert not any(other in text for other in ("Álvarez", "田中", "stranger") if other not in
                           {"101": "Álvarez", "102": "田中", "999": "stranger"}.get(own, "")), name
    released = Report.from_dict(__import__("json").loads(files["102/report.json"]))
    assert released.environment == {} and released.timings == {} and released.fingerprint == {}
    assert released.submission == "田中 太郎_102_assignsubmission_file_"
    assert any("not shown" in w for w in released.warnings)
    # After the deadline the after_due_date check is shown; the hidden one never is.
    from grader.lms.release import student_view

    after = student_view(_reports(graded)["102"], rubric, datetime(2026, 12, 2, tzinfo=JST))
    assert {c.id for c in after.checks} == {"load.code", "equiv.self_attention", "train.accuracy", "task3.answer"}
    # The instructor's own report still has everything.
    assert _reports(graded)["102"].check("equiv.vit") is not None


@pytest.mark.slow
def test_export_folder_zip_and_cli_usage_errors(graded, tmp_path):
    dest = tmp_path / "feedback.zip"
    # A report graded with another rubric than the bundled one: its visibility is unknown, so refuse.
    path = graded / "students" / "101" / "report.json"
    path.write_text(path.read_text("utf-8").replace(load_rubric().verdict_digest, "0" * 64), "utf-8")
    refused = subprocess.run([sys.executable, "-m", "grader", "export", "folder", str(graded), "--out", str(dest)],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "pass --rubric" in refused.stderr and not dest.exists()
    done = subprocess.run([sys.executable, "-m", "grader", "export", "folder", str(graded), "--out", str(dest),
                           "--rubric", str(DEFAULT_RUBRIC)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "graded with another version of rubric.toml" in done.stdout
    with zipfile.ZipFile(dest) as archive:
        assert "101/report.html" in archive.namelist() and "RELEASE.md" in archive.namelist()
    bad = subprocess.run([sys.executable, "-m", "grader", "export", "canvas", str(graded), "--out",
                          str(tmp_path / "x.csv")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--gradebook" in bad.stderr
    not_graded = subprocess.run([sys.executable, "-m", "grader", "export", "folder", str(tmp_path), "--out",
                                 str(tmp_path / "y")], capture_output=True, text=True, timeout=120)
    assert not_graded.returncode == 2 and "not a vitgrade output folder" in not_graded.stderr


def _gradescope_rubric(tmp_path: Path, code_rubric_file: Path) -> Path:
    """A few quick checks (the run stays cheap), one hidden, one shown after the deadline, and a late policy."""
    import tomlkit

    data = tomlkit.parse(code_rubric_file.read_text("utf-8"))
    keep = ("load.code", "load.definitions", "static.forbidden", "equiv.self_attention", "equiv.vit",
            "props.determinism")
    for check_id in [k for k in data["points"] if k not in keep]:
        del data["points"][check_id]
    text = tomlkit.dumps(data) + (
        '\n[visibility]\n"equiv.vit" = "hidden"\n"props.determinism" = "after_due_date"\n'
        f'\n[late]\ndeadline = {DEADLINE}\npenalty_percent = 10\nunit = "day"\n')
    path = tmp_path / "gs_rubric.toml"
    path.write_text(text, "utf-8")
    return path


@pytest.mark.slow
def test_gradescope_autograder_runs_in_a_laid_out_root(tmp_path, code_rubric_file):
    """Build autograder.zip, lay out Gradescope's /autograder tree in a temporary root and run
    run_autograder there. setup.sh's installation is NOT run here (it needs apt and PyPI): the
    package comes from the zip's own source folder on PYTHONPATH, with this interpreter."""
    from assignments import assignment_dir

    archive = tmp_path / "autograder.zip"
    built = subprocess.run([sys.executable, "-m", "grader", "gradescope", "--out", str(archive), "--rubric",
                            str(_gradescope_rubric(tmp_path, code_rubric_file)), "--accuracy", "off"],
                           capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    root = tmp_path / "autograder"
    with zipfile.ZipFile(archive) as zipped:
        names = zipped.namelist()
        modes = {info.filename: info.external_attr >> 16 for info in zipped.infolist()}
        zipped.extractall(root / "source")
    assert {"setup.sh", "run_autograder", "rubric.toml", "config.json", "vit_autograder/pyproject.toml",
            "vit_autograder/grader/cli.py", "vit_autograder/reference/__init__.py"} <= set(names)
    assert modes["run_autograder"] & 0o111 and modes["setup.sh"] & 0o111
    assert not any("/examples/" in name or "__pycache__" in name for name in names)
    assert "pip install" in (root / "source" / "setup.sh").read_text() and "./vit_autograder" in (
        root / "source" / "setup.sh").read_text()
    for path in (root / "source").rglob("*"):  # extractall drops the modes; Gradescope's unzip keeps them
        if path.name in ("run_autograder", "setup.sh"):
            path.chmod(0o755)
    (root / "submission").mkdir()
    (root / "submission" / "my_vit.py").write_bytes((assignment_dir() / "examples" / "s1002_separate_qkv.py").read_bytes())
    # Submitted 1 day and 1 minute after the deadline (Gradescope's own record of the time).
    (root / "submission_metadata.json").write_text('{"created_at": "2026-12-03T00:00:00.000000+09:00"}')
    env = {"PATH": "/usr/bin:/bin", "VITGRADE_AUTOGRADER_ROOT": str(root), "VITGRADE_PYTHON": sys.executable,
           "PYTHONPATH": str(root / "source" / "vit_autograder")}
    ran = subprocess.run(["bash", str(root / "source" / "run_autograder")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert ran.returncode == 0, ran.stderr
    results = __import__("json").loads((root / "results" / "results.json").read_text())
    tests = {t["number"]: t for t in results["tests"]}
    assert "equiv.vit" not in tests  # hidden: absent from what the student sees
    assert tests["props.determinism"]["visibility"] == "after_due_date"
    assert tests["equiv.self_attention"]["visibility"] == "visible" and tests["equiv.self_attention"]["score"] == 8
    raw = sum(t.get("score", 0) for t in results["tests"])
    max_score = sum(t["max_score"] for t in results["tests"])
    assert results["score"] == pytest.approx(raw - 0.2 * max_score)  # 2 started days late, 10 % a day
    assert results["output"].startswith("sandbox isolation: ")
    assert results["extra_data"]["sandbox"]["isolation"] in ("bwrap", "unshare", "none")
    assert "2 days late" in results["output"]


@pytest.mark.slow
def test_gradescope_autograder_results_say_grader_failure(tmp_path):
    """A broken autograder (here: no rubric) still leaves a results.json, which blames the grader."""
    root = tmp_path / "autograder"
    (root / "submission").mkdir(parents=True)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    ran = subprocess.run([sys.executable, "-m", "grader.lms.gradescope_autograder", "--root", str(root)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 1
    results = __import__("json").loads((root / "results" / "results.json").read_text())
    assert results["extra_data"] == {"fault": "grader"} and "not because of your submission" in results["output"]


@pytest.mark.slow
def test_gradescope_autograder_source_installs_with_pip(tmp_path):
    """The zip's package folder is pip-installable and carries its templates and rubric (no dependencies
    fetched: --no-deps --no-index)."""
    from grader.lms.gradescope_autograder import build_autograder

    try:
        from setuptools.command.bdist_wheel import bdist_wheel  # noqa: F401  (setuptools >= 70.1)
    except ImportError:
        pytest.skip("this environment's setuptools cannot build wheels without the network (needs >= 70.1)")
    archive = build_autograder(tmp_path / "autograder.zip", load_rubric())
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(tmp_path / "source")
    target = tmp_path / "installed"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--no-index", "--target", str(target), str(tmp_path / "source" / "vit_autograder")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (target / "grader" / "render" / "templates" / "report.html.j2").is_file()
    assert (target / "assignments" / "vit_cifar10" / "rubric.toml").is_file()
    assert (target / "bin" / "vitgrade").is_file()


def _policy(**table):
    from grader.rubric.late import LatePolicy

    return LatePolicy.from_table({"deadline": datetime.fromisoformat(DEADLINE), **table}, "late")


DUE = datetime.fromisoformat(DEADLINE)


@pytest.mark.parametrize(("submitted", "table", "extension_h", "penalty", "reason"), [
    (DUE - timedelta(hours=1), {"penalty_percent": 10}, 0, 0.0, "on time"),
    (DUE, {"penalty_percent": 10}, 0, 0.0, "on time"),
    (DUE + timedelta(minutes=14), {"penalty_percent": 10, "grace_minutes": 15}, 0, 0.0, "within the grace period"),
    (DUE + timedelta(minutes=16), {"penalty_percent": 10, "grace_minutes": 15}, 0, 8.0, "1 day late: -10 %"),
    (DUE + timedelta(hours=3, minutes=1), {"penalty_percent": 5, "unit": "hour"}, 0, 16.0, "4 hours late: -20 %"),
    (DUE + timedelta(days=2, hours=1), {"penalty_percent": 10}, 0, 24.0, "3 days late: -30 %"),
    (DUE + timedelta(days=9), {"penalty_percent": 10, "cap_percent": 50}, 0, 40.0, "9 days late: -50 % (capped)"),
    (DUE + timedelta(hours=30), {"penalty_percent": 10}, 48, 0.0, "on time"),  # a 48 h extension
    (DUE + timedelta(hours=50), {"penalty_percent": 10}, 48, 8.0, "1 day late: -10 %"),
    (DUE + timedelta(seconds=1), {"policy": "not_accepted"}, 0, 80.0, "late work is not accepted"),
    (DUE - timedelta(seconds=1), {"policy": "not_accepted"}, 0, 0.0, "on time"),
    (DUE + timedelta(hours=73), {"penalty_percent": 10, "reject_after_hours": 72}, 0, 80.0, "more than 72 h late"),
])
def test_late_policy(submitted, table, extension_h, penalty, reason):
    late = _policy(**table).assess(submitted, 80.0, timedelta(hours=extension_h))
    assert late["penalty"] == penalty
    assert late["reason"].startswith(reason)
    report = Report("s", "x", "graded", [CheckResult("load.code", "t", "passed", 50.0, 80.0)], late=late)
    assert report.score == 50.0 and report.final_score == max(0.0, 50.0 - penalty)  # score stays the raw score
    assert Report.from_dict(__import__("json").loads(report.to_json())).final_score == report.final_score


def test_late_policy_rejects_a_deadline_without_time_zone(tmp_path):
    from grader.rubric import RubricError

    path = tmp_path / "r.toml"
    path.write_text(DEFAULT_RUBRIC.read_text("utf-8") + '\n[late]\ndeadline = 2026-12-01T23:59:00\n', "utf-8")
    with pytest.raises(RubricError, match="has no time zone"):
        load_rubric(path)
    path.write_text(DEFAULT_RUBRIC.read_text("utf-8") + '\n[late]\ndeadline = 2026-12-01T23:59:00\n'
                    'timezone = "Asia/Tokyo"\npenalty_percent = 10\n', "utf-8")
    assert load_rubric(path).late.deadline.utcoffset() == timedelta(hours=9)
    path.write_text(DEFAULT_RUBRIC.read_text("utf-8") + '\n[visibility]\n"equiv.vit" = "after_due_date"\n', "utf-8")
    with pytest.raises(RubricError, match="needs a deadline"):
        load_rubric(path)


def test_late_policy_applied_to_a_graded_folder(graded, tmp_path):
    """Times from --submitted, Moodle's worksheet and file times (with a warning); an extension; Canvas's
    late mark compared with the time used; the gradebook gets raw score, penalty and final score."""
    import os

    from grader.batch.deadlines import FILE_TIME_WARNING, apply_late_policy, read_late_inputs
    from grader.batch.gradebook import gradebook_frame, load_reports

    rubric = load_rubric(_visibility_rubric(tmp_path))  # 10 % a day, 15 min grace, cap 30 %
    subs = tmp_path / "subs"
    subs.mkdir()
    paths = {sid: subs / name for sid, name in (("101", "Álvarez José_101_assignsubmission_file_"),
                                                ("102", "田中 太郎_102_assignsubmission_file_"),
                                                ("105", "pending_late_105_77_vit.ipynb"),
                                                ("999", "stranger_999_1_vit.ipynb"))}
    for path in paths.values():
        path.write_text("{}")
    on_time = (DUE - timedelta(days=1)).timestamp()
    os.utime(paths["105"], (on_time, on_time))  # Canvas says late, the file says on time
    os.utime(paths["999"], (DUE.timestamp() + 3 * 86400, DUE.timestamp() + 3 * 86400))  # 3 days: capped at 30 %
    submitted = tmp_path / "submitted.csv"
    submitted.write_text("student_id,submitted_at\n101,2026-12-02T00:10:00+09:00\n", "utf-8")  # in the grace period
    worksheet = tmp_path / "worksheet.csv"
    worksheet.write_text(MOODLE_TEMPLATE.format(**{f"{k}{s}": "" for k in "gf" for s in ("101", "102", "103", "106")}),
                         "utf-8")  # 102: "Wednesday, 2 December 2026, 9:15 AM" in the deadline's zone: 1 day late
    extensions_csv = tmp_path / "extensions.csv"
    extensions_csv.write_text("student_id,extension_hours\n102,6\n", "utf-8")  # due 05:59 the next day: still late
    inputs = read_late_inputs(rubric, submitted=submitted, extension_csv=extensions_csv, worksheet=worksheet)
    notes = apply_late_policy(graded, rubric, paths, inputs)
    reports = {r.student: r for r in load_reports(graded)[0]}
    assert reports["101"].late["reason"] == "within the grace period" and reports["101"].penalty == 0
    assert reports["102"].late["reason"] == "1 day late: -10 %" and reports["102"].late["extension_hours"] == 6
    assert reports["102"].penalty == 3.2 and reports["102"].final_score == 25 - 3.2
    assert reports["999"].late["reason"] == "3 days late: -30 %" and reports["999"].penalty == pytest.approx(9.6)
    assert FILE_TIME_WARNING in reports["999"].warnings and FILE_TIME_WARNING not in reports["101"].warnings
    assert any("Canvas marked this submission late" in w for w in reports["105"].warnings)
    assert any("file times" in note for note in notes)
    assert "late penalty 3.2" in (graded / "students" / "102" / "report.html").read_text()
    frame = gradebook_frame(list(reports.values()), list(rubric.points)).set_index("student")
    assert frame.loc["102", ["score", "penalty", "final_score"]].tolist() == [25.0, 3.2, 21.8]
    # Run again with nothing changed: the reports are not rewritten.
    before = (graded / "students" / "102" / "report.json").stat().st_mtime_ns
    apply_late_policy(graded, rubric, paths, inputs)
    assert (graded / "students" / "102" / "report.json").stat().st_mtime_ns == before
    # The [late] section removed: the penalties go with it.
    apply_late_policy(graded, load_rubric(), paths, read_late_inputs(load_rubric()))
    reports = {r.student: r for r in load_reports(graded)[0]}
    assert reports["102"].late == {} and reports["102"].final_score == reports["102"].score == 25
    assert not any(w.startswith("late policy:") for w in reports["105"].warnings + reports["999"].warnings)


@pytest.mark.slow
def test_grade_refuses_late_inputs_without_a_deadline_before_grading(tmp_path):
    from assignments import assignment_dir

    submitted = tmp_path / "submitted.csv"
    submitted.write_text("student_id,submitted_at\ns1,2026-12-02T00:10:00+09:00\n", "utf-8")
    done = subprocess.run([sys.executable, "-m", "grader", "grade", str(assignment_dir() / "examples"), "--out",
                           str(tmp_path / "out"), "--submitted", str(submitted), "--quiet"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "need a deadline" in done.stderr
    assert not (tmp_path / "out" / "students").exists()


def test_student_bundle_carries_no_hidden_check_nor_its_vectors(tmp_path):
    import numpy as np

    from grader.bundle import write_bundle
    from grader.expected import VectorExpected

    path = tmp_path / "course.toml"
    path.write_text(DEFAULT_RUBRIC.read_text("utf-8") + (
        '\n[visibility]\n"equiv.vit" = "hidden"\n"props.gradients" = "hidden"\n"train.accuracy" = "after_due_date"\n'
        '"equiv.fnn" = "visible"\n'
        f'\n[late]\ndeadline = {DEADLINE}\n'), "utf-8")
    bundle = write_bundle(tmp_path / "bundle", path)
    student = load_rubric(bundle / "assignments" / "vit_cifar10" / "rubric.toml")
    assert "equiv.vit" not in student.points and "train.accuracy" not in student.points
    assert {"equiv.fnn", "equiv.encoder_layer", "equiv.self_attention"} <= set(student.points)
    assert student.visibility == {} and student.late is not None
    text = (bundle / "assignments" / "vit_cifar10" / "rubric.toml").read_text("utf-8")
    assert "equiv.vit" not in text
    with np.load(bundle / "grader" / "test_vectors.npz", allow_pickle=False) as data:
        names = set(data.files)
    assert not any(name.startswith(("ViT/", "patches/")) for name in names)  # only the hidden checks read them
    assert {"FNN/output", "SelfAttention/output", "TransformerEncoderLayer/output"} <= names
    assert VectorExpected(bundle / "grader" / "test_vectors.npz").output("FNN")[0].shape[0] == 2


@pytest.mark.parametrize("line_ending", ["\r\n", "\n"])
def test_csv_table_round_trips_any_csv_and_reads_it_as_the_csv_module_does(line_ending):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from grader.tables.csvtable import parse

    cell = st.text(alphabet=st.sampled_from(list('ab ,"\n\r\tÿ田') + ["\u2028"]), max_size=6)

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.lists(cell, min_size=1, max_size=5), min_size=1, max_size=6),
           st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]))
    def check(rows, quoting):
        buffer = io.StringIO(newline="")
        csv.writer(buffer, lineterminator=line_ending, quoting=quoting).writerows(rows)
        text = buffer.getvalue()
        records = parse(text)
        assert "".join(",".join(r.raw) + r.ending for r in records) == text
        # (the csv module reads a blank line as [], this module as one empty field, which it writes back as it was)
        assert [r.values for r in records] == [row or [""] for row in csv.reader(io.StringIO(text, newline=""))]
        for record in records:  # setting a value and reading it back
            record.set(0, 'x, "y"\n')
            assert record.value(0) == 'x, "y"\n'
        assert [r.values[0] for r in parse("".join(",".join(r.raw) + r.ending for r in records))] == \
            ['x, "y"\n'] * len(records)

    check()


def test_release_again_drops_a_student_held_back_since(graded, tmp_path):
    from grader.lms.common import ExportError, graded_reports
    from grader.lms.release import release

    rubric = load_rubric()
    dest = tmp_path / "release"
    release(list(graded_reports(graded).values()), rubric, dest)
    assert (dest / "999" / "report.html").is_file()
    path = graded / "students" / "999" / "report.json"  # now needs a regrade: its old copy must go
    path.write_text(path.read_text("utf-8").replace('"status": "graded"', '"status": "error"').replace(
        '"error": ""', '"error": "internal grader error: RuntimeError: boom"'), "utf-8")
    again = release(list(graded_reports(graded).values()), rubric, dest)
    assert not (dest / "999").exists() and "999: needs regrade (grader fault)" in again.held_back
    assert (dest / "101" / "report.html").is_file() and not list(tmp_path.glob(".release*"))
    other = tmp_path / "someone_elses"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not an earlier release"):
        release(list(graded_reports(graded).values()), rubric, other)
    assert (other / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_grade_applies_the_late_policy_end_to_end(tmp_path, code_rubric_file):
    """`vitgrade grade` with a [late] rubric, --submitted for one student and a file time for the other."""
    import os

    import pandas as pd
    import tomlkit

    from assignments import assignment_dir

    data = tomlkit.parse(code_rubric_file.read_text("utf-8"))
    for check_id in [k for k in data["points"] if k not in ("load.code", "load.definitions")]:
        del data["points"][check_id]
    rubric = tmp_path / "late.toml"
    rubric.write_text(tomlkit.dumps(data) + f'\n[late]\ndeadline = {DEADLINE}\npenalty_percent = 25\nunit = "day"\n',
                      "utf-8")
    subs = tmp_path / "subs"
    subs.mkdir()
    example = (assignment_dir() / "examples" / "s1002_separate_qkv.py").read_bytes()
    (subs / "alice_101_5_vit.py").write_bytes(example)
    (subs / "bob_late_102_6_vit.py").write_bytes(example)
    late = DUE.timestamp() + 3600  # one hour late by its file time: 1 started day, -25 %
    os.utime(subs / "bob_late_102_6_vit.py", (late, late))
    submitted = tmp_path / "times.csv"
    submitted.write_text("student_id,submitted_at\n101,2026-12-01T20:00:00+09:00\n", "utf-8")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "grader", "grade", str(subs), "--out", str(out), "--rubric",
                           str(rubric), "--accuracy", "off", "--quiet", "--submitted", str(submitted)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "1 submission time(s) taken from file times" in done.stdout
    book = pd.read_csv(out / "gradebook.csv", dtype={"student": str}).set_index("student")
    assert book.loc["101", ["score", "penalty", "final_score"]].tolist() == [4.0, 0.0, 4.0]
    assert book.loc["102", ["score", "penalty", "final_score"]].tolist() == [4.0, 1.0, 3.0]
    html = (out / "students" / "102" / "report.html").read_text("utf-8")
    assert "1 day late: -25 %" in html and "final score <strong>3</strong>" in html


@pytest.mark.parametrize(("text", "scrubbed"), [
    ('File "/tmp/vitgrade-x1/scratch/submission.py", line 3', 'File "submission.py", line 3'),
    ("cannot read /home/prof/course/subs/田中_102/vit.ipynb: bad", "cannot read vit.ipynb: bad"),
    ("see https://example.com/docs/page and a/b", "see https://example.com/docs/page and a/b"),
    ("shape (2, 64, 256) != expected (2, 64, 512); x / y", "shape (2, 64, 256) != expected (2, 64, 512); x / y"),
])
def test_scrub_paths(text, scrubbed):
    from grader.lms.release import scrub_paths

    assert scrub_paths(text) == scrubbed


def test_gradescope_grader_fault_is_not_the_students(tmp_path, monkeypatch):
    """A report the grader could not finish (fault: grader) becomes the grader-failure results.json."""
    from grader.lms import gradescope_autograder

    root = tmp_path / "autograder"
    (root / "source").mkdir(parents=True)
    (root / "source" / "rubric.toml").write_bytes(DEFAULT_RUBRIC.read_bytes())
    broken = Report("submission", "submission", "graded", [
        CheckResult("load.code", "Code found", "passed", 2.0, 2.0),
        CheckResult("load.definitions", "Definitions", "error", 0.0, 3.0, "the sandbox could not start",
                    {"fault": "grader"})])
    monkeypatch.setattr(gradescope_autograder, "_grade", lambda *args: broken)
    assert gradescope_autograder.run(root) == 1
    results = __import__("json").loads((root / "results" / "results.json").read_text())
    assert results["extra_data"] == {"fault": "grader"} and "the sandbox could not start" in results["output"]


@pytest.mark.parametrize(("data", "message"), [
    (b'Student,ID\n"Doe, Jane,101\n', "a quoted field is never closed"),
    (b'Student,ID\n"Doe" Jane,101\n', "line 2: text after a closing quote"),
    (b'Student,ID\nDoe "Jane",101\n', "line 2: a quote inside an unquoted field"),
    ("Student,ID\nDoé,101\n".encode("cp1252"), "not UTF-8"),
    (b"Name,Number\nDoe,101\n", "not a Canvas gradebook export"),
])
def test_canvas_rejects_a_broken_export_naming_the_problem(graded, tmp_path, data, message):
    from grader.lms.canvas import export_canvas
    from grader.lms.common import ExportError

    exported = tmp_path / "export.csv"
    exported.write_bytes(data)
    with pytest.raises(ExportError, match=message):
        export_canvas(graded, exported, "ViT", tmp_path / "out.csv")
