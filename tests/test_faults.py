"""A broken sandbox is the grader's fault: no points lost, exit 2, a message with the cause; and
the parent's own stalls or big replies do not decide a student's result."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tomlkit

from grader.batch.grading import grade_submission
from grader.checks import CHECKS
from grader.cli import main
from grader.report import CheckResult, Report
from grader.rubric import DEFAULT_RUBRIC, load_rubric
from grader.sandbox import Limits, Sandbox, SandboxError, fork_client
from grader.sandbox import isolation as isolation_module
from grader.sandbox.preflight import preflight

EXAMPLES = Path(__file__).resolve().parents[1] / "assignments" / "vit_cifar10" / "examples"
CORRECT = Path(__file__).resolve().parent / "fixtures" / "handout_vit.py"  # the handout's own classes


@pytest.fixture(scope="module")
def starving_rubric(tmp_path_factory) -> Path:
    """A rubric whose memory limit (20 MB) is far below what importing torch needs."""
    data = tomlkit.parse(DEFAULT_RUBRIC.read_text(encoding="utf-8"))
    data["limits"]["memory_gib"] = 0.02
    path = tmp_path_factory.mktemp("rubric") / "starving.toml"
    path.write_text(tomlkit.dumps(data), encoding="utf-8")
    return path


@pytest.mark.slow
def test_preflight_passes_with_the_students_limits():
    result = preflight(Limits())
    assert result.ok, result.message
    assert result.seconds > 0 and "preflight passed" in result.describe()


@pytest.mark.slow
def test_grade_stops_before_any_student_when_the_sandbox_cannot_run_known_good_code(
        starving_rubric, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["grade", str(CORRECT), "--out", str(out), "--rubric", str(starving_rubric), "--accuracy", "off",
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "preflight FAILED" in err and "memory limit" in err and "vitgrade doctor" in err
    assert not list(out.glob("students/*/report.json"))
    assert not (out / "challenges.jsonl").exists()  # the run's seed is drawn early, recorded only after the preflight


@pytest.mark.slow
def test_a_sandbox_that_fails_before_loading_is_a_grader_fault(starving_rubric, tmp_path, capsys):
    # `check` has no preflight: the worker dying before the code is loaded says whose fault it is.
    rubric = load_rubric(starving_rubric)
    report = grade_submission(CORRECT, rubric=rubric, accuracy="off")
    needs_worker = {c.id for c in CHECKS if c.needs_worker}
    worker_checks = [c for c in report.checks if c.id in needs_worker and c.status != "skipped"]
    assert worker_checks and all(c.status == "error" and c.fault == "grader" for c in worker_checks)
    assert "memory limit" in worker_checks[0].message
    assert report.needs_regrade
    assert report.max_score == sum(c.max_points for c in report.checks if c.id not in needs_worker)
    assert all(c.status == "passed" for c in report.checks if c.id in ("load.code", "static.forbidden"))
    data = json.loads(report.to_json())
    assert Report.from_dict(data).check("load.definitions").fault == "grader"
    assert main(["check", str(CORRECT), "--rubric", str(starving_rubric), "--accuracy", "off"]) == 2
    assert "the grader failed, not the submission" in capsys.readouterr().err


@pytest.mark.slow
def test_missing_worker_file_is_a_grader_fault_with_the_cause(monkeypatch, tmp_path):
    files = dict(isolation_module.worker_files())
    files["worker.py"] = tmp_path / "missing.py"
    monkeypatch.setattr(isolation_module, "worker_files", lambda: files)
    fork_client.close_all()  # a fork server started before would not see the missing file
    with Sandbox("x = 1\n") as sandbox, pytest.raises(SandboxError) as info:
        sandbox.start()
    fork_client.close_all()
    assert info.value.fault == "grader"
    # bubblewrap's own message ("Can't find source path") or the interpreter's, in the error itself
    assert "stderr" in info.value.message or "could not be started" in info.value.message, info.value.message


@pytest.mark.slow
def test_a_student_crash_is_still_the_submissions_fault():
    with Sandbox("import os\nos._exit(3)\n") as sandbox, pytest.raises(SandboxError) as info:
        sandbox.start()
    assert info.value.fault == "submission"


def test_grader_faults_count_as_no_lost_points():
    checks = [CheckResult("a", "A", "passed", 2, 2), CheckResult("b", "B", "error", 0, 3, "x", fault="grader"),
              CheckResult("c", "C", "error", 0, 1, "crash", fault="submission")]
    report = Report("s", "s.py", "graded", checks=checks)
    assert (report.score, report.max_score) == (2, 3) and report.needs_regrade


@pytest.mark.slow
def test_a_reply_larger_than_the_request_can_need_is_refused_before_it_is_read():
    code = ("import torch\nclass Net(torch.nn.Module):\n    def forward(self, x):\n"
            "        self.attn_weights = torch.zeros(2, 64, 1024, 1024)\n        return x\n")
    with Sandbox(code) as sandbox:
        sandbox.request("build", {"handle": "n", "class": "Net"})
        with pytest.raises(SandboxError) as info:
            sandbox.request("forward", {"handle": "n", "attrs": ["attn_weights"]}, {"x": np.ones((2, 4))})
    assert info.value.kind == "protocol" and "more than the" in info.value.message
    assert info.value.fault == "submission"


def hold_gil(seconds: float) -> None:
    """Keep this thread running Python for `seconds` without letting another thread in (as a slow parse
    of a hostile answer would): the interpreter's thread switch interval is raised meanwhile."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(seconds + 5)
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass
    finally:
        sys.setswitchinterval(interval)


