"""The grader's side of the fork server: one pre-imported worker per set of limits, a fresh worker forked per submission.

Starting a worker costs a second or more (bubblewrap, then `import torch`); forking one from a fork server
that has imported everything costs milliseconds. The fork server runs in bubblewrap with exactly the
mounts, environment and limits of a worker, and each forked worker gets namespaces of its own
(fork_server.py says which), so submissions still see nothing of each other. Where those namespaces
cannot be made (nested user namespaces disabled), or for CUDA (which does not survive a fork), or with
`VITGRADE_FORK_SERVER=off`, every worker starts on its own as before.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from grader.sandbox.isolation import Isolation, Limits, apply_limits, fork_server_command
from grader.sandbox.processes import CappedReader, process_tree

SWITCH = "VITGRADE_FORK_SERVER"  # "off": start every worker on its own
READY_TIMEOUT = 120.0  # importing torch on a cold, busy machine can take tens of seconds
FORK_TIMEOUT = 30.0  # from the request to the forked worker's PID: milliseconds when all is well
PROTECTION = ("forked per submission from a pre-imported worker, in user, mount, PID, IPC, UTS and network "
              "namespaces of its own (fresh /tmp and /dev/shm, read-only /dev, no capabilities, no user namespaces)")


class ForkServerError(Exception):
    """The fork server cannot fork workers here (the reason is its own words); workers start on their own."""


class ForkedWorker:
    """A worker forked by the fork server, with the part of subprocess.Popen's interface the Sandbox uses.

    Its status pipe carries two 8-byte records from the waiter: the worker's PID in the fork server's PID
    namespace (-1 if the namespaces could not be made), then the worker's exit code as Popen reports it.
    The pipe closing without a record means the waiter was killed with the whole sandbox (SIGKILL).
    """

    def __init__(self, status_fd: int, server: ForkServer):
        self._status = status_fd
        self._lock = threading.Lock()  # the memory watch polls while the grader waits
        self._partial = b""
        self.returncode: int | None = None
        self.pid: int | None = None
        os.set_blocking(status_fd, False)
        ns_pid = self._next(time.monotonic() + FORK_TIMEOUT, exit_code=False)
        if ns_pid is None:
            raise ForkServerError("the fork server did not fork a worker in time")
        if ns_pid > 0:
            self.pid = server.host_pid(ns_pid)
            if self.pid is None:  # a worker the grader could not watch or kill must not run
                raise ForkServerError(f"the forked worker (PID {ns_pid} in the sandbox) is not in /proc")

    def _next(self, deadline: float | None, exit_code: bool = True) -> int | None:
        """The next record, or None if none came by `deadline`; the exit code is also kept in `returncode`."""
        while True:
            if self._status < 0:
                return self.returncode
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            readable = select.select([self._status], [], [], remaining)[0]
            with self._lock:
                if readable and self._status >= 0:
                    try:
                        chunk = os.read(self._status, 8 - len(self._partial))
                    except BlockingIOError:  # another thread took it
                        chunk = None
                    if chunk == b"":
                        if self.returncode is None:
                            self.returncode = -signal.SIGKILL
                        return -1
                    self._partial += chunk or b""
                    if len(self._partial) == 8:
                        (value,) = struct.unpack("<q", self._partial)
                        self._partial = b""
                        if exit_code and self.returncode is None:
                            self.returncode = value
                        return value
            if remaining == 0.0:
                return None

    def poll(self) -> int | None:
        if self.returncode is None:
            self._next(0.0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            if self._next(deadline) is None and self.returncode is None:
                raise subprocess.TimeoutExpired("forked worker", timeout or 0.0)
        return self.returncode

    def close(self) -> None:
        with self._lock:
            if self._status >= 0:
                os.close(self._status)
                self._status = -1
            if self.returncode is None:
                self.returncode = -signal.SIGKILL


class ForkServer:
    """One fork server process in bubblewrap; `fork` hands it a new worker's pipes."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self._control, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._lock = threading.Lock()
        self._ready = False
        out_r, out_w = os.pipe()
        try:
            command, env = fork_server_command(limits, child.fileno())
            self.proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=out_w, stderr=out_w,
                                         pass_fds=(child.fileno(),), start_new_session=True,
                                         preexec_fn=lambda: apply_limits(limits))
        except BaseException:
            os.close(out_r)
            self._control.close()
            raise
        finally:
            os.close(out_w)
            child.close()
        self._output = CappedReader(out_r, 4096)
        self._output.start()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def _wait_ready(self) -> None:
        if self._ready:
            return
        ready, _, _ = select.select([self._control], [], [], READY_TIMEOUT)
        message = self._control.recv(4096) if ready else b""
        try:
            status = json.loads(message) if message else {}
        except ValueError:
            status = {}
        if not status.get("ready"):
            self.close()
            tail = self._output.text().strip()[-1000:]
            raise ForkServerError("the fork server did not start" + (f": {tail}" if tail else ""))
        if not status.get("forks"):
            self.close()
            raise ForkServerError(status.get("why_not") or "the fork server cannot fork workers here")
        self._ready = True

    def fork(self, request: int, reply: int, out: int, err: int) -> ForkedWorker:
        """A new worker reading `request` and writing `reply`, `out`, `err` (the caller closes its copies)."""
        status_r, status_w = os.pipe()
        try:
            with self._lock:
                self._wait_ready()
                socket.send_fds(self._control, [b"fork"], [request, reply, out, err, status_w])
        except OSError as exc:
            os.close(status_r)
            raise ForkServerError(f"the fork server is gone ({exc})") from None
        finally:
            os.close(status_w)
        try:
            return ForkedWorker(status_r, self)
        except BaseException:
            os.close(status_r)
            raise

    def host_pid(self, ns_pid: int) -> int | None:
        """This machine's PID of the process the fork server's PID namespace calls `ns_pid` (from NSpid)."""
        for pid in process_tree(self.proc.pid):
            try:
                with open(f"/proc/{pid}/status") as fh:
                    line = next((line for line in fh if line.startswith("NSpid:")), "")
            except OSError:
                continue
            ids = line.split()[1:]
            if len(ids) >= 2 and int(ids[1]) == ns_pid:
                return pid
        return None

    def close(self) -> None:
        self._control.close()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


