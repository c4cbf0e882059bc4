"""Integrations: the course-repository CI workflow and the merge of TA scores for manual checks."""

from __future__ import annotations

import shlex

import pytest

from assignments import assignment_dir
from grader.batch.manual import merge_manual
from grader.cli import build_parser
from grader.report import CheckResult, Report, load_report, write_atomic

yaml = pytest.importorskip("yaml", reason="PyYAML parses the workflow file")


def test_github_workflow_runs_a_valid_vitgrade_check():
    workflow = yaml.safe_load((assignment_dir() / "ci" / "vitgrade-check.yml").read_text(encoding="utf-8"))
    steps = workflow["jobs"]["check"]["steps"]
    commands = [line for step in steps for line in str(step.get("run", "")).splitlines() if "vitgrade check" in line]
    assert len(commands) == 1
    argv = shlex.split(commands[0].replace('"$NOTEBOOK"', workflow["env"]["NOTEBOOK"]))[1:]
    args = build_parser().parse_args(argv)  # the options exist and parse
    assert args.command == "check" and args.accuracy == "off" and args.junit


def _graded_with_manual(out) -> None:
    report = Report("s1", "s1.ipynb", "graded", checks=[
        CheckResult("load.code", "Code", "passed", 2.0, 2.0),
        CheckResult("task1.diagram", "Diagram", "manual", None, 4.0, "awaiting a TA")])
    write_atomic(out / "students" / "s1" / "report.json", report.to_json())


def test_manual_scores_are_merged_and_bad_rows_reported(tmp_path):
    _graded_with_manual(tmp_path)
    sheet = tmp_path / "ta.csv"
    sheet.write_text("student_id,check_id,points,comment\n"
                     "s1,task1.diagram,3.5,clear diagram\n"
                     "s1,load.code,1,not manual\n"
                     "s1,task1.diagram,9,too many\n"
                     "s9,task1.diagram,1,\n", encoding="utf-8")
    result = merge_manual(tmp_path, sheet)
    report = load_report(tmp_path / "students" / "s1" / "report.json")
    check = report.check("task1.diagram")
    assert check.points == 3.5 and check.message == "graded by a TA: 3.5/4 — clear diagram"
    assert report.score == 5.5 and report.max_score == 6.0
    assert len(result.problems) == 3
    assert any("'passed' (not awaiting a TA) for 'load.code'" in n for n in result.problems)
    assert any("above the maximum 4" in n for n in result.problems)
    assert any("no report for student 's9'" in n for n in result.problems)
    assert (tmp_path / "students" / "s1" / "report.html").exists()


def test_manual_sheet_without_required_columns(tmp_path):
    sheet = tmp_path / "ta.csv"
    sheet.write_text("student,score\ns1,3\n", encoding="utf-8")
    with pytest.raises(ValueError, match="missing column"):
        merge_manual(tmp_path, sheet)
