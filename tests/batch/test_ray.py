"""Batch grading on a local Ray cluster: same scores as the local pool, reports written once, retries."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from grader.batch.run import BatchOptions, Entry, grade_batch, local_executor
from grader.report import Report

from ..conftest import EXAMPLES

ray = pytest.importorskip("ray", reason="Ray is an optional extra (installed with the test extra)")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # tasks below travel by value
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def small_class(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("class")
    shutil.copy(EXAMPLES / "s1002_separate_qkv.py", folder / "ann.py")
    shutil.copy(EXAMPLES / "s2003_heads_no_transpose.py", folder / "ben.py")
    (folder / "cat.ipynb").write_text("{broken", encoding="utf-8")
    return folder


def counting(executor, written: list[str]):
    def execute(entries, grade, done, workers):
        def record(report: Report) -> None:
            written.append(report.student)
            done(report)
        executor(entries, grade, record, workers)
    return execute


def test_ray_grades_exactly_like_the_local_pool(cluster, small_class, tmp_path):
    from grader.batch.ray_executor import ray_executor

    results = {}
    for name, executor in (("local", local_executor), ("ray", ray_executor())):
        written: list[str] = []
        out = tmp_path / name
        grade_batch([small_class], BatchOptions(out=out, accuracy="off", progress=False),
                    executor=counting(executor, written))
        assert sorted(written) == ["ann", "ben", "cat"]  # each report written once, by the driver
        results[name] = {p.parent.name: Report.from_dict(json.loads(p.read_text()))
                         for p in out.glob("students/*/report.json")}
    for student, local in results["local"].items():
        remote = results["ray"][student]
        assert (remote.status, remote.score, remote.max_score) == (local.status, local.score, local.max_score)
        assert [(c.id, c.status, c.points) for c in remote.checks] == [(c.id, c.status, c.points) for c in local.checks]


def flaky_grade(entry: Entry) -> Report:
    """Dies with its Ray worker process the first time it sees an entry, succeeds afterwards."""
    marker = Path(entry.path)
    if not marker.exists():
        marker.write_text("first attempt died here")
        os._exit(1)
    return Report(entry.student_id, str(entry.path), "graded")


def test_a_killed_task_is_retried_then_reported(cluster, tmp_path):
    from grader.batch.ray_executor import ray_executor

    reports: list[Report] = []
    entries = [Entry("dora", tmp_path / "dora.marker")]
    ray_executor(max_retries=2)(entries, flaky_grade, reports.append, 1)
    assert [r.status for r in reports] == ["graded"]
    assert (tmp_path / "dora.marker").read_text() == "first attempt died here"

    reports.clear()
    entries = [Entry("emil", tmp_path / "emil.marker")]
    ray_executor(max_retries=0)(entries, flaky_grade, reports.append, 1)
    assert reports[0].status == "error" and "failed on Ray after 0 retries" in reports[0].error


def test_without_ray_the_cli_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    from grader.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    (tmp_path / "s.py").write_text("x = 1\n", encoding="utf-8")
    code = main(["grade", str(tmp_path), "--out", str(tmp_path / "out"), "--executor", "ray", "--quiet"])
    assert code == 2
    assert 'pip install "vit-autograder[ray]"' in capsys.readouterr().err
