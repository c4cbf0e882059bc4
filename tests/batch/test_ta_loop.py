"""The grading loop around the reports, on report.json files written here (no grading): TA scores that are
never lost, one writer for every output of a student, safe spreadsheets, rubric changes, console and exit."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from grader.batch.gradebook import write_summary
from grader.batch.grading import fingerprint
from grader.batch.manual import apply_scores, load_scores, merge_manual, write_ta_sheet
from grader.batch.output import student_dir, write_student
from grader.batch.run import BatchOptions, Entry, grade_batch
from grader.report import CheckResult, Report, load_report, write_atomic
from grader.rubric import DEFAULT_RUBRIC, load_rubric

from ..conftest import EXAMPLES

ANSWER = "the class token goes through 12 layers"


def _report(student: str = "s1", answer: str = ANSWER, submission: str = "", **extra) -> Report:
    return Report(student, submission or f"{student}.ipynb", "graded", checks=[
        CheckResult("load.code", "Code found and parsed", "passed", 2.0, 2.0, "ok"),
        CheckResult("equiv.vit", "ViT computes the reference function", "failed", 0.0, 6.0, "differs"),
        CheckResult("task1.diagram", "課題1: network diagram (graded by a person)", "manual", None, 4.0,
                    "課題1 diagram: awaiting a TA", {"answer": answer, "pictures": []}),
        CheckResult("task3.answer", "課題3: heatmaps", "manual", None, 6.0, "課題3 answer: awaiting a TA",
                    {"answer": "heatmaps", "pictures": []}),
    ], **extra)


def _sheet(path: Path, *rows: str) -> Path:
    path.write_text("student_id,check_id,points,comment\n" + "".join(f"{row}\n" for row in rows), encoding="utf-8")
    return path


def _read(out: Path, student: str = "s1") -> dict:
    return json.loads((student_dir(out, student) / "report.json").read_text(encoding="utf-8"))


def test_a_merge_rewrites_every_output_of_the_student_including_gradescope(tmp_path):
    write_student(tmp_path, _report(), gradescope=True)
    before = json.loads((student_dir(tmp_path, "s1") / "results.json").read_text())
    pending = next(t for t in before["tests"] if t["number"] == "task1.diagram")
    assert "status" not in pending and "score" not in pending and "awaiting a TA" in pending["output"]
    result = merge_manual(tmp_path, _sheet(tmp_path / "ta.csv", "s1,task1.diagram,3.5,clear"))
    assert result.problems == []
    folder = student_dir(tmp_path, "s1")
    report, gradescope = _read(tmp_path), json.loads((folder / "results.json").read_text())
    assert report["score"] == gradescope["score"] == 5.5
    graded = next(t for t in gradescope["tests"] if t["number"] == "task1.diagram")
    assert graded["score"] == 3.5 and "clear" in graded["output"] and "status" not in graded
    assert "3.5" in (folder / "report.md").read_text() and "clear" in (folder / "report.html").read_text()


def test_merging_twice_keeps_one_comment_and_says_graded(tmp_path):
    write_student(tmp_path, _report())
    sheet = _sheet(tmp_path / "ta.csv", "s1,task1.diagram,3,arrows missing")
    merge_manual(tmp_path, sheet)
    merge_manual(tmp_path, sheet)
    _sheet(sheet, "s1,task1.diagram,3.5,arrows added")
    merge_manual(tmp_path, sheet)
    check = next(c for c in _read(tmp_path)["checks"] if c["id"] == "task1.diagram")
    assert check["points"] == 3.5
    assert check["message"] == "graded by a TA: 3.5/4 — arrows added"


def test_ta_scores_survive_a_regrade_and_a_changed_answer_is_flagged(tmp_path):
    write_student(tmp_path, _report())
    merge_manual(tmp_path, _sheet(tmp_path / "ta.csv", "s1,task1.diagram,3,good", "s1,task3.answer,5,"))
    scores = load_scores(tmp_path)
    regraded = _report()  # a regrade (new rubric, new grader) gives a fresh report: points None
    assert apply_scores(regraded, scores) == []
    assert regraded.score == 10.0 and regraded.check("task1.diagram").details["ta"]["comment"] == "good"
    resubmitted = _report(answer="a different diagram")
    notes = apply_scores(resubmitted, scores)
    diagram = resubmitted.check("task1.diagram")
    assert diagram.points is None and "answer changed" in diagram.message and len(notes) == 1
    assert diagram.details["ta_previous"]["points"] == 3  # shown, not lost
    assert resubmitted.check("task3.answer").points == 5  # that answer did not change
    assert load_scores(tmp_path) == scores  # the record stays until a TA grades the new answer
    # Merging an old copy of the sheet again does not pin the old points on the new answer.
    write_student(tmp_path, resubmitted)
    write_ta_sheet(tmp_path, [regraded])  # the sheet while the old answer was graded
    shutil.copy(tmp_path / "ta_sheet.csv", tmp_path / "old_sheet.csv")
    assert "s1,task1.diagram,3,good" in (tmp_path / "old_sheet.csv").read_text()
    write_ta_sheet(tmp_path, [resubmitted])
    assert merge_manual(tmp_path, tmp_path / "old_sheet.csv").problems == []
    assert _read(tmp_path)["checks"][2]["points"] is None and load_scores(tmp_path) == scores


def test_the_ta_sheet_keeps_graded_rows_and_entries_typed_but_not_merged(tmp_path):
    for student in ("s1", "s2"):
        write_student(tmp_path, _report(student))
    merge_manual(tmp_path, _sheet(tmp_path / "ta.csv", "s1,task1.diagram,3,good"))
    reports = [load_report(p) for p in sorted(tmp_path.glob("students/*/report.json"))]
    write_ta_sheet(tmp_path, reports)
    sheet = pd.read_csv(tmp_path / "ta_sheet.csv", dtype=str, keep_default_na=False)
    assert len(sheet) == 4  # graded rows stay, with their points: the sheet is the TA's record
    row = sheet[(sheet.student_id == "s1") & (sheet.check_id == "task1.diagram")].iloc[0]
    assert (row.points, row.comment, row.state) == ("3", "good", "graded")
    # A TA fills in a row in place; a rerun without --manual must not wipe it.
    sheet.loc[(sheet.student_id == "s2") & (sheet.check_id == "task3.answer"), ["points", "comment"]] = ["4", "ok"]
    sheet.to_csv(tmp_path / "ta_sheet.csv", index=False)
    notes = write_ta_sheet(tmp_path, reports)
    again = pd.read_csv(tmp_path / "ta_sheet.csv", dtype=str, keep_default_na=False)
    typed = again[(again.student_id == "s2") & (again.check_id == "task3.answer")].iloc[0]
    assert (typed.points, typed.comment) == ("4", "ok") and any("not merged" in n for n in notes)
    # A sheet that would lose rows (a student's written tasks left the rubric) is backed up first.
    notes = write_ta_sheet(tmp_path, reports[:1])
    backups = list(tmp_path.glob("ta_sheet.backup-*.csv"))
    assert len(backups) == 1 and "s2" in backups[0].read_text() and any("backup" in n for n in notes)


def test_spreadsheet_cells_cannot_be_formulas_and_read_back_as_written(tmp_path):
    hostile = '=HYPERLINK("http://evil","x")'
    write_student(tmp_path, _report(answer=hostile))
    write_student(tmp_path, _report("s2", answer="@SUM(A1)", submission="-cmd.ipynb"))
    rubric = load_rubric()
    write_summary(tmp_path, [], None, rubric)
    for name in ("ta_sheet.csv", "gradebook.csv"):
        for line in (tmp_path / name).read_text(encoding="utf-8").splitlines():
            for cell in line.split(","):
                assert not cell.strip('"').startswith(("=", "+", "@", "\t", "\r")), (name, cell)
    sheet = pd.read_csv(tmp_path / "ta_sheet.csv", dtype=str, keep_default_na=False)
    assert sheet.answer.str.startswith("'").sum() == 2
    sheet.loc[sheet.check_id == "task1.diagram", ["points", "comment"]] = ["2", "'-2 for =missing arrows"]
    sheet.to_csv(tmp_path / "graded.csv", index=False)
    assert merge_manual(tmp_path, tmp_path / "graded.csv").problems == []
    message = next(c for c in _read(tmp_path)["checks"] if c["id"] == "task1.diagram")["message"]
    assert message.endswith("— -2 for =missing arrows")  # the TA's text, without the protective quote


def test_student_ids_like_na_and_null_stay_ids(tmp_path):
    for student in ("NA", "null", "None"):
        write_student(tmp_path, _report(student))
    sheet = _sheet(tmp_path / "ta.csv", "NA,task1.diagram,1,", "null,task1.diagram,2,", "None,task1.diagram,3,")
    assert merge_manual(tmp_path, sheet).problems == []
    assert [_read(tmp_path, s)["score"] for s in ("NA", "null", "None")] == [3.0, 4.0, 5.0]


def test_sheet_rows_that_cannot_be_applied_are_problems(tmp_path):
    write_student(tmp_path, _report())
    sheet = _sheet(tmp_path / "ta.csv", "s1,task1.diagram,9,too many", "s1,equiv.vit,1,", "s9,task1.diagram,1,",
                   "s1,task3.answer,x,")
    problems = merge_manual(tmp_path, sheet).problems
    assert len(problems) == 4
    assert _read(tmp_path)["score"] == 2.0  # nothing applied


def test_outputs_are_readable_like_normal_files(tmp_path):
    write_atomic(tmp_path / "a.txt", "x")
    (tmp_path / "b.txt").write_text("x")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == (tmp_path / "b.txt").stat().st_mode & 0o777
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_rubric_fingerprint_separates_verdicts_from_points(tmp_path):
    text = DEFAULT_RUBRIC.read_text(encoding="utf-8")
    base = load_rubric()
    (tmp_path / "comment.toml").write_text("# a new comment\n" + text.replace("# Per request", "# Per-request"))
    (tmp_path / "points.toml").write_text(text.replace('"equiv.vit" = 6', '"equiv.vit" = 8'))
    (tmp_path / "tolerance.toml").write_text(text.replace("float64 = { rtol = 1e-6", "float64 = { rtol = 1e-5"))
    comment, points, tolerance = (load_rubric(tmp_path / f"{n}.toml") for n in ("comment", "points", "tolerance"))
    assert (comment.verdict_digest, comment.points_digest) == (base.verdict_digest, base.points_digest)
    assert points.verdict_digest == base.verdict_digest and points.points_digest != base.points_digest
    assert tolerance.verdict_digest != base.verdict_digest


def _graded_folder(tmp_path: Path, rubric_path: Path) -> tuple[Path, Path]:
    """An output folder as `vitgrade grade --rubric rubric_path` leaves it, without grading: one submission
    whose report carries that rubric's fingerprint."""
    submissions, out = tmp_path / "subs", tmp_path / "out"
    submissions.mkdir()
    shutil.copy(EXAMPLES / "s1002_separate_qkv.py", submissions / "s1.py")
    rubric = load_rubric(rubric_path)
    report = _report(fingerprint=fingerprint(submissions / "s1.py", rubric, "off"))
    write_student(out, report, gradescope=True)
    merge_manual(out, _sheet(tmp_path / "ta.csv", "s1,task1.diagram,4,"))
    shutil.copy(rubric_path, out / "rubric.toml")
    return submissions, out


