"""The parent's side of the sandbox: start the worker, send requests, enforce every limit."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from grader.sandbox import transport, wire
from grader.sandbox.fork_client import PROTECTION as FORK_PROTECTION
from grader.sandbox.fork_client import ForkedWorker, ForkServerError, fork_server, give_up
from grader.sandbox.isolation import Isolation, Limits, apply_limits, build_command, choose_level, protections
from grader.sandbox.processes import CappedReader, process_tree

START_TIMEOUT = 120.0  # importing torch on a cold, busy machine can take tens of seconds
# The most a reply's arrays may hold: a fixed allowance plus a multiple of what the request sent (a
# forward pass returns the output and captured activations of its input); a request that expects
# more (training) says so. Larger replies are refused before they are read.
REPLY_ALLOWANCE = 64 * 1024**2
REPLY_PER_INPUT_BYTE = 64
NO_ARRAYS_REPLY = 1024**2  # setup, load, build, set_params, randomize return no arrays
# Waiting the grader causes (its own process stalled, or the worker runnable but not given a CPU) is
# not charged to the submission, up to this multiple of the request's own time limit.
MAX_EXCUSED_FACTOR = 2.0
STDERR_TAIL = 2000


class SandboxError(Exception):
    """A request failed. `kind` says how: the student's exception, or the worker's death."""

    def __init__(self, kind: str, message: str, traceback: str = "", fault: str = "submission"):
        super().__init__(message)
        self.kind = kind  # "exception" (worker alive) | "timeout" | "memory" | "crash" | "protocol" | "setup"
        self.message = message
        self.traceback = traceback
        # "grader": the sandbox failed before the submission's code was loaded (its setup, the worker's
        # files, torch's import): nothing the student did, and no verdict on their code.
        self.fault = fault

    @property
    def worker_died(self) -> bool:
        return self.kind != "exception"


@dataclass
class Reply:
    header: dict
    arrays: dict[str, np.ndarray]


class StallMonitor(threading.Thread):
    """Measures how long this (the grader's) process was not running Python: a heartbeat that wakes
    every `tick` seconds, and counts any lateness beyond `slack` as a stall (another thread holding the
    GIL, or the whole process starved of CPU). Deadlines are extended by the stalls they overlap."""

    def __init__(self, tick: float = 0.05, slack: float = 0.25):
        super().__init__(daemon=True, name="vitgrade-stall-monitor")
        self.tick, self.slack = tick, slack
        self.stalled = 0.0
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def run(self) -> None:
        while True:
            time.sleep(self.tick)
            now = time.monotonic()
            with self._lock:
                late = now - self._last - self.tick
                if late > self.slack:
                    self.stalled += late
                self._last = now

    def total(self) -> float:
        """Stalled seconds so far, including a stall still going on (the heartbeat has not run yet)."""
        with self._lock:
            pending = time.monotonic() - self._last - self.tick
            return self.stalled + (pending if pending > self.slack else 0.0)


_MONITOR: StallMonitor | None = None
_MONITOR_LOCK = threading.Lock()


def stall_monitor() -> StallMonitor:
    global _MONITOR
    with _MONITOR_LOCK:
        if _MONITOR is None:
            _MONITOR = StallMonitor()
            _MONITOR.start()
        return _MONITOR


def run_queue_wait(pids: list[int]) -> float:
    """Seconds the busiest of these processes' main threads spent runnable but waiting for a CPU
    (/proc/PID/schedstat; 0 where the platform has none): the machine's load, not the code's work."""
    waits = [0.0]
    for pid in pids:
        try:
            with open(f"/proc/{pid}/schedstat") as fh:
                waits.append(int(fh.read().split()[1]) / 1e9)
        except (OSError, ValueError, IndexError):
            continue
    return max(waits)


class RequestClock:
    """A request's deadline in the submission's time: wall time minus the waiting the grader caused
    (its own stalls, the worker's wait for a CPU), the excuse capped at MAX_EXCUSED_FACTOR x timeout."""

    def __init__(self, timeout: float, pid: int | None):
        self.timeout, self.pid = timeout, pid
        self.started = time.monotonic()
        self.monitor = stall_monitor()
        self._stall0 = self.monitor.total()
        self._wait0 = self._worker_wait()
        self._cached = (0.0, self.started + timeout)  # (when computed, deadline): /proc is read at most 10x/s

    def _worker_wait(self) -> float:
        return run_queue_wait(process_tree(self.pid)) if self.pid is not None else 0.0

    def excused(self) -> float:
        stalled = self.monitor.total() - self._stall0
        waited = max(0.0, self._worker_wait() - self._wait0)
        return min(self.timeout * MAX_EXCUSED_FACTOR, stalled + waited)

    def deadline(self) -> float:
        now = time.monotonic()
        if now - self._cached[0] > 0.1:
            self._cached = (now, self.started + self.timeout + self.excused())
        return self._cached[1]


def reply_limit(op: str, arrays: dict[str, np.ndarray] | None) -> int:
    """The largest reply (array bytes) a request may get, from what it sent; see REPLY_ALLOWANCE."""
    if op in ("setup", "load", "build", "set_params", "randomize"):
        return NO_ARRAYS_REPLY
    sent = sum(int(a.nbytes) for a in (arrays or {}).values())
    return REPLY_ALLOWANCE + REPLY_PER_INPUT_BYTE * sent


def tree_rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as fh:
                total += int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError, AttributeError):  # no /proc (macOS): no RSS watch
            continue
    return total


@dataclass
class SandboxStats:
    starts: int = 0
    start_seconds: list[float] = field(default_factory=list)
    excused_seconds: float = 0.0  # waiting the grader caused, not charged to the submission


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
        self.protections = protections(self.isolation)
        self.load_reply: dict = {}
        self._proc: subprocess.Popen | None = None
        self._channel: transport.ThreadedPipes | None = None  # the pipes where select() cannot wait (Windows)
        self._stdout: CappedReader | None = None
        self._stderr: CappedReader | None = None
        self._output: list[str] = []
        self._scratch: str | None = None
        self._killed_for: str | None = None
        self._watch_stop = threading.Event()
        self._launched = False  # a worker launch() started that no start() has taken yet
        self._spawned_at = 0.0

    # -- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def forked(self) -> bool:
        """Whether the running worker was forked from the fork server (else it started on its own)."""
        return isinstance(self._proc, ForkedWorker)

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def launch(self) -> None:
        """Start the worker process and return at once: it imports torch while the caller does its own work
        (imports, intake). The next start() waits for it instead of starting another."""
        self.close()
        self._spawn(fork=False)  # one submission (vitgrade check): nothing to share, a worker of its own
        self._launched = True

    def start(self) -> dict:
        """Start the worker (or take the one launch() started) and load the code; return the load reply
        (raises SandboxError)."""
        if not (self._launched and self.alive):
            self.close()
            self._spawn()
        self._launched = False
        started = self._spawned_at
        try:  # nothing of the submission has run yet: a failure here is the grader's
            self._receive(RequestClock(START_TIMEOUT, self._proc.pid), "starting the worker")
            self._require_memory_to_spare()
            self.request("setup", {"dtype": self.dtype, "device": self.device, "threads": self.limits.threads})
        except SandboxError as error:
            raise SandboxError(error.kind, error.message + self._stderr_tail(), error.traceback,
                               fault="grader") from None
        self.stats.start_seconds.append(time.monotonic() - started)
        self.load_reply = self.request("load", {"code": self.code}, timeout=60).header
        return self.load_reply

    def _spawn(self, fork: bool = True) -> None:
        """Start the worker process (forked from the fork server if `fork` and there is one), its output readers
        and its memory watch (raises SandboxError)."""
        if transport.protocol_on_stdio():  # Windows: no pass_fds, and select() cannot wait on a pipe
            self._spawn_on_stdio()
            return
        self._spawned_at = time.monotonic()
        req_r, self._req_w = os.pipe()
        self._rep_r, rep_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        wire.widen(req_r)
        wire.widen(rep_w)
        os.set_blocking(self._req_w, False)
        if self.isolation != "bwrap":
            self._scratch = tempfile.mkdtemp(prefix="vitgrade-work-")
        self._killed_for = None
        try:
            self._proc = self._forked(req_r, rep_w, out_w, err_w) if fork else None
            if self._proc is None:
                command, env = build_command(self.isolation, self.limits, req_r, rep_w, self._scratch)
                self._proc = subprocess.Popen(
                    command, env=env, cwd=self._scratch, stdin=subprocess.DEVNULL, stdout=out_w, stderr=err_w,
                    pass_fds=(req_r, rep_w), start_new_session=True, preexec_fn=lambda: apply_limits(self.limits),
                )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:  # a worker file or bwrap is missing
            for fd in (out_r, err_r, self._req_w, self._rep_r):
                os.close(fd)
            raise SandboxError("setup", f"starting the worker: the sandbox could not be started "
                                        f"({type(exc).__name__}: {exc})", fault="grader") from None
        finally:
            for fd in (req_r, rep_w, out_w, err_w):
                os.close(fd)
        self._stdout = CappedReader(out_r, self.limits.output_bytes)
        self._stderr = CappedReader(err_r, self.limits.output_bytes)
        self._stdout.start()
        self._stderr.start()
        self._watch_stop = threading.Event()
        threading.Thread(target=self._watch_memory, args=(self._proc, self._watch_stop), daemon=True).start()
        self.stats.starts += 1

    def _require_memory_to_spare(self) -> None:
        """A worker that holds more than the memory limit before any submission code runs (its imports alone) would
        be killed at the first check, blamed on the student: the limit is the grader's problem."""
        held = tree_rss_bytes(process_tree(self._proc.pid)) if self._proc.pid is not None else 0
        if held > self.limits.memory_bytes:
            self.close()
            raise SandboxError("memory", f"starting the worker: its imports alone hold {held / 1024**2:,.0f} MiB, "
                                         f"more than the memory limit of {self.limits.memory_bytes / 1024**2:,.0f} MiB")

    def _forked(self, request: int, reply: int, out: int, err: int) -> ForkedWorker | None:
        """A worker forked from the fork server for these limits, or None where workers start on their own."""
        server = fork_server(self.limits, self.isolation)
        if server is None:
            return None
        try:
            worker = server.fork(request, reply, out, err)
        except ForkServerError as exc:
            give_up(self.limits, str(exc))
            return None
        if FORK_PROTECTION not in self.protections:
            self.protections = [*self.protections, FORK_PROTECTION]
        return worker

    def _spawn_on_stdio(self) -> None:
        """_spawn where the worker cannot inherit private pipes (Windows, grader/sandbox/transport.py): the
        protocol on its stdin/stdout, its prints on stderr; no rlimits and no memory watch (no /proc)."""
        self._spawned_at = time.monotonic()
        self._scratch = tempfile.mkdtemp(prefix="vitgrade-work-")  # bubblewrap, which makes its own, is Linux only
        self._killed_for = None
        try:
            command, env = build_command(self.isolation, self.limits, 0, 1, self._scratch)
            self._proc, self._channel, err_r = transport.start_on_stdio(
                command, {**env, **transport.windows_environment(self._scratch)}, self._scratch)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:  # a worker file is missing
            raise SandboxError("setup", f"starting the worker: the sandbox could not be started "
                                        f"({type(exc).__name__}: {exc})", fault="grader") from None
        self._stderr = CappedReader(err_r, self.limits.output_bytes)
        self._stderr.start()
        self.stats.starts += 1

    def _stderr_tail(self) -> str:
        """What the worker (or bubblewrap) wrote to stderr before it died, for the error message."""
        self.close()
        text = "\n".join(part.split("\n", 1)[1] for part in self._output if part.startswith("[stderr]"))
        return f"; its stderr ends: {text.strip()[-STDERR_TAIL:]}" if text.strip() else ""

    def close(self) -> None:
        """Kill the worker's whole process tree and remove its scratch directory."""
        self._launched = False
        if self._proc is not None:
            self._kill()
            if self._channel is not None:  # it closes its pipes itself, once its thread is done with them
                self._channel.close()
                self._channel = None
            else:
                for fd in (self._req_w, self._rep_r):
                    with contextlib.suppress(OSError):
                        os.close(fd)
            for reader in (self._stdout, self._stderr):
                if reader is not None:
                    reader.join(timeout=2)
            self._collect_output()
            if isinstance(self._proc, ForkedWorker):
                self._proc.close()
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
        if sys.platform == "win32":  # neither process groups nor SIGKILL there
            transport.kill_tree(proc)
            return
        if proc.pid is None:  # a forked worker whose namespaces failed: nothing of it runs
            return
        victims = process_tree(proc.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # the worker's own session: every process it started
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)

    def _watch_memory(self, proc: subprocess.Popen | ForkedWorker, stop: threading.Event) -> None:
        """RSS watch over the process tree: the memory limit that also works with CUDA."""
        while not stop.wait(0.2):
            if proc.poll() is not None or proc.pid is None:
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
                timeout: float = 60.0, max_reply_bytes: int | None = None) -> Reply:
        """Send one request; restart the worker first if it is not running.

        `timeout` is in the submission's time (see RequestClock); a reply whose arrays exceed
        `max_reply_bytes` (default: reply_limit) is refused before it is read.
        """
        if not self.alive or self._launched:
            self.start()
        clock = RequestClock(timeout, self._proc.pid if self._proc else None)
        try:
            wire.write_message(self._channel or self._req_w, {**(header or {}), "op": op}, arrays,
                               deadline=clock.deadline)
        except (BrokenPipeError, TimeoutError, OSError) as exc:
            self._fail("crash" if isinstance(exc, BrokenPipeError) else "timeout", f"{op}: could not send ({exc})")
        limit = max_reply_bytes if max_reply_bytes is not None else reply_limit(op, arrays)
        reply = self._receive(clock, op, limit)
        if not reply.header.get("ok", False):
            raise SandboxError("exception", f"{reply.header.get('error')}: {reply.header.get('message')}",
                               str(reply.header.get("traceback", "")))
        return reply

    def _receive(self, clock: RequestClock, what: str, max_bytes: int = NO_ARRAYS_REPLY) -> Reply:
        try:
            header, arrays = wire.read_message(self._channel or self._rep_r, clock.deadline, max_bytes)
        except TimeoutError:
            excused = clock.excused()
            self.stats.excused_seconds += excused
            note = f"; {excused:.0f} s of waiting for the busy grading machine were not counted" if excused >= 1 else ""
            self._fail("timeout", f"{what}: no answer within {clock.timeout:.0f} s (killed){note}")
        except EOFError:
            self._fail_dead(what)
        except wire.ProtocolError as exc:
            self._fail("protocol", f"{what}: the worker sent an invalid message ({exc}); killed")
        self.stats.excused_seconds += clock.excused()
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
            self._fail("memory", f"{what}: memory limit of {self.limits.memory_bytes / 1024**2:,.0f} MiB exceeded (killed)")
        if code is not None and code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
            reason = "CPU time limit" if -code == signal.SIGXCPU else "file size limit" if -code == signal.SIGXFSZ else name
            self._fail("crash", f"{what}: the worker was killed ({reason})")
        self._fail("crash", f"{what}: the worker exited unexpectedly (exit code {code})")
