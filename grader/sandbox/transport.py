"""The worker's pipes where a child cannot inherit private pipes and select() cannot wait on one (Windows).

On Linux and macOS the worker gets two private pipes through `pass_fds` and the parent waits on them
with select() (client.Sandbox._spawn). Windows has neither: there the protocol runs on the worker's
stdin and stdout, which the worker moves to private descriptors before any student code runs
(worker.py, `protocol_off_stdio`), so that print() and input() can never reach it; the parent reads
and writes the pipes from a helper thread and waits for each call with the request's deadline.
Nothing here imports a Windows-only module: the tests run this path on Linux with Windows simulated.
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable

from grader.sandbox import wire

# No console window for the worker (a notebook's kernel has no console, and Windows would open one),
# and its own process group (a Ctrl+C meant for the grader does not interrupt the worker mid-reply).
# Both constants exist only on Windows: 0 elsewhere, where Popen refuses any other value.
CREATION_FLAGS = getattr(subprocess, "CREATE_NO_WINDOW", 0) | getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
# What the scrubbed environment (isolation.environment) must keep on Windows: the interpreter, DLL
# loading, sockets and the crypto API need SYSTEMROOT.
WINDOWS_KEPT = ("SYSTEMROOT", "WINDIR", "PATHEXT", "NUMBER_OF_PROCESSORS", "PROCESSOR_ARCHITECTURE")
# Once a deadline has passed, how long the helper thread still gets to hand over what is already in the pipe
# (wire._wait's select() looks once more the same way): a reply that came in time is not late.
LOOK_AGAIN = 0.25


def protocol_on_stdio() -> bool:
    """Whether the worker's protocol runs on its stdin/stdout: where subprocess has no `pass_fds` (Windows)."""
    return sys.platform == "win32"


def windows_environment(scratch: str) -> dict[str, str]:
    """What the scrubbed environment needs in addition on Windows ({} elsewhere): Windows' own folders, and
    the scratch directory for the temporary folder and home that POSIX's `/tmp` stands for."""
    if sys.platform != "win32":
        return {}
    env = {name: os.environ[name] for name in WINDOWS_KEPT if name in os.environ}
    system = env.get("SYSTEMROOT", r"C:\Windows")
    env["PATH"] = os.pathsep.join([os.path.join(system, "System32"), system])
    env.update(TEMP=scratch, TMP=scratch, TMPDIR=scratch, HOME=scratch, USERPROFILE=scratch)
    return env


class ThreadedPipes:
    """The parent's ends of the worker's request and reply pipes as a wire.Channel: a helper thread makes each
    blocking read or write, and the caller waits for it until the request's deadline (which may move, and is
    asked again when it has passed, as wire._wait does).

    A read asks for at most the bytes the framing needs next, so a reply whose header announces more than the
    request can need is refused before its arrays are read (wire.read_message), as on the select() path.
    The helper thread owns the two descriptors and closes them after its last call: a call still blocked
    when the worker is killed can never land on a descriptor number the system has given to a new pipe.
    """

    def __init__(self, request_fd: int, reply_fd: int):
        self.request_fd, self.reply_fd = request_fd, reply_fd
        self._calls: queue.SimpleQueue[tuple[Callable, int, object] | None] = queue.SimpleQueue()
        self._results: queue.SimpleQueue[tuple[object, Exception | None]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="vitgrade-pipes")
        self._thread.start()

    def _serve(self) -> None:
        try:
            while (call := self._calls.get()) is not None:
                function, fd, argument = call
                try:
                    self._results.put((function(fd, argument), None))
                except Exception as exc:  # a broken pipe (the worker died): raised in the caller
                    self._results.put((None, exc))
        finally:
            for fd in (self.request_fd, self.reply_fd):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _call(self, function: Callable, fd: int, argument: object, deadline: wire.Deadline, what: str):
        self._calls.put((function, fd, argument))
        while True:
            left = wire.seconds_left(deadline)
            try:
                result, error = self._results.get(timeout=None if left is None else max(left, LOOK_AGAIN))
            except queue.Empty:
                left = wire.seconds_left(deadline)
                if left is not None and left <= 0:
                    raise TimeoutError(what) from None
                continue  # the deadline moved
            if error is not None:
                raise error
            return result

    def read(self, size: int, deadline: wire.Deadline) -> bytes:
        return self._call(os.read, self.reply_fd, size, deadline, wire.READ_TIMEOUT)

    def write(self, data: memoryview, deadline: wire.Deadline) -> int:
        return self._call(_write, self.request_fd, bytes(data), deadline, wire.WRITE_TIMEOUT)

    def close(self) -> None:
        """Let the helper thread finish its call (the worker is dead by now, so a blocked one returns) and
        close the pipes."""
        self._calls.put(None)


def _write(fd: int, data: bytes) -> int:
    try:
        return os.write(fd, data)
    except OSError as exc:  # Windows reports a pipe whose reader is gone as EINVAL, not EPIPE
        raise BrokenPipeError(exc.errno, f"the worker's end of the pipe is closed ({exc.strerror})") from None


def start_on_stdio(command: list[str], env: dict[str, str], cwd: str | None
                   ) -> tuple[subprocess.Popen, ThreadedPipes, int]:
    """Start the worker with the request pipe as its stdin and the reply pipe as its stdout (`command` says
    IN_FD 0, OUT_FD 1); return the process, the channel to it, and the read end of its stderr, where its
    prints go. No preexec_fn (Windows has none): the platform's limits are the client's wall clock and output
    caps."""
    request_r, request_w = os.pipe()
    reply_r, reply_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        proc = subprocess.Popen(command, env=env, cwd=cwd, stdin=request_r, stdout=reply_w, stderr=err_w,
                                creationflags=CREATION_FLAGS)
    except BaseException:
        for fd in (request_w, reply_r, err_r):
            os.close(fd)
        raise
    finally:
        for fd in (request_r, reply_w, err_w):
            os.close(fd)
    return proc, ThreadedPipes(request_w, reply_r), err_r


def kill_tree(proc: subprocess.Popen) -> None:
    """Windows: end the worker and every process it started (`taskkill /T`; a venv's python.exe is itself a
    launcher whose child is the interpreter), then the worker directly should taskkill be missing."""
    taskkill = os.path.join(os.environ.get("SYSTEMROOT", r"C:\Windows"), "System32", "taskkill.exe")
    if proc.poll() is None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run([taskkill, "/F", "/T", "/PID", str(proc.pid)], capture_output=True, timeout=10,
                           creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
    with contextlib.suppress(OSError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