def _no_grading(entries: list[Entry], *args) -> None:
    assert entries == [], f"graded {entries} again"


def test_a_points_change_rescores_without_grading_and_keeps_ta_scores(tmp_path):
    submissions, out = _graded_folder(tmp_path, DEFAULT_RUBRIC)
    changed = tmp_path / "changed.toml"
    changed.write_text(DEFAULT_RUBRIC.read_text(encoding="utf-8").replace('"equiv.vit" = 6', '"equiv.vit" = 9')
                       .replace('"load.code" = 2', '"load.code" = 5'))
    summary = grade_batch([submissions], BatchOptions(out=out, rubric=load_rubric(changed), accuracy="off",
                                                      progress=False), executor=_no_grading)
    assert summary.rescored == ["s1"] and summary.graded == []
    report = _read(out)
    points = {c["id"]: (c["points"], c["max_points"]) for c in report["checks"]}
    assert points["load.code"] == (5.0, 5.0) and points["equiv.vit"] == (0.0, 9.0)
    assert points["task1.diagram"] == (4.0, 4.0)  # the TA's points survive
    assert json.loads((student_dir(out, "s1") / "results.json").read_text())["score"] == report["score"] == 9.0
    assert "changed" in summary.describe() and (out / "rubric.toml").read_text() == changed.read_text()