@pytest.mark.slow
def test_a_busy_parent_does_not_expire_a_students_deadline():
    # The worker answers at once, but this process holds the GIL (as a slow parse of another student's
    # answer would) past the request's deadline: the reply is on time, and the stall is not charged.
    code = "import torch\nclass Net(torch.nn.Module):\n    def forward(self, x):\n        return x * 2\n"

    def hog(seconds: float) -> None:
        hold_gil(seconds)

    with Sandbox(code) as sandbox:
        sandbox.request("build", {"handle": "n", "class": "Net"})
        thread = threading.Thread(target=hog, args=(3.0,))
        thread.start()
        try:
            reply = sandbox.request("forward", {"handle": "n"}, {"x": np.ones((2, 4))}, timeout=1.0)
        finally:
            thread.join()
    assert np.array_equal(reply.arrays["y"], 2 * np.ones((2, 4)))


@pytest.mark.slow
def test_doctor_says_what_it_sees_and_whether_grading_works(capsys, starving_rubric):
    assert main(["doctor", "--accuracy", "off"]) == 0
    out = capsys.readouterr().out
    for section in ("python:", "torch:", "isolation levels:", "preflight:", "data:", "cached reference accuracies"):
        assert section in out
    assert "preflight passed" in out and "verdict: grading will work here" in out
    assert main(["doctor", "--accuracy", "off", "--rubric", str(starving_rubric)]) == 1
    out = capsys.readouterr().out
    assert "preflight FAILED" in out and "memory limit" in out and "will NOT work" in out


def test_isolation_levels_say_why_not(monkeypatch):
    isolation_module.probe_levels.cache_clear()
    monkeypatch.setattr(isolation_module.shutil, "which", lambda name, *a, **k: None)
    try:
        levels = isolation_module.probe_levels()
        assert "not installed" in levels["bwrap"] and levels["none"] == ""
    finally:
        isolation_module.probe_levels.cache_clear()


def test_course_ci_installs_what_the_course_hands_out_and_says_the_isolation_level():
    yaml = pytest.importorskip("yaml")
    import inspect

    import grader.assign
    from assignments import assignment_dir
    from grader.handout import NOTEBOOK_STEM  # noqa: F401 - the bundle's folder name comes from assign()

    workflow = yaml.safe_load((assignment_dir() / "ci" / "vitgrade-check.yml").read_text(encoding="utf-8"))
    runs = "\n".join(str(step.get("run", "")) for step in workflow["jobs"]["check"]["steps"])
    assert "pip install vit-autograder" not in runs and 'pip install "$VITGRADE_PACKAGE"' in runs
    bundle = workflow["env"]["VITGRADE_PACKAGE"]
    assert Path(bundle).name in inspect.getsource(grader.assign.assign)  # the folder `vitgrade assign` writes
    assert "vitgrade doctor" in runs and "GITHUB_STEP_SUMMARY" in runs


@pytest.mark.slow
def test_a_batch_stops_after_consecutive_grader_faults_and_regrades_them_next_time(starving_rubric, tmp_path):
    import pandas as pd

    from grader.batch.grading import fingerprint
    from grader.batch.run import MAX_GRADER_FAULTS, BatchOptions, Entry, grade_batch, stored_report
    from grader.sandbox.preflight import GraderBroken

    folder = tmp_path / "class"
    folder.mkdir()
    for number in range(MAX_GRADER_FAULTS + 2):
        (folder / f"s{number}.py").write_text(CORRECT.read_text(encoding="utf-8"), encoding="utf-8")
    rubric = load_rubric(starving_rubric)
    options = BatchOptions(out=tmp_path / "out", rubric=rubric, workers=1, accuracy="off", progress=False,
                           preflight=False)  # the preflight would stop it earlier; this tests the batch's own stop
    with pytest.raises(GraderBroken, match="in a row"):
        grade_batch([folder], options)
    book = pd.read_csv(tmp_path / "out" / "gradebook.csv")
    graded = book[book["status"] != "missing"]
    assert len(graded) == MAX_GRADER_FAULTS and set(graded["status"]) == {"needs regrade"}
    entry = Entry("s0", folder / "s0.py")
    assert stored_report(tmp_path / "out", entry, fingerprint(entry.path, rubric, "off")) == ("", None)


@pytest.mark.slow
def test_the_request_clock_does_not_count_the_graders_own_stall():
    from grader.sandbox.client import RequestClock

    clock = RequestClock(timeout=1.0, pid=None)
    time.sleep(0.3)  # the stall monitor runs
    first = clock.deadline()
    hold_gil(1.5)  # the heartbeat cannot run
    assert clock.excused() >= 0.5
    assert clock.deadline() > first
    assert clock.excused() <= 2.0  # capped at MAX_EXCUSED_FACTOR x timeout
