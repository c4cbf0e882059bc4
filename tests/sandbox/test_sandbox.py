"""Hostile code in the sandbox: each attack ends as a clear failure, the grader survives, no trace remains."""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from grader.sandbox import Limits, Sandbox, SandboxError, available_levels

MODULE = """
import torch
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
    def forward(self, x):
{body}
        return self.lin(x)
"""
LEVELS = available_levels()
# Every test here starts a sandboxed worker (seconds each, about 30 of them): CI runs them, the fast loop does not.
pytestmark = pytest.mark.slow
ISOLATED = [level for level in LEVELS if level != "none"]


def net(body: str = "pass", prelude: str = "") -> str:
    lines = "\n".join(f"        {line}" for line in body.splitlines())
    return prelude + MODULE.format(body=lines)


def forward(sandbox: Sandbox, timeout: float = 30.0):
    sandbox.request("build", {"handle": "n", "class": "Net"}, timeout=timeout)
    return sandbox.request("forward", {"handle": "n"}, {"x": np.ones((2, 4))}, timeout=timeout)


def processes_with(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if marker in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(pid))
            except OSError:
                continue
    return found


@pytest.fixture(params=LEVELS)
def level(request) -> str:
    return request.param


def test_training_runs_at_every_level(level):
    # The worker imports the harness (trainer.py) from its own folder at every isolation level.
    images = np.random.default_rng(0).integers(0, 256, size=(64, 2, 2, 3), dtype=np.uint8)
    code = net("x = x.flatten(1)").replace("Linear(4, 4)", "Linear(12, 3)")
    with Sandbox(code, isolation=level) as sandbox:
        sandbox.request("build", {"handle": "n", "class": "Net"}, timeout=30)
        recipe = {"epochs": 1, "batch_size": 16, "lr": 1e-2, "augment": False, "val_fraction": 0.0}
        reply = sandbox.request("train", {"handle": "n", "recipe": recipe},
                                {"x_train": images, "y_train": np.arange(64) % 3, "x_test": images[:5]}, timeout=60)
    assert reply.arrays["predictions"].shape == (5,)
    assert reply.header["epochs_run"] == 1


def test_well_behaved_code_round_trips(level):
    with Sandbox(net(), isolation=level) as sandbox:
        assert sandbox.start()["classes"] == ["Net"]
        reply = forward(sandbox)
        assert reply.arrays["y"].shape == (2, 4) and reply.arrays["y"].dtype == np.float64
        assert sandbox.isolation == level


def test_exit_at_import_is_a_clear_failure():
    with Sandbox(net(prelude="import os\nos._exit(3)\n")) as sandbox, pytest.raises(SandboxError) as info:
        sandbox.start()
    assert info.value.kind == "crash" and "exit" in info.value.message


def test_exit_inside_forward_fails_that_request_and_the_worker_restarts():
    with Sandbox(net("import os\nif x.shape[0] == 2:\n    os._exit(7)")) as sandbox:
        sandbox.start()
        with pytest.raises(SandboxError) as info:
            forward(sandbox)
        assert info.value.kind == "crash"
        # the next request starts a fresh worker, which loads the code again
        sandbox.request("build", {"handle": "n", "class": "Net"})
        reply = sandbox.request("forward", {"handle": "n"}, {"x": np.ones((3, 4))})
        assert reply.arrays["y"].shape == (3, 4)
        assert sandbox.stats.starts == 2


@pytest.mark.parametrize("body", [
    "while True:\n    pass",
    "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    pass",
])
def test_infinite_loops_time_out_and_are_killed(body):
    with Sandbox(net(body)) as sandbox:
        sandbox.start()
        started = time.monotonic()
        with pytest.raises(SandboxError) as info:
            forward(sandbox, timeout=3)
        assert info.value.kind == "timeout" and "no answer within 3 s" in info.value.message
        assert time.monotonic() - started < 20
        assert not sandbox.alive


def test_memory_beyond_the_limit_is_stopped():
    limits = Limits(memory_bytes=1024**3)
    touching = "import numpy\nblocks = [numpy.ones(2**27) for _ in range(24)]"  # 3 GiB, touched page by page
    with Sandbox(net(touching), limits=limits) as sandbox:
        sandbox.start()
        with pytest.raises(SandboxError) as info:
            forward(sandbox, timeout=60)
        assert info.value.kind in ("memory", "crash", "exception")
        assert "memory" in info.value.message.lower()


def test_huge_single_allocation_fails_inside_the_worker():
    limits = Limits(memory_bytes=1024**3)
    with Sandbox(net("import torch\ntorch.ones(10**12)"), limits=limits) as sandbox:
        sandbox.start()
        with pytest.raises(SandboxError) as info:
            forward(sandbox)
        assert "memory" in info.value.message.lower() or "allocate" in info.value.message.lower()