def test_without_rubric_the_folder_keeps_the_rubric_it_was_graded_with(tmp_path):
    own = tmp_path / "own.toml"
    own.write_text(DEFAULT_RUBRIC.read_text(encoding="utf-8").replace('"load.code" = 2', '"load.code" = 3'))
    submissions, out = _graded_folder(tmp_path, own)
    summary = grade_batch([submissions], BatchOptions(out=out, accuracy="off", progress=False), executor=_no_grading)
    assert summary.reused == ["s1"] and "no --rubric given" in summary.describe()


def test_bad_inputs_are_refused_before_anyone_is_graded(tmp_path):
    submissions, out = _graded_folder(tmp_path, DEFAULT_RUBRIC)
    shutil.copy(EXAMPLES / "s2001_softmax_axis.ipynb", submissions / "s2.ipynb")  # would need grading
    options = dict(out=out, accuracy="off", progress=False)
    with pytest.raises(ValueError, match="roster .*no such file"):
        grade_batch([submissions], BatchOptions(roster=tmp_path / "nope.csv", **options), executor=_no_grading)
    for row, words in [("s1,task1.diagram,5,", "above the maximum 4"), ("s7,task1.diagram,1,", "unknown student"),
                       ("s1,task1.diagrma,1,", "not a check a TA grades")]:
        with pytest.raises(ValueError, match=words):
            grade_batch([submissions], BatchOptions(manual=_sheet(tmp_path / "bad.csv", row), **options),
                        executor=_no_grading)


