"""Rubric validation, report semantics and similarity hints."""

from __future__ import annotations

import json

import pytest

from grader.batch.similarity import similar_pairs
from grader.report import CheckResult, Report, load_report, write_atomic
from grader.rubric import DEFAULT_RUBRIC, RubricError, load_rubric

from .conftest import HANDOUT_SOURCE


def test_bundled_rubric_is_valid_and_covers_every_check():
    from grader.checks import CHECK_IDS

    rubric = load_rubric()
    assert set(rubric.points) == set(CHECK_IDS)
    assert {"quick", "full"} <= set(rubric.accuracy)


@pytest.mark.parametrize("edit, words", [
    (('"equiv.vit" = 6', '"equiv.vti" = 6'), "points.'equiv.vti': unknown check id"),
    (('"equiv.vit" = 6', '"equiv.vit" = "six"'), "points.'equiv.vit': expected a number"),
    (("float32 = { rtol = 1e-4, atol = 1e-5 }", "float32 = { rtol = 1e-4 }"), "tolerances.float32"),
    (("[limits]", "[limitz]"), "[limitz]: unknown section"),
    (("epochs = 4,", "epoch = 4,"), "accuracy.quick.recipe.epoch: unknown key"),
    (("dim_hidden = 64,", "dim_hiden = 64,"), "accuracy.quick.config.dim_hiden: not a ViT constructor argument"),
])
def test_bad_rubrics_name_the_bad_key(tmp_path, edit, words):
    text = DEFAULT_RUBRIC.read_text(encoding="utf-8")
    assert edit[0] in text
    path = tmp_path / "rubric.toml"
    path.write_text(text.replace(edit[0], edit[1], 1), encoding="utf-8")
    with pytest.raises(RubricError) as info:
        load_rubric(path)
    assert words in str(info.value) and str(path) in str(info.value)


def test_score_semantics_and_round_trip(tmp_path):
    report = Report("s1", "s1.ipynb", "graded", checks=[
        CheckResult("a.one", "A", "passed", 2.0, 2.0),
        CheckResult("a.two", "B", "failed", 0.0, 3.0, "wrong"),
        CheckResult("a.three", "C", "skipped", 0.0, 5.0, "no data"),
        CheckResult("task1.diagram", "D", "manual", None, 4.0),
    ])
    assert report.score == 2.0 and report.max_score == 9.0  # skipped: in neither; manual: in max only
    assert report.return_code == 1
    write_atomic(tmp_path / "report.json", report.to_json())
    data = json.loads((tmp_path / "report.json").read_text())
    assert [data[k] for k in ("schema_version", "student", "status", "score", "max_score")] == [1, "s1", "graded", 2.0, 9.0]
    assert load_report(tmp_path / "report.json").checks == report.checks
    assert list(tmp_path.iterdir()) == [tmp_path / "report.json"]  # no temporary file left behind


def test_reports_show_each_answer_once_part_by_part():
    report = Report("s1", "s1.ipynb", "graded", answers={
        "task1": "question\n\ndiagram", "task1-diagram": "diagram", "task3": "an answer in an untagged-part task"})
    assert report.answers_to_show == [("task1-diagram", "diagram"), ("task3", "an answer in an untagged-part task")]
    assert report.to_dict()["answers"] == report.answers  # report.json keeps every tag


def test_failure_report_is_well_formed():
    report = Report.failure("s2", "s2.zip", "zip bomb")
    assert report.status == "error" and report.score == 0 and report.max_score == 0 and report.return_code == 1


def test_similar_pairs_see_through_renaming_but_not_the_starter_code():
    own = '''
def attention(q, k, v, heads):
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    weights = scores.softmax(-1)
    merged = (weights @ v).transpose(1, 2)
    return merged.reshape(merged.shape[0], merged.shape[1], -1), weights
'''
    renamed = own.replace("scores", "s").replace("weights", "w").replace("merged", "m").replace("attention", "att")
    different = '''
def attention(q, k, v, heads):
    out = []
    for h in range(heads):
        a = torch.softmax(torch.einsum("bnd,bmd->bnm", q[h], k[h]) * 0.125, dim=-1)
        out.append(torch.einsum("bnm,bmd->bnd", a, v[h]))
    return torch.cat(out, -1), None
'''
    codes = {"a": HANDOUT_SOURCE + own, "b": HANDOUT_SOURCE + "# my version\n" + renamed, "c": HANDOUT_SOURCE + different,
             "d": HANDOUT_SOURCE}
    pairs = similar_pairs(codes, starter=HANDOUT_SOURCE)
    assert [(p.first, p.second) for p in pairs] == [("a", "b")]
    assert pairs[0].similarity > 0.9


def _perfect_self_check(rubric) -> Report:
    """What a self-check of a perfect solution reports with --accuracy off under `rubric`."""
    from grader.checks import PERSON_GRADED

    def result(check_id, points):
        if check_id in PERSON_GRADED:
            return CheckResult(check_id, check_id, "manual", None, points, "awaiting a TA")
        if check_id == "train.accuracy":
            return CheckResult(check_id, check_id, "skipped", 0.0, points, "--accuracy off")
        return CheckResult(check_id, check_id, "passed", points, points)

    return Report("s1", "vit_cifar10_ja.ipynb", "graded", checks=[result(k, v) for k, v in rubric.points.items()])


def test_self_check_numbers_add_up_to_the_assignment_total_with_and_without_the_bundle(tmp_path):
    from grader.bundle import student_rubric
    from grader.render.student import outline
    from grader.render.text import render_table
    from grader.rubric import instructor_only

    instructor = load_rubric()
    total = sum(instructor.points.values())
    assert outline(_perfect_self_check(instructor), instructor_only(instructor)) == [
        "automatic checks: 56/56 points",
        "written answers (task1.diagram, task2.explanation, task3.answer): 14 points, graded by your TA after you "
        "submit",
        "graded by the instructor after you submit: train.accuracy (10 points)",
        f"the assignment is out of {total:g} points"]
    (tmp_path / "rubric.toml").write_text(student_rubric(DEFAULT_RUBRIC.read_text(encoding="utf-8")), encoding="utf-8")
    student = load_rubric(tmp_path / "rubric.toml")
    assert "task2.choice" not in student.points and instructor_only(student) == {"task2.choice": 2.0}
    lines = outline(_perfect_self_check(student), instructor_only(student), "ja")
    assert lines[0] == "自動チェック: 54/54 点" and "task2.choice (2点)" in lines[2]
    assert lines[-1] == f"課題の満点は {total:g} 点です"
    table = render_table(_perfect_self_check(student), lang="ja", outline=lines)
    assert "合格" in table and "チェック" in table and "score 54 / 68" not in table and "PASS" not in table


def test_the_self_check_speaks_the_handout_notebooks_language(tmp_path):
    import nbformat

    from grader.handout import build_notebook
    from grader.render.student import notebook_language

    for lang in ("ja", "en"):
        nbformat.write(build_notebook(lang, "student"), tmp_path / f"{lang}.ipynb")
        assert notebook_language(tmp_path / f"{lang}.ipynb") == lang
    (tmp_path / "own.ipynb").write_text('{"cells": [], "metadata": {}}', encoding="utf-8")
    assert notebook_language(tmp_path / "own.ipynb") == notebook_language(tmp_path / "missing.py") == "en"