@pytest.mark.parametrize("level", ISOLATED)
def test_background_processes_do_not_outlive_the_worker(level):
    marker = f"sleep {900000 + int(uuid.uuid4().int % 90000)}"
    body = (f"import subprocess, os\n"
            f"subprocess.Popen({marker.split()!r}, start_new_session=True)\n"
            f"if os.fork() == 0:\n    os.setsid()\n    os.execvp('sleep', {marker.split()!r})")
    with Sandbox(net(body), isolation=level) as sandbox:
        sandbox.start()
        forward(sandbox)
        deadline = time.monotonic() + 5
        while len(processes_with(marker)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(processes_with(marker)) == 2, "the test's processes did not start"
    time.sleep(0.5)
    assert processes_with(marker) == []


def test_writes_outside_the_scratch_directory_leave_no_trace(tmp_path, best_isolation):
    if best_isolation != "bwrap":
        pytest.skip("only bubblewrap gives the worker a read-only view of the filesystem")
    token = uuid.uuid4().hex
    targets = [tmp_path / f"evil-{token}", Path("/tmp") / f"evil-{token}", Path.home() / f"evil-{token}"]
    body = "\n".join(f"try:\n    open({str(t)!r}, 'w').write('x')\nexcept OSError as e:\n    print('refused', e)"
                     for t in targets)
    with Sandbox(net(body)) as sandbox:
        sandbox.start()
        forward(sandbox)
    output = sandbox.output
    assert not any(t.exists() for t in targets)
    assert output.count("refused") >= 2  # tmp_path and home are read-only; /tmp is private and discarded


def test_grader_environment_is_not_visible(monkeypatch, level):
    monkeypatch.setenv("VITGRADE_TEST_SECRET", "s3cr3t-value")
    with Sandbox(net("import os\nprint(sorted(os.environ.items()))"), isolation=level) as sandbox:
        sandbox.start()
        forward(sandbox)
    assert "s3cr3t-value" not in sandbox.output
    assert "PATH" in sandbox.output


@pytest.mark.parametrize("level", ISOLATED)
def test_no_network_to_the_host(level):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    port = server.getsockname()[1]
    body = (f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n    print('CONNECTED')\n"
            f"except OSError as e:\n    print('blocked', e)")
    try:
        with Sandbox(net(body), isolation=level) as sandbox:
            sandbox.start()
            forward(sandbox)
        assert "blocked" in sandbox.output and "CONNECTED" not in sandbox.output
        with pytest.raises(BlockingIOError):
            server.accept()
    finally:
        server.close()


@pytest.mark.parametrize("module", ["reference", "grader", "grader.expected", "assignments"])
def test_reference_solution_and_grader_are_not_importable(module, best_isolation):
    if best_isolation != "bwrap":
        pytest.skip("hiding the installed packages needs bubblewrap")
    with Sandbox(f"import {module}\n") as sandbox, pytest.raises(SandboxError) as info:
        sandbox.start()
    assert "ModuleNotFoundError" in info.value.message


def test_protocol_garbage_from_student_code_is_rejected():
    # The reply pipe's number is on the worker's command line, so student code can find it.
    body = "import os, sys\nos.write(int(sys.argv[2]), b'VGW1\\xff\\xff\\xff\\x7fgarbage')"
    with Sandbox(net(body)) as sandbox:
        sandbox.start()
        with pytest.raises(SandboxError) as info:
            forward(sandbox)
        assert info.value.kind == "protocol" and "invalid message" in info.value.message
        assert not sandbox.alive


def test_printing_100_mb_is_capped():
    limits = Limits(output_bytes=64 * 1024)
    with Sandbox(net("import sys\nsys.stdout.write('x' * (100 * 1024**2))\nsys.stdout.flush()"), limits=limits) as sandbox:
        sandbox.start()
        forward(sandbox, timeout=60)
    output = sandbox.output
    assert len(output) < 70 * 1024
    assert "more bytes not kept" in output


def test_fake_protocol_lines_on_stdout_do_not_reach_the_parent():
    body = "print('VGW1 {\"ok\": true, \"y\": \"PASS\"}')\nprint('equiv.vit passed 6/6')"
    with Sandbox(net(body)) as sandbox:
        sandbox.start()
        reply = forward(sandbox)
        assert reply.arrays["y"].shape == (2, 4)
    assert "equiv.vit passed" in sandbox.output  # shown as the submission's output, nothing more


def test_the_scratch_directory_is_removed():
    with Sandbox(net("import os\nopen('left-behind.txt', 'w').write('x')\nprint('CWD', os.getcwd())"),
                 isolation="none") as sandbox:
        sandbox.start()
        forward(sandbox)
    cwd = next(line.split()[1] for line in sandbox.output.splitlines() if line.startswith("CWD"))
    assert not Path(cwd).exists()


def test_a_launched_worker_is_the_one_start_takes_and_it_loads_the_code_given_later():
    sandbox = Sandbox("", isolation=LEVELS[0])
    with sandbox:
        sandbox.launch()  # the worker imports torch while the caller reads the submission
        pid = sandbox._proc.pid
        sandbox.code = net()
        assert sandbox.start()["classes"] == ["Net"]
        assert sandbox._proc.pid == pid and sandbox.stats.starts == 1
        assert forward(sandbox).arrays["y"].shape == (2, 4)


def test_a_request_to_a_launched_worker_starts_it_first_and_a_dead_one_is_replaced():
    with Sandbox(net()) as sandbox:
        sandbox.launch()
        assert forward(sandbox).arrays["y"].shape == (2, 4)  # no request reaches a worker before its load
        sandbox.launch()
        os.killpg(sandbox._proc.pid, 9)
        sandbox._proc.wait()
        assert sandbox.start()["classes"] == ["Net"]
        assert sandbox.stats.starts == 3


def test_an_upstream_gradient_of_another_shape_is_refused_as_torch_refuses_it():
    with Sandbox(net()) as sandbox:
        sandbox.request("build", {"handle": "n", "class": "Net"})
        with pytest.raises(SandboxError) as info:
            sandbox.request("gradients", {"handle": "n", "gradients": {"lin.weight": "all"}},
                            {"x": np.ones((2, 4)), "grad_out": np.ones((2, 1, 4))})
        assert "Mismatch in shape: grad_output[0] has a shape of torch.Size([2, 1, 4]) and output[0] has a shape " \
               "of torch.Size([2, 4])." in info.value.message
        upstream = np.random.default_rng(0).standard_normal((2, 4))
        reply = sandbox.request("gradients", {"handle": "n", "gradients": {"lin.weight": "all", "lin.bias": "all"}},
                                {"x": np.ones((2, 4)), "grad_out": upstream})
    assert np.allclose(reply.arrays["grad:lin.bias"], upstream.sum(axis=0))
    assert np.allclose(reply.arrays["grad:lin.weight"], (upstream.T @ np.ones((2, 4))).reshape(-1))


def test_grading_takes_a_launched_worker_only_when_it_has_the_submissions_limits():
    from grader.batch.grading import _sandbox

    right, wrong = Limits(memory_bytes=2 * 1024**3), Limits(memory_bytes=3 * 1024**3)
    launched = Sandbox("", limits=wrong)
    launched.launch()
    fresh = _sandbox(net(), right, None, launched)
    assert fresh is not launched and fresh.limits == right and not launched.alive  # closed, not leaked
    launched = Sandbox("", limits=right)
    launched.launch()
    with _sandbox(net(), right, None, launched) as taken:
        assert taken is launched and taken.start()["classes"] == ["Net"]


def test_worker_trace_records_parameter_use_in_order_and_materialises_lazy_layers():
    """What the mapping by execution reads (tests/checks/test_mapping.py feeds it such traces)."""
    code = ("import torch.nn as nn\n"
            "class FNN(nn.Module):\n"
            "    def __init__(self, d, f):\n"
            "        super().__init__()\n"
            "        self.b = nn.LazyLinear(d)\n"
            "        self.a = nn.LazyLinear(f)\n"
            "        self.norm = nn.LayerNorm(d, eps=1e-6)\n"
            "    def forward(self, x):\n"
            "        return self.b(nn.functional.gelu(self.a(self.norm(x))))\n")
    with Sandbox(code) as sandbox:
        reply = sandbox.request("build", {"handle": "f", "class": "FNN", "args": [8, 12], "kwargs": {},
                                          "probe_shape": [1, 5, 8]}, timeout=60)
        shapes = {p["name"]: p["shape"] for p in reply.header["params"]}
        events = sandbox.request("trace", {"handle": "f"}, {"x": np.zeros((2, 5, 8))}, timeout=60).header["events"]
    assert shapes["a.weight"] == [12, 8] and shapes["b.weight"] == [8, 12]
    assert [e["op"] for e in events] == ["layer_norm", "linear", "linear"]
    assert events[0]["eps"] == pytest.approx(1e-6)
    assert [e["params"][0] for e in events] == ["norm.weight", "a.weight", "b.weight"]