_SERVERS: dict[Limits, ForkServer] = {}
# Fork servers are started from this one lasting thread: bubblewrap's --die-with-parent kills the sandbox when
# the *thread* that started it ends, and a batch's or a test's worker threads end before the process does.
_STARTER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vitgrade-fork-server")
_UNAVAILABLE: dict[Limits, str] = {}
_LOCK = threading.Lock()


def fork_server(limits: Limits, isolation: Isolation) -> ForkServer | None:
    """The fork server for these limits (started now if none is running), or None where workers start on their own."""
    if isolation != "bwrap" or limits.cuda or os.environ.get(SWITCH, "").lower() in ("off", "0", "no"):
        return None
    with _LOCK:
        server = _SERVERS.get(limits)
        if server is not None and server.alive:
            return server
        if server is not None:
            server.close()
            del _SERVERS[limits]
        if limits in _UNAVAILABLE:
            return None
        try:
            _SERVERS[limits] = _STARTER.submit(ForkServer, limits).result()
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            _UNAVAILABLE[limits] = f"{type(exc).__name__}: {exc}"
            return None
        return _SERVERS[limits]


def give_up(limits: Limits, why: str) -> None:
    """Workers with these limits start on their own from now on (this process)."""
    with _LOCK:
        _UNAVAILABLE[limits] = why
        server = _SERVERS.pop(limits, None)
    if server is not None:
        server.close()


def unavailable() -> dict[Limits, str]:
    """Why forking was given up, per set of limits (for `vitgrade doctor`)."""
    with _LOCK:
        return dict(_UNAVAILABLE)


@atexit.register
def close_all() -> None:
    """Stop every fork server and forget why any was given up (the next worker decides afresh)."""
    with _LOCK:
        servers = list(_SERVERS.values())
        _SERVERS.clear()
        _UNAVAILABLE.clear()
    for server in servers:
        server.close()
