"""The worker's transport on Windows (grader/sandbox/transport.py), run for real on Linux with Windows simulated.

`simulate_windows` takes away what Windows lacks, as the grader meets it there: `sys.platform` says
win32; subprocess refuses `pass_fds` and `preexec_fn`; select() refuses pipes (it takes only sockets
there); no `os.set_blocking` for pipes (Python < 3.12), no process groups, sessions, user ids, `fork`
or SIGKILL, no `resource`, `fcntl` or `/proc`. Real workers then run the handout's correct code (through the student bundle's
`vitgrade check`), a print flood, a hang and an oversized reply. The worker's side (`protocol_off_stdio`, `msvcrt.setmode`) runs in a child with a
stand-in `msvcrt`.
"""

from __future__ import annotations

import builtins
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from grader.sandbox import Sandbox, SandboxError, transport, wire
from grader.sandbox.isolation import ALWAYS_PROTECTS

ROOT = Path(__file__).resolve().parents[2]
CORRECT = ROOT / "tests" / "fixtures" / "handout_vit.py"  # the handout's own classes
NET = "import torch\nclass Net(torch.nn.Module):\n    def forward(self, x):\n{body}\n        return x + 1\n"


class WindowsPopen(subprocess.Popen):
    """subprocess.Popen as on Windows: no inherited descriptors besides the standard ones, no preexec_fn."""

    def __init__(self, *args, pass_fds=(), preexec_fn=None, **kwargs):
        if pass_fds:
            raise ValueError("pass_fds not supported on Windows.")
        if preexec_fn is not None:
            raise ValueError("preexec_fn is not supported on Windows platforms")
        super().__init__(*args, **kwargs)

    def kill(self) -> None:
        """TerminateProcess, as on Windows (Linux's Popen.kill would look up signal.SIGKILL, which Windows lacks)."""
        if self.poll() is None:
            os.kill(self.pid, 9)


class SocketsOnlySelect:
    """select.select as on Windows: pipes are not sockets."""

    @staticmethod
    def select(*args, **kwargs):
        raise OSError(10038, "An operation was attempted on something that is not a socket")


def _without_proc(function, missing):
    def wrapper(path=".", *args, **kwargs):
        if isinstance(path, str) and (path == "/proc" or path.startswith("/proc/")):
            return missing(path)
        return function(path, *args, **kwargs)
    return wrapper


def _no_such_file(path):
    raise FileNotFoundError(2, "No such file or directory", path)