def test_console_lists_errors_and_counts_missing_students_on_reruns(tmp_path):
    submissions, out = _graded_folder(tmp_path, DEFAULT_RUBRIC)
    write_student(out, Report.failure("s3", "s3.zip", "s3.zip is not a readable zip archive"))
    roster = tmp_path / "roster.csv"
    roster.write_text("student_id\ns1\ns3\nNA\nfrank\n", encoding="utf-8")
    for _ in range(2):
        summary = grade_batch([submissions], BatchOptions(out=out, roster=roster, accuracy="off", progress=False),
                              executor=_no_grading)
        text = summary.describe()
        assert summary.missing == ["NA", "frank"] and "2 missing" in text
        assert "1 error(s)" in text and "s3: s3.zip is not a readable zip archive" in text


def test_summary_pass_rate_counts_ta_graded_answers(tmp_path):
    for student in ("s1", "s2"):
        write_student(tmp_path, _report(student))
    merge_manual(tmp_path, _sheet(tmp_path / "ta.csv", "s1,task1.diagram,4,", "s2,task1.diagram,2,"))
    write_summary(tmp_path, [], None, load_rubric())
    summary = (tmp_path / "summary.html").read_text(encoding="utf-8")
    assert "<code>task1.diagram</code></td><td class=\"num\">75 %" in summary
    assert "task3.answer</code></td>" not in summary  # nobody graded it yet: no rate, not 0 %


def test_a_sheet_row_that_cannot_be_applied_makes_the_batch_exit_1(tmp_path):
    submissions, out = _graded_folder(tmp_path, DEFAULT_RUBRIC)
    report = load_report(out / "students/s1/report.json", pictures=True)
    unanswered = report.check("task3.answer")
    unanswered.status, unanswered.points, unanswered.message = "failed", 0.0, "not answered yet"
    write_student(out, report)
    sheet = _sheet(tmp_path / "late.csv", "s1,task3.answer,5,")
    summary = grade_batch([submissions], BatchOptions(out=out, manual=sheet, accuracy="off", progress=False),
                          executor=_no_grading)
    assert summary.return_code == 1 and "'failed' (not awaiting a TA)" in summary.describe()
    assert _read(out)["score"] == 6.0  # load.code 2 + the diagram's 4 merged earlier; nothing else changed


@pytest.mark.slow
def test_a_rubric_change_regrades_and_reapplies_the_ta_scores(tmp_path):
    submissions, out = _graded_folder(tmp_path, DEFAULT_RUBRIC)
    stricter = tmp_path / "stricter.toml"
    stricter.write_text(DEFAULT_RUBRIC.read_text(encoding="utf-8").replace("float64 = { rtol = 1e-6",
                                                                             "float64 = { rtol = 1e-7"))
    rubric = load_rubric(stricter)
    regraded: list[str] = []

    def fresh_reports(entries, grade, done, workers):  # what grading returns: no TA points in it
        for entry in entries:
            regraded.append(entry.student_id)
            done(_report(entry.student_id, fingerprint=fingerprint(entry.path, rubric, "off")))

    summary = grade_batch([submissions], BatchOptions(out=out, rubric=rubric, accuracy="off", progress=False),
                          executor=fresh_reports)
    assert regraded == ["s1"] and "regraded because the rubric changed" in summary.describe()
    report = _read(out)
    assert next(c for c in report["checks"] if c["id"] == "task1.diagram")["points"] == 4.0
    assert json.loads((student_dir(out, "s1") / "results.json").read_text())["score"] == report["score"] == 6.0
    sheet = pd.read_csv(out / "ta_sheet.csv", dtype=str, keep_default_na=False).set_index("check_id")
    assert sheet.loc["task1.diagram", "points"] == "4" and sheet.loc["task3.answer", "state"] == "awaiting"
