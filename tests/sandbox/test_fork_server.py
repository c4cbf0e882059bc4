"""Workers forked from the pre-imported fork server: each submission alone in namespaces of its own, and
every worker starts on its own where those namespaces cannot be made."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

from grader.sandbox import Limits, Sandbox, SandboxError, available_levels, fork_client, fork_server, isolation
from grader.sandbox.fork_client import ForkedWorker

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif("bwrap" not in available_levels(), reason="the fork server runs in bubblewrap")]


def observe(sandbox: Sandbox, code: str) -> str:
    """The repr of `result` after running `code` in the worker (carried back in an exception's message)."""
    with pytest.raises(SandboxError) as info:
        sandbox.request("load", {"code": f"{code}\nraise RuntimeError(repr(result))"})
    return info.value.message.removeprefix("RuntimeError: ")


def forked(code: str = "x = 1\n", **limits) -> Sandbox:
    sandbox = Sandbox(code, limits=Limits(**limits), isolation="bwrap")
    sandbox.start()
    assert isinstance(sandbox._proc, ForkedWorker), fork_client.unavailable()
    assert fork_client.PROTECTION in sandbox.protections
    return sandbox


def test_a_submission_finds_nothing_the_previous_one_left_behind():
    with forked() as first:
        code = "import os\nfor path in ('/tmp/left', '/dev/shm/left'):\n    open(path, 'w').write('secret')\n"
        listing = "result = ['left' in os.listdir('/tmp'), 'left' in os.listdir('/dev/shm')]"
        assert observe(first, code + listing) == "[True, True]"
    with forked() as second:  # (a venv under /tmp shows there too, bound read-only: see the test below)
        assert observe(second, "import os\n" + listing) == "[False, False]"
        with pytest.raises(SandboxError, match="Read-only file system"):
            second.request("load", {"code": "open('/dev/left', 'w')"})


ATTACK = """
import ctypes, os

def reach(pid):
    found = []
    for what in ('mem', 'environ', 'maps', 'cwd', 'root'):
        try:
            if what in ('cwd', 'root'):
                os.listdir(f'/proc/{pid}/{what}')
            else:  # opening mem is the access check (reading its first page of an address space fails anyway)
                with open(f'/proc/{pid}/{what}', 'rb') as fh:
                    what == 'mem' or fh.read(1)
            found.append(what)
        except OSError:
            pass
    try:
        fds = os.listdir(f'/proc/{pid}/fd')  # the numbers show (the directory is the same user's), not the files
    except OSError:
        fds = []
    for fd in fds:
        try:
            os.readlink(f'/proc/{pid}/fd/{fd}')
            found.append('fd')
            break
        except OSError:
            pass
    if pid != '1':  # PID 1 of the worker's own namespace is itself; any other number names nobody there
        try:
            os.kill(int(pid), 0)
            found.append('signal')
        except OSError:
            pass
    return found

me = os.readlink('/proc/self')
result = [(pid, reach(pid)) for pid in os.listdir('/proc') if pid.isdigit() and pid != me]
result = [found for found in result if found[1]]
if ctypes.CDLL(None, use_errno=True).unshare(0x10000000) == 0:
    result.append('a user namespace')
result += [os.getpid(), reach(me)]  # the probe itself works: the worker reaches its own process
"""


def test_a_submission_cannot_open_signal_or_trace_another_running_one():
    with forked("secret = 'the other student'\n") as victim, forked() as attacker:
        assert observe(attacker, ATTACK) == "[1, ['mem', 'environ', 'maps', 'cwd', 'root', 'fd']]"
        assert victim.alive and victim.request("setup", {"dtype": "float64"}).header["ok"]


def test_a_timed_out_worker_is_killed_and_the_next_one_forks():
    with forked() as sandbox:
        pid = sandbox._proc.pid
        with pytest.raises(SandboxError) as info:
            sandbox.request("load", {"code": "while True:\n    pass\n"}, timeout=1)
        assert info.value.kind == "timeout"
        assert not os.path.exists(f"/proc/{pid}")
    with forked() as again:
        assert again.load_reply["classes"] == []


def test_a_fork_server_that_died_is_replaced():
    with forked() as sandbox:
        server = fork_client.fork_server(sandbox.limits, "bwrap")
    os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait()
    with forked() as again:
        assert again.load_reply["classes"] == []
    assert fork_client.fork_server(again.limits, "bwrap") is not server


def test_without_nested_user_namespaces_every_worker_starts_on_its_own(monkeypatch):
    # bubblewrap's --disable-userns is what a kernel or container without nested user namespaces looks like.
    command = fork_client.fork_server_command

    def without_userns(limits, control_fd):
        args, env = command(limits, control_fd)
        return [args[0], "--unshare-user", "--disable-userns", *args[1:]], env

    monkeypatch.setattr(fork_client, "fork_server_command", without_userns)
    limits = Limits(tmp_bytes=128 * 1024**2)  # limits of its own: no fork server started before
    try:
        with Sandbox("x = 1\n", limits=limits, isolation="bwrap") as sandbox:
            assert sandbox.start()["classes"] == []
            assert not isinstance(sandbox._proc, ForkedWorker)
            assert fork_client.PROTECTION not in sandbox.protections
        assert "No space left on device" in fork_client.unavailable()[limits]
    finally:
        fork_client.close_all()


def test_the_fork_server_outlives_the_thread_that_first_needed_it():
    # bubblewrap dies with the thread that started it; a batch's worker threads end before the batch does.
    fork_client.close_all()
    thread = threading.Thread(target=lambda: forked().close())
    thread.start()
    thread.join()
    server = fork_client.fork_server(Limits(), "bwrap")
    with pytest.raises(subprocess.TimeoutExpired):
        server.proc.wait(timeout=1)
    with forked() as sandbox:
        assert fork_client.fork_server(sandbox.limits, "bwrap") is server


def test_what_bubblewrap_bound_under_tmp_is_still_there_read_only(monkeypatch):
    # A venv under /tmp has its packages bound under /tmp: each worker's fresh /tmp must keep them (a module
    # imported late, like torch._dynamo on the first training step, is read from there).
    site = Path(tempfile.mkdtemp(prefix="vitgrade-site-", dir="/tmp"))
    (site / "late_import").mkdir()
    (site / "late_import" / "__init__.py").write_text("VALUE = 42\n")
    layout = isolation.interpreter_layout()
    monkeypatch.setattr(isolation, "interpreter_layout", lambda: dataclasses.replace(
        layout, site_entries=(*layout.site_entries, str(site / "late_import")), site_dirs=(*layout.site_dirs, str(site))))
    try:
        with forked(tmp_bytes=96 * 1024**2) as sandbox:  # limits of its own: a fork server with this layout
            assert observe(sandbox, "import late_import\nresult = late_import.VALUE") == "42"
            assert observe(sandbox, f"import os\nresult = {site.name!r} in os.listdir('/tmp')") == "True"
            with pytest.raises(SandboxError, match="Read-only file system"):
                sandbox.request("load", {"code": f"open('{site}/late_import/planted.py', 'w')"})
    finally:
        fork_client.close_all()
        shutil.rmtree(site)


def test_a_waiter_that_could_not_make_the_namespaces_reports_no_worker_and_its_exit_code():
    # What run_waiter writes when enter_namespaces fails: PID -1, then SETUP_FAILED (a grader fault at start).
    read_end, write_end = os.pipe()
    os.write(write_end, struct.pack("<qq", -1, fork_server.SETUP_FAILED))
    os.close(write_end)
    worker = ForkedWorker(read_end, server=None)
    assert worker.pid is None
    assert worker.wait(timeout=5) == fork_server.SETUP_FAILED
    worker.close()