def simulate_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process as on Windows, for the grader's side of the sandbox (numpy and torch are already imported
    for the real platform). The worker itself runs Linux's Python: its Windows-only step is tested apart."""
    for name in ("resource", "fcntl", "pwd", "grp", "termios"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(subprocess, "Popen", WindowsPopen)
    monkeypatch.setattr(wire, "select", SocketsOnlySelect)
    for name in ("set_blocking", "killpg", "getpgid", "setsid", "getuid", "sysconf", "fork"):
        monkeypatch.delattr(os, name)
    monkeypatch.delattr(signal, "SIGKILL")
    monkeypatch.setattr(builtins, "open", _without_proc(builtins.open, _no_such_file))
    monkeypatch.setattr(os, "listdir", _without_proc(os.listdir, _no_such_file))
    monkeypatch.setattr(os.path, "isdir", _without_proc(os.path.isdir, lambda path: False))


@pytest.fixture
def windows(monkeypatch):
    simulate_windows(monkeypatch)


# -- a whole self-check, from the student bundle ---------------------------------------------------------------
CHECK_ON_WINDOWS = """
import sys
bundle, root = sys.argv.pop(1), sys.argv.pop(1)
sys.path[:0] = [bundle, root]  # the bundle's grader; this checkout only for tests.sandbox
import numpy, torch  # imported for the platform they run on
import pytest
import grader
assert grader.__file__.startswith(bundle), grader.__file__
from tests.sandbox.test_transport import simulate_windows
simulate_windows(pytest.MonkeyPatch())
from grader.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, code_rubric_file) -> Path:
    from grader.bundle import write_bundle

    return write_bundle(tmp_path_factory.mktemp("bundle") / "vitgrade_student", rubric_path=code_rubric_file)


@pytest.mark.slow  # starts a worker process
def test_the_bundles_vitgrade_check_gives_a_correct_submission_full_code_marks_on_simulated_windows(bundle, tmp_path):
    out = tmp_path / "report.json"
    result = subprocess.run([sys.executable, "-c", CHECK_ON_WINDOWS, str(bundle), str(ROOT), "check", str(CORRECT),
                             "--accuracy", "off", "--json", str(out)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text(encoding="utf-8"))
    code = [c for c in report["checks"] if c["status"] != "skipped"]
    assert code and all(c["status"] == "passed" for c in code), [(c["id"], c["message"]) for c in code]
    assert report["score"] == report["max_score"] > 0
    sandbox = report["sandbox"]
    assert sandbox["isolation"] == "none"
    # What Windows has, and nothing it lacks: no rlimits, no memory watch, no death with the grader.
    assert sandbox["protections"][-1] == ALWAYS_PROTECTS
    assert not any(word in p for p in sandbox["protections"] for word in ("CPU time", "memory watch", "dies with"))


# -- the worker's limits on the Windows path ---------------------------------------------------------------
def forward(sandbox: Sandbox, x: np.ndarray, timeout: float = 30.0, **request):
    sandbox.request("build", {"handle": "n", "class": "Net"}, timeout=timeout)
    return sandbox.request("forward", {"handle": "n", **request}, {"x": x}, timeout=timeout)


@pytest.mark.slow  # starts a worker process
def test_a_print_flood_and_input_never_reach_the_protocol(windows):
    body = ("        import os, sys\n"
            "        print('VGW1' + 'x' * 100, flush=True)\n"  # the protocol's magic, on stdout
            "        for _ in range(2000):\n"
            "            print('y' * 1000)\n"
            "        os.write(1, b'raw on fd 1\\n')\n"
            "        try:\n"
            "            input()\n"
            "        except EOFError:\n"
            "            print('stdin is empty')")
    with Sandbox(NET.format(body=body), isolation="none") as sandbox:
        reply = forward(sandbox, np.zeros((2, 3)))
        assert np.array_equal(reply.arrays["y"], np.ones((2, 3)))
        assert reply.header["ok"]
        output = sandbox.output
    assert "VGW1xxx" in output and "more bytes not kept" in output  # shown as output, capped
    assert len(output) < 2 * sandbox.limits.output_bytes


@pytest.mark.slow  # starts a worker process
def test_a_hang_times_out_and_the_worker_is_killed(windows):
    with Sandbox(NET.format(body="        while True:\n            pass"), isolation="none") as sandbox:
        sandbox.start()
        pid = sandbox._proc.pid
        with pytest.raises(SandboxError) as info:
            forward(sandbox, np.zeros((2, 3)), timeout=2)
        assert info.value.kind == "timeout" and "no answer within 2 s" in info.value.message
        assert info.value.fault == "submission"
        assert not sandbox.alive
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # gone, and reaped


@pytest.mark.slow  # starts a worker process
def test_an_oversized_reply_is_refused_before_its_arrays_are_read(windows, monkeypatch):
    read = []
    original = transport.ThreadedPipes.read

    def counting(self, size, deadline):
        chunk = original(self, size, deadline)
        read.append(len(chunk))
        return chunk

    monkeypatch.setattr(transport.ThreadedPipes, "read", counting)
    body = "        self.attn_weights = torch.zeros(3 * 2**20)"  # 24 MiB as float64 in the reply
    with Sandbox(NET.format(body=body), isolation="none") as sandbox:
        sandbox.request("build", {"handle": "n", "class": "Net"})
        with pytest.raises(SandboxError) as info:
            sandbox.request("forward", {"handle": "n", "attrs": ["attn_weights"]}, {"x": np.zeros((2, 3))},
                            max_reply_bytes=2**20)
        assert not sandbox.alive
    assert info.value.kind == "protocol" and "more than the" in info.value.message
    assert 0 < sum(read) < 2**16  # the earlier replies and this one's header, never its arrays


IDLE_WORKER_ON_WINDOWS = """
import sys, time
import numpy, torch
import pytest
from tests.sandbox.test_transport import simulate_windows
simulate_windows(pytest.MonkeyPatch())
from grader.sandbox import Sandbox
sandbox = Sandbox("x = 1\\n", isolation="none")
sandbox.start()
print(sandbox._proc.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.slow  # starts a worker process
def test_an_idle_worker_exits_when_the_grader_is_killed():
    # Windows has no PR_SET_PDEATHSIG: the worker notices the end of its request pipe instead.
    grader = subprocess.Popen([sys.executable, "-c", IDLE_WORKER_ON_WINDOWS], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        pid = int(grader.stdout.readline())
        scratch = os.readlink(f"/proc/{pid}/cwd")
    finally:
        grader.kill()
        grader.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _running(pid):
        time.sleep(0.1)
    assert not _running(pid)
    shutil.rmtree(scratch, ignore_errors=True)  # the killed grader could not remove it


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except OSError:
        return False


# -- ThreadedPipes alone: deadlines as wire's select() path keeps them -------------------------------------
@pytest.fixture
def pipes():
    request_r, request_w = os.pipe()
    reply_r, reply_w = os.pipe()
    channel = transport.ThreadedPipes(request_w, reply_r)
    yield channel, request_r, reply_w
    channel.close()
    for fd in (request_r, reply_w):
        os.close(fd)


def test_threaded_pipes_read_no_more_than_asked_and_a_reply_that_came_in_time_is_not_late(pipes):
    channel, _, reply_w = pipes
    os.write(reply_w, b"0123456789")
    time.sleep(0.2)
    assert channel.read(4, time.monotonic() - 1) == b"0123"  # the deadline passed while this thread was away
    assert channel.read(100, time.monotonic() + 5) == b"456789"


def test_threaded_pipes_follow_a_deadline_that_moves(pipes):
    channel, _, reply_w = pipes
    started = time.monotonic()
    threading.Timer(0.5, os.write, (reply_w, b"late but excused")).start()
    # The deadline (0.2 s) moves to 5 s once the grader knows it caused the delay (as RequestClock's does).
    assert channel.read(100, lambda: started + (0.2 if time.monotonic() - started < 0.1 else 5.0)) == b"late but excused"
    with pytest.raises(TimeoutError, match=wire.READ_TIMEOUT):
        channel.read(100, time.monotonic() + 0.2)


def test_threaded_pipes_write_times_out_when_nobody_reads(pipes):
    channel, request_r, _ = pipes
    with pytest.raises(TimeoutError, match=wire.WRITE_TIMEOUT):
        wire.write_message(channel, {"op": "x"}, {"a": np.zeros(1 << 20)}, deadline=time.monotonic() + 0.5)
    assert os.read(request_r, 4) == wire.MAGIC  # what fit in the pipe is the message's start


def test_threaded_pipes_report_a_worker_gone_as_a_broken_pipe():
    request_r, request_w = os.pipe()
    reply_r, reply_w = os.pipe()
    channel = transport.ThreadedPipes(request_w, reply_r)
    os.close(request_r)  # the worker's ends
    os.close(reply_w)
    with pytest.raises(BrokenPipeError):  # a crash, not a timeout (Sandbox.request)
        channel.write(memoryview(b"request"), time.monotonic() + 5)
    assert channel.read(8, time.monotonic() + 5) == b""  # the end of the reply stream
    channel.close()


def test_threaded_pipes_close_their_descriptors_once_their_thread_is_done():
    request_r, request_w = os.pipe()
    reply_r, reply_w = os.pipe()
    channel = transport.ThreadedPipes(request_w, reply_r)
    channel.close()
    channel._thread.join(timeout=10)
    assert _closed(request_w) and _closed(reply_r)
    for fd in (request_r, reply_w):
        os.close(fd)


def _closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


# -- the worker's side ---------------------------------------------------------------------------------------
WORKER_ON_WINDOWS = """
import os, sys, types
sys.path.insert(0, "grader/sandbox")
import worker
calls = []
sys.modules["msvcrt"] = types.SimpleNamespace(setmode=lambda fd, mode: calls.append((fd, mode)) or 0)
os.O_BINARY = 0x8000  # Windows' value; Linux has none
sys.platform = "win32"
in_fd, out_fd = worker.protocol_off_stdio()
print("student print", flush=True)
try:
    input()
except EOFError:
    print("input: end of file", flush=True)
os.write(out_fd, os.read(in_fd, 100))  # the protocol: an echo
sys.stderr.write(f"setmode: {sorted(calls) == sorted([(in_fd, 0x8000), (out_fd, 0x8000)])}\\n")
"""


@pytest.mark.slow  # starts a worker process
def test_the_worker_moves_the_protocol_off_stdin_and_stdout_before_student_code():
    result = subprocess.run([sys.executable, "-c", WORKER_ON_WINDOWS], cwd=ROOT, input=b"VGW1 request",
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"VGW1 request"  # only the protocol: the student's print went to stderr
    assert result.stderr.decode().splitlines() == ["student print", "input: end of file", "setmode: True"]
