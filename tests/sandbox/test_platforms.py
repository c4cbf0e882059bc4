"""Students' machines: nothing platform-only is imported at module level, and the sandbox degrades to
what the platform has and says so. Simulated on Linux by hiding modules and faking sys.platform; the
Windows transport (a worker on stdin/stdout) runs for real in test_transport.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from grader.sandbox import Sandbox
from grader.sandbox import isolation as isolation_module

ROOT = Path(__file__).resolve().parents[2]
CODE = "import torch\nclass Net(torch.nn.Module):\n    def forward(self, x):\n        return x + 1\n"


@pytest.mark.slow
def test_the_grader_imports_without_the_posix_only_modules():
    # What Windows lacks (resource, fcntl, pwd, grp, termios; torch itself needs ctypes): every module the
    # self-check and the batch import must still import.
    script = ("import sys\nfor name in ('resource', 'fcntl', 'pwd', 'grp', 'termios'):\n    sys.modules[name] = None\n"
              "import grader.cli, grader.batch.grading, grader.batch.run, grader.doctor, grader.sandbox.client\n"
              "from grader.sandbox.isolation import platform_protections\n"
              "import json; print(json.dumps(platform_protections()))")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    protections = json.loads(result.stdout.strip().splitlines()[-1])
    assert protections["rlimits"] is False and protections["process_limit"] is False


@pytest.mark.slow
def test_without_resource_the_worker_runs_and_the_report_says_what_was_in_force(monkeypatch):
    monkeypatch.setitem(sys.modules, "resource", None)  # the forked child sees the same
    with Sandbox(CODE) as sandbox:
        sandbox.request("build", {"handle": "n", "class": "Net"})
        reply = sandbox.request("forward", {"handle": "n"}, {"x": np.zeros((1, 2))})
    assert np.array_equal(reply.arrays["y"], np.ones((1, 2)))
    assert not any("CPU time" in p for p in sandbox.protections)
    assert any("memory watch" in p for p in sandbox.protections)


def test_on_macos_only_the_plain_level_is_offered(monkeypatch):
    monkeypatch.setattr(isolation_module.sys, "platform", "darwin")
    isolation_module.probe_levels.cache_clear()
    try:
        levels = isolation_module.probe_levels()
        assert levels["bwrap"] == "bubblewrap needs Linux" and levels["none"] == ""
        assert isolation_module.available_levels() == ("none",)
        assert not isolation_module.platform_protections()["die_with_grader"]
        isolation_module._die_with_parent()  # no prctl outside Linux: a no-op, not an error
    finally:
        monkeypatch.undo()
        isolation_module.probe_levels.cache_clear()


def test_output_lock_without_fcntl_uses_the_fallback(monkeypatch, tmp_path):
    from grader.batch import run as batch

    calls = []
    monkeypatch.setitem(sys.modules, "fcntl", None)
    fake = type(sys)("msvcrt")
    fake.LK_NBLCK, fake.LK_UNLCK = 2, 0
    fake.locking = lambda fd, mode, size: calls.append(mode)
    monkeypatch.setitem(sys.modules, "msvcrt", fake)
    with batch.OutputLock(tmp_path):
        pass
    assert calls == [2, 0]
