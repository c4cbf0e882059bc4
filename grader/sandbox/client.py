"""The parent's side of the sandbox: start the worker, send requests, enforce every limit."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from grader.sandbox import wire
from grader.sandbox.isolation import Isolation, Limits, apply_limits, build_command, choose_level

START_TIMEOUT = 120.0  # importing torch on a cold, busy machine can take tens of seconds
MAX_REPLY_BYTES = 1 << 30


class SandboxError(Exception):
    """A request failed. `kind` says how: the student's exception, or the worker's death."""

    def __init__(self, kind: str, message: str, traceback: str = ""):
        super().__init__(message)
        self.kind = kind  # "exception" (worker alive) | "timeout" | "memory" | "crash" | "protocol"
        self.message = message
        self.traceback = traceback

    @property
    def worker_died(self) -> bool:
        return self.kind != "exception"


@dataclass
class Reply:
    header: dict
    arrays: dict[str, np.ndarray]


class _CappedReader(threading.Thread):
    """Drains a pipe, keeping the first `cap` bytes; the rest is counted and dropped."""

    def __init__(self, fd: int, cap: int):
        super().__init__(daemon=True)
        self.fd, self.cap = fd, cap
        self.data = bytearray()
        self.dropped = 0

    def run(self) -> None:
        with open(self.fd, "rb", buffering=0, closefd=True) as pipe:
            while chunk := pipe.read(1 << 16):
                room = self.cap - len(self.data)
                self.data += chunk[:room]
                self.dropped += max(0, len(chunk) - room)

    def text(self) -> str:
        text = self.data.decode("utf-8", errors="replace")
        return text + (f"\n[... {self.dropped} more bytes not kept]" if self.dropped else "")


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants, from /proc (Linux); just `pid` elsewhere."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as fh:
                    queue += [int(c) for c in fh.read().split()]
        except OSError:
            continue
    return found


def tree_rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as fh:
                total += int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
    return total


@dataclass
class SandboxStats:
    starts: int = 0
    start_seconds: list[float] = field(default_factory=list)


class Sandbox:
    """One sandboxed worker running one submission's code; restarted after a crash.

    Every request has a wall-clock deadline; on timeout, memory overrun, crash or protocol
    violation the whole process tree is killed and the next request starts a fresh worker
    (which loads the code again).
    """

    def __init__(self, code: str, *, limits: Limits | None = None, isolation: Isolation | None = None,
                 dtype: str = "float64", device: str = "cpu"):
        self.code = code
        self.limits = limits or Limits()
        self.isolation: Isolation = choose_level(isolation)
        self.dtype, self.device = dtype, device
        self.stats = SandboxStats()
        self.load_reply: dict = {}
        self._proc: subprocess.Popen | None = None
        self._stdout: _CappedReader | None = None
        self._stderr: _CappedReader | None = None
        self._output: list[str] = []
        self._scratch: str | None = None
        self._killed_for: str | None = None
        self._watch_stop = threading.Event()

    # -- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> dict:
        """Start the worker and load the code; return the load reply (raises SandboxError)."""
        self.close()
        started = time.monotonic()
        req_r, self._req_w = os.pipe()
        self._rep_r, rep_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        os.set_blocking(self._req_w, False)
        if self.isolation != "bwrap":
            self._scratch = tempfile.mkdtemp(prefix="vitgrade-work-")
        command, env = build_command(self.isolation, self.limits, req_r, rep_w, self._scratch)
        self._killed_for = None
        try:
            self._proc = subprocess.Popen(
                command, env=env, cwd=self._scratch, stdin=subprocess.DEVNULL, stdout=out_w, stderr=err_w,
                pass_fds=(req_r, rep_w), start_new_session=True, preexec_fn=lambda: apply_limits(self.limits),
            )
        finally:
            for fd in (req_r, rep_w, out_w, err_w):
                os.close(fd)
        self._stdout = _CappedReader(out_r, self.limits.output_bytes)
        self._stderr = _CappedReader(err_r, self.limits.output_bytes)
        self._stdout.start()
        self._stderr.start()
        self._watch_stop = threading.Event()
        threading.Thread(target=self._watch_memory, args=(self._proc, self._watch_stop), daemon=True).start()
        self.stats.starts += 1
        self._receive(time.monotonic() + START_TIMEOUT, "starting the worker")
        self.stats.start_seconds.append(time.monotonic() - started)
        self.request("setup", {"dtype": self.dtype, "device": self.device, "threads": self.limits.threads})
        self.load_reply = self.request("load", {"code": self.code}, timeout=60).header
        return self.load_reply

    def close(self) -> None:
        """Kill the worker's whole process tree and remove its scratch directory."""
        if self._proc is not None:
            self._kill()
            for fd in (self._req_w, self._rep_r):
                with contextlib.suppress(OSError):
                    os.close(fd)
            for reader in (self._stdout, self._stderr):
                if reader is not None:
                    reader.join(timeout=2)
            self._collect_output()
            self._proc = None
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def _kill(self) -> None:
        """SIGKILL the process group and every descendant (found before killing, so none is missed)."""
        proc = self._proc
        if proc is None:
            return
        self._watch_stop.set()
        victims = process_tree(proc.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)

    def _watch_memory(self, proc: subprocess.Popen, stop: threading.Event) -> None:
        """RSS watch over the process tree: the memory limit that also works with CUDA."""
        while not stop.wait(0.2):
            if proc.poll() is not None:
                return
            if tree_rss_bytes(process_tree(proc.pid)) > self.limits.memory_bytes:
                self._killed_for = "memory"
                self._kill()
                return

    def _collect_output(self) -> None:
        for label, reader in (("stdout", self._stdout), ("stderr", self._stderr)):
            if reader is not None and (reader.data or reader.dropped):
                self._output.append(f"[{label}]\n{reader.text()}")
        self._stdout = self._stderr = None

    @property
    def output(self) -> str:
        """What the submission printed, capped per worker start (stdout and stderr separately)."""
        parts = list(self._output)
        for label, reader in (("stdout", self._stdout), ("stderr", self._stderr)):
            if reader is not None and (reader.data or reader.dropped):
                parts.append(f"[{label}]\n{reader.text()}")
        return "\n".join(parts)

    # -- requests -------------------------------------------------------------------------
    def request(self, op: str, header: dict | None = None, arrays: dict[str, np.ndarray] | None = None,
                timeout: float = 60.0) -> Reply:
        """Send one request; restart the worker first if it is not running."""
        if not self.alive:
            self.start()
        deadline = time.monotonic() + timeout
        try:
            wire.write_message(self._req_w, {**(header or {}), "op": op}, arrays, deadline=deadline)
        except (BrokenPipeError, TimeoutError, OSError) as exc:
            self._fail("crash" if isinstance(exc, BrokenPipeError) else "timeout", f"{op}: could not send ({exc})")
        reply = self._receive(deadline, op, timeout)
        if not reply.header.get("ok", False):
            raise SandboxError("exception", f"{reply.header.get('error')}: {reply.header.get('message')}",
                               str(reply.header.get("traceback", "")))
        return reply

    def _receive(self, deadline: float, what: str, timeout: float | None = None) -> Reply:
        try:
            header, arrays = wire.read_message(self._rep_r, deadline, MAX_REPLY_BYTES)
        except TimeoutError:
            self._fail("timeout", f"{what}: no answer within {timeout or START_TIMEOUT:.0f} s (killed)")
        except EOFError:
            self._fail_dead(what)
        except wire.ProtocolError as exc:
            self._fail("protocol", f"{what}: the worker sent an invalid message ({exc}); killed")
        return Reply(header, arrays)

    def _fail(self, kind: str, message: str):
        self.close()
        raise SandboxError(kind, message)

    def _fail_dead(self, what: str):
        proc = self._proc
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        code = proc.returncode if proc is not None else None
        if self._killed_for == "memory":
            self._fail("memory", f"{what}: memory limit of {self.limits.memory_bytes / 1024**3:.1f} GiB exceeded (killed)")
        if code is not None and code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
            reason = "CPU time limit" if -code == signal.SIGXCPU else "file size limit" if -code == signal.SIGXFSZ else name
            self._fail("crash", f"{what}: the worker was killed ({reason})")
        self._fail("crash", f"{what}: the worker exited unexpectedly (exit code {code})")
